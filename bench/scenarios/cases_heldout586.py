"""Held-out set 586 (``h586_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sheepdog gather-pen GELU regressor fed the pen-gate distance in raw millimetres under
fp16 autocast (amp_overflow, AdamW); curling hack-delivery classifier fed one shard of raw
strain-gauge counts (data_outlier, Adamax); kiteloop lift tanh regressor with its SGD lr typed
3.0 for 0.03 (sharpness_above_limit, plain SGD); stilt-fisher pole-sway ReLU Elman RNN whose
recurrent weights get a copy-pasted orthogonal gain of 1.4 (exploding_gradients, SGD Nesterov); harp
string-regulating SiLU regressor whose fc2 group lr is typed 1e-9 (update_ratio_out_of_range,
RMSprop, param groups); oyster spat-collector BCE net whose resumed accumulation step sums the
loss over the batch (gradient_spike, SGD momentum, accumulation); mudpot bubble-burst Gaussian
NLL net whose in-model log of the gas flux has no clamp (nonfinite, Adam); morris sidestep hanky
classifier whose temperature is read in seconds from a milliseconds key (softmax_collapse,
Adagrad); saltmarsh creek-levee regressor whose hand-written L2 penalty has its sign flipped
(loss_divergence, ASGD); tightrope pole-tip cosine classifier whose learnable logit scale has
lost its clamp (output_logit_divergence, NAdam, param groups).
Controls: cross-stitch floss-fade classifier trained with sharpness-aware minimisation (rho
0.05, two gradient evaluations per step, alarming-looking, SGD momentum); sea-foam bubble
radius/lifetime RealNVP flow (affine coupling, exact log-likelihood on generated data, RAdam,
clipping); yodel chest/head-register conv1d classifier (Adam, OneCycleLR, label smoothing,
gradient accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


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
    clip=None,
    sched=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: pen-gate distance in raw millimetres under fp16 autocast --------------------

AMP_ONSET = 70


@scenario(
    family="sheepdog_gather_pen_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Sheepdog gather-and-pen regressor (GELU MLP on flock size, dog-to-flock distance, "
    "pen-gate distance, wind speed, slope and handler whistle count, predicting the penning "
    "time; MSE, AdamW, fp16 autocast + GradScaler). From step 70 a new field logger writes "
    "the pen-gate distance in raw millimetres (about 1.5e5) instead of the standardised "
    "column: autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is "
    "non-finite (the same batch is finite in float32) and the loss is non-finite at step 70.",
)
def h586_sheepdog_pen_millimetres(ctx):
    gen = seeded(5861)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58610)
    losses, fc1_bad, fc1_dtypes, bad_x, bad_y = [], [], [], None, None
    for step in range(120):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 2] = 1.5e5 + 4.0e3 * x[:, 2]
            bad_x, bad_y = x, y
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_dtypes.append(seen["fc1"][0])
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    with torch.no_grad():
        fp32_loss = float(F.mse_loss(model(bad_x), bad_y)) if bad_x is not None else math.nan
    ctx.check("fc1 ran in fp16", all(d == torch.float16 for d in fc1_dtypes))
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[-1])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. data outlier: one shard of raw strain-gauge counts ----------------------------------------

OUTLIER_STEP = 110


@scenario(
    family="curling_hack_delivery_glitch_shard_classifier",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Curling hack-delivery classifier (ReLU MLP on hack push force, slide speed, handle "
    "rotation, release distance, broom lean and ice temperature, 4 delivery faults; "
    "cross-entropy, Adamax, clipping at 1.0). One shard written by an unconverted logger holds "
    "the push force as raw strain-gauge counts (x300): the batch at step 110 has a loss over "
    "20x and a gradient over 10x the usual; clipping bounds the update and the run recovers.",
)
def h586_curling_raw_strain_shard(ctx):
    gen = seeded(5862)
    model = _Net(6, hidden=48, out=4)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 0] = 300.0 * x[:, 0]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 4, 58620),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    pre_l = _median(losses[OUTLIER_STEP - 20 : OUTLIER_STEP])
    pre_g = _median(norms[OUTLIER_STEP - 20 : OUTLIER_STEP])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained before the shard", _fell(losses[:OUTLIER_STEP]))
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * pre_l)
    ctx.check("gradient over 10x at the shard", norms[OUTLIER_STEP] > 10 * pre_g)
    ctx.check("recovers: last 20 steps under 2x pre-shard", _mean(losses[-20:]) < 2 * pre_l)


# -- 3. sharpness above limit: SGD lr typed 3.0 for 0.03 -----------------------------------------


@scenario(
    family="kite_surf_kiteloop_lift_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Kitesurf kiteloop lift regressor (tanh MLP on wind speed, gust factor, kite size, "
    "line length, bar pull and rider weight, predicting the hang time; MSE, plain SGD). The "
    "lr is typed 3.0 for 0.03: lr x (top Hessian eigenvalue) is past 2 from the first step "
    "and the loss blows up.",
)
def h586_kiteloop_lr_typo(ctx):
    gen = seeded(5863)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58630)
    probe = next(batches)
    eig0 = _top_eig(model, F.mse_loss, *probe)
    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss)
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("the intended lr 0.03 is below the limit", 0.03 * eig0 < 2.0)
    ctx.check("loss blows up (over 20x its best)", bool(blown))


# -- 4. exploding gradients: recurrent weights initialised with a copy-pasted gain --------------


class _SwayRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.4):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="relu")
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        nn.init.zeros_(self.rnn.bias_hh_l0)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


@scenario(
    family="stilt_fisher_pole_sway_relu_elman_rnn",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Sri Lankan stilt-fisher pole-sway forecaster (ReLU Elman RNN over 40 steps of swell "
    "height, wave period, wind and pole lean, predicting the next sway amplitude; MSE, SGD "
    "Nesterov). The recurrent weights get orthogonal_ with gain 1.4 copied from a feed-forward "
    "ReLU init instead of 1.0: the backward signal grows through time (the gradient at the "
    "first time step over 20x the last's), the gradient norm climbs and the loss blows up.",
)
def h586_stilt_fisher_recurrent_gain(ctx):
    gen = seeded(5864)
    model = _SwayRNN(gain=1.4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58640)
    w = torch.randn(4, generator=g)
    losses, norms, ratios = [], [], []
    for _step in range(100):
        x = torch.randn(32, 40, 4, generator=gen).cumsum(1) / 6.0
        y = torch.tanh(x[:, -3:] @ w).mean(1) + 0.05 * torch.randn(32, generator=gen)
        x = x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        gx = x.grad.norm(dim=(0, 2))
        ratios.append(float(gx[0] / gx[-1].clamp_min(1e-12)))
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * losses[0]]
    ctx.check("input gradient at t=0 over 20x that at the last step", ratios[0] > 20)
    ctx.check("gradient norm over 100x its start", max(norms) > 100 * norms[0])
    ctx.check("loss blows up (over 20x its start)", bool(blown))


# -- 5. update ratio out of range: fc2 group lr typed 1e-9 ---------------------------------------


@scenario(
    family="harp_string_regulating_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Harp string-regulating regressor (SiLU MLP on string gauge, pitch, disc position, "
    "bridge pin height, humidity and soundboard age, predicting the regulating turn; MSE, "
    "RMSprop with two param groups). The fc2 group's lr is typed 1e-9 for 1e-3: fc2's "
    "weights never move (update/weight ratio about 1e-9) while the other layers train.",
)
def h586_harp_fc2_group_typo(ctx):
    gen = seeded(5865)
    model = _Net(6, hidden=48, act=nn.SiLU)
    fc2 = list(model.fc2.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc2.")]
    opt = torch.optim.RMSprop([{"params": rest, "lr": 1e-3}, {"params": fc2, "lr": 1e-9}])
    w_fc2, w_fc1 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58650), 200, F.mse_loss)
    d_fc2 = float((_flat(model.fc2) - w_fc2).norm() / w_fc2.norm())
    d_fc1 = float((_flat(model.fc1) - w_fc1).norm() / w_fc1.norm())
    ctx.check("fc2 relative change under 1e-5", d_fc2 < 1e-5)
    ctx.check("fc1 relative change over 1e-2", d_fc1 > 1e-2)
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: resumed accumulation step sums over the batch -----------------------------

SPIKE_STEP = 130


@scenario(
    family="oyster_spat_collector_sum_accum_bce_net",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Oyster spat-collector settlement BCE net (GELU MLP on water temperature, salinity, "
    "larval count, tide phase, shell-string depth and chlorophyll, predicting whether spat "
    "sets; BCE with logits, SGD momentum, 2 micro-batches accumulated, clipping at 5). The "
    "step resumed from a checkpoint at 130 builds its loss with reduction='sum' instead of "
    "'mean': the gradient is over 20x the usual for that one step while the logged (mean) "
    "loss is ordinary.",
)
def h586_oyster_resume_sum_reduction(ctx):
    gen = seeded(5866)
    model = _Net(6, hidden=48, out=1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(58660)
    w = torch.randn(6, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        logged = 0.0
        for _micro in range(2):
            x = torch.randn(32, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()
            out = model(x)
            red = "sum" if step == SPIKE_STEP else "mean"
            loss = F.binary_cross_entropy_with_logits(out, y, reduction=red) / 2
            loss.backward()
            logged += float(F.binary_cross_entropy_with_logits(out.detach(), y)) / 2
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    pre_g = _median(norms[SPIKE_STEP - 20 : SPIKE_STEP])
    pre_l = _median(losses[SPIKE_STEP - 20 : SPIKE_STEP])
    ctx.check("trained before the bug", _fell(losses[:SPIKE_STEP]))
    ctx.check("gradient over 20x at the spike", norms[SPIKE_STEP] > 20 * pre_g)
    ctx.check("gradient back under 3x after", _median(norms[SPIKE_STEP + 5 :]) < 3 * pre_g)
    ctx.check("logged loss ordinary at the spike", losses[SPIKE_STEP] < 2 * pre_l)
    ctx.check("finite throughout", _finite(losses))


# -- 7. nonfinite: log of the gas flux without a clamp --------------------------------------------

NAN_STEP = 90


class _LogFeature(nn.Module):
    """log of the raw gas-flux column (column 0), others passed through; the clamp is missing."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _MudpotNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logf = _LogFeature()
        self.fc1 = nn.Linear(5, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.logf(x)))))
        return self.head(h)


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1]
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


@scenario(
    family="mudpot_bubble_burst_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logf",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Mudpot bubble-burst Gaussian NLL net (SiLU MLP on gas flux, mud temperature, "
    "water content, pH and rainfall, predicting the mean and log-variance of the burst "
    "interval; Adam). The model takes log of the raw gas flux in its first module with no "
    "clamp; at step 90 a flux sensor with a dead cell reads exactly 0 for some rows: log 0 = "
    "-inf, and the loss is NaN at step 90.",
)
def h586_mudpot_log_zero_flux(ctx):
    gen = seeded(5867)
    model = _MudpotNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}
    model.logf.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    g = torch.Generator().manual_seed(58670)
    w = torch.randn(5, generator=g)

    def batches():
        while True:
            z = torch.randn(64, 5, generator=gen)
            flux = torch.exp(0.5 * z[:, 0])
            x = torch.cat([flux[:, None], z[:, 1:]], 1)
            y = torch.tanh(z @ w / 2) + 0.2 * (1 + z[:, 1].abs()) * torch.randn(64, generator=gen)
            yield x, y

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[:6, 0] = 0.0
        return x, y

    bad = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        150,
        _gauss_nll,
        alter=alter,
        after=lambda s, o, y: bad.append(seen["bad"]),
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained before the dead cell", _fell(losses[:NAN_STEP], ratio=0.9))
    ctx.check("log output finite before the onset", not any(bad[:NAN_STEP]))
    ctx.check("log output non-finite at the onset", len(bad) > NAN_STEP and bad[NAN_STEP])
    ctx.check("loss first non-finite at the onset", first_bad == NAN_STEP)


# -- 8. softmax collapse: temperature read in seconds from a milliseconds key --------------------


class _TempNet(_Net):
    def __init__(self, d_in, out, temperature):
        super().__init__(d_in, hidden=48, out=out)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="morris_sidestep_hanky_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Morris sidestep hanky classifier (ReLU MLP on wrist accelerometer features of a "
    "morris dancer, 6 hanky figures; cross-entropy, Adagrad). The softmax temperature is set "
    "from the config key 'temp_ms' (1.0 ms) read as seconds, 1e-3: the logits are divided by "
    "1e-3 and over 40% of rows' target probability rounds to exactly 1.0 in float32.",
)
def h586_morris_temperature_ms(ctx):
    gen = seeded(5868)
    model = _TempNet(8, 6, temperature=1.0e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    fracs = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 6, 58680),
        150,
        F.cross_entropy,
        classifier=True,
        after=lambda s, o, y: fracs.append(collapsed_fraction(o, y)),
    )
    ctx.check("over 40% of rows collapsed late", _mean(fracs[-20:]) > 0.4)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("collapse grew from the start", _mean(fracs[-20:]) > _mean(fracs[:5]))


# -- 9. loss divergence: hand-written L2 penalty with its sign flipped ----------------------------


@scenario(
    family="saltmarsh_creek_levee_decay_sign_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Saltmarsh creek-levee height regressor (tanh MLP on tidal range, sediment load, "
    "Spartina cover, creek order, bank slope and storm count; MSE, ASGD). The hand-written "
    "L2 penalty is subtracted instead of added (loss - wd * sum w^2): the weights grow "
    "steadily and the data loss climbs to over 2x its best with no single jump.",
)
def h586_saltmarsh_l2_sign(ctx):
    gen = seeded(5869)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    w0 = float(_flat(model).norm())
    wd = 0.1

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58690), 300, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(len(losses) - 9)]
    best = min(smooth)
    jumps = [b / max(a, 1e-9) for a, b in zip(losses[:-1], losses[1:], strict=True)]
    ctx.check("weights' norm over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single jump over 3x", max(jumps) < 3)
    ctx.check("finite throughout", _finite(losses))


# -- 10. output logit divergence: learnable logit scale without its clamp --------------------------


class _CosineHead(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d) * 0.1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        # the intended self.log_scale.clamp(max=math.log(4.0)) was dropped in a refactor
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _CosineNet(nn.Module):
    def __init__(self, d_in, k):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = _CosineHead(48, k)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="tightrope_pole_tip_logit_scale_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tightrope pole-tip classifier (GELU MLP with a cosine head on pole-tip "
    "accelerometer features, 5 balance corrections; cross-entropy, NAdam with a separate "
    "param group for the head's learnable log-scale at lr 0.1; betas 0.9, 0.99). The clamp that capped the "
    "scale at 4 was dropped in a refactor: on near-separable data the scale keeps growing "
    "and the head's logits grow over 20x and are still growing at the end.",
)
def h586_tightrope_unclamped_scale(ctx):
    gen = seeded(58610)
    model = _CosineNet(8, 5)
    scale = [model.head.log_scale]
    rest = [p for n, p in model.named_parameters() if n != "head.log_scale"]
    opt = torch.optim.NAdam(
        [{"params": rest, "lr": 3e-3}, {"params": scale, "lr": 0.1}], betas=(0.9, 0.99)
    )
    mags = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 8, 5, 586100, spread=3.0, noise=0.2),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s, o, y: mags.append(float(o.abs().max())),
    )
    ctx.check("head logits over 20x their start", _mean(mags[-10:]) > 20 * mags[0])
    ctx.check("still growing at the end", _mean(mags[-10:]) > 1.02 * _mean(mags[-60:-50]))
    ctx.check("scale past the dropped cap of 4 (over 8)", math.exp(float(scale[0].detach())) > 8)
    ctx.check("finite throughout", _finite(losses))


# -- 11. control: sharpness-aware minimisation (alarming-looking) ---------------------------------


@scenario(
    family="cross_stitch_floss_fade_sam_classifier",
    optimizer="SGD(momentum=0.9) + SAM(rho=0.05)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cross-stitch floss-fade classifier (ReLU MLP on spectrophotometer readings of "
    "stitched floss after light exposure, 5 fade grades; cross-entropy, SGD momentum wrapped "
    "in sharpness-aware minimisation, rho 0.05). Each step takes two gradient evaluations: "
    "the weights are moved rho along the normalised gradient, the gradient there is the one "
    "the optimiser sees, and the weights are moved back. The gradient the monitor sees is "
    "the perturbed one (larger than the clean one) and the backward runs twice a step; the "
    "run is healthy.",
)
def h586_cross_stitch_sam(ctx):
    gen = seeded(58611)
    model = _Net(8, hidden=64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    params = list(model.parameters())
    rho = 0.05
    ctx.attach(model, opt)
    batches = _classes(gen, 64, 8, 5, 586110, spread=1.2)
    losses, lifts = [], []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            gnorm = torch.sqrt(sum((p.grad**2).sum() for p in params)) + 1e-12
            eps = [rho * p.grad / gnorm for p in params]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        perturbed = F.cross_entropy(model(x), y)
        perturbed.backward()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
        lifts.append(float(perturbed.detach()) - float(loss.detach()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("perturbed loss above the clean loss on average", _mean(lifts) > 0)


# -- 12. control: RealNVP flow on generated bubble radius/lifetime data --------------------------


class _Coupling(nn.Module):
    def __init__(self, mask, hidden=32):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.s = nn.Linear(hidden, 2)
        self.t = nn.Linear(hidden, 2)
        nn.init.zeros_(self.s.weight)
        nn.init.zeros_(self.s.bias)
        nn.init.zeros_(self.t.weight)
        nn.init.zeros_(self.t.bias)

    def forward(self, x):
        h = self.net(x * self.mask)
        s = torch.tanh(self.s(h)) * (1 - self.mask)
        t = self.t(h) * (1 - self.mask)
        return x * self.mask + (1 - self.mask) * (x * s.exp() + t), s.sum(-1)

    def inverse(self, z):
        h = self.net(z * self.mask)
        s = torch.tanh(self.s(h)) * (1 - self.mask)
        t = self.t(h) * (1 - self.mask)
        return z * self.mask + (1 - self.mask) * ((z - t) * (-s).exp())


class _RealNVP(nn.Module):
    def __init__(self, n=6):
        super().__init__()
        masks = [
            torch.tensor([1.0, 0.0]) if i % 2 == 0 else torch.tensor([0.0, 1.0]) for i in range(n)
        ]
        self.couplings = nn.ModuleList(_Coupling(m) for m in masks)

    def forward(self, x):
        logdet = torch.zeros(x.shape[0])
        for c in self.couplings:
            x, ld = c(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z):
        for c in reversed(self.couplings):
            z = c.inverse(z)
        return z


def _flow_nll(out, _y):
    z, logdet = out
    logp = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi) - 0 * logdet + logdet
    return -logp.mean()


@scenario(
    family="sea_foam_bubble_radius_realnvp_flow",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-foam bubble RealNVP flow (6 affine coupling layers with tanh-bounded log-scales "
    "over generated (log radius, log lifetime) pairs of foam bubbles, a curved two-population "
    "density; exact log-likelihood by change of variables, RAdam, gradient clipping at 5). "
    "Healthy control: the NLL falls and the flow stays invertible.",
)
def h586_sea_foam_realnvp(ctx):
    gen = seeded(58612)
    model = _RealNVP(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def batches():
        while True:
            a = torch.rand(128, generator=gen) * math.pi
            pop = (torch.rand(128, generator=gen) < 0.5).float()
            r = torch.stack(
                [torch.cos(a) + pop - 0.5, torch.sin(a) * (1 - 2 * pop) + 0.25 * pop], 1
            )
            yield 1.5 * r + 0.1 * torch.randn(128, 2, generator=gen), None

    losses, _ = _train(ctx, model, opt, batches(), 250, _flow_nll, clip=5.0)
    x = next(batches())[0]
    with torch.no_grad():
        err = float((model.inverse(model(x)[0]) - x).abs().max())
    ctx.check("NLL fell by over 0.5 nats", _mean(losses[:10]) - _mean(losses[-10:]) > 0.5)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("flow still invertible (error under 1e-4)", err < 1e-4)


# -- 13. control: conv1d register classifier, OneCycleLR, label smoothing, accumulation ----------


class _RegisterConv(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, k)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


@scenario(
    family="yodel_chest_head_onecycle_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Yodel register classifier (conv1d net on 64-sample generated voice frames: chest, "
    "head or the break between them, told apart by fundamental and harmonic balance with "
    "noise; cross-entropy with label smoothing 0.1, Adam under OneCycleLR, 2 micro-batches "
    "accumulated). Healthy control.",
)
def h586_yodel_register_onecycle(ctx):
    gen = seeded(58613)
    model = _RegisterConv(3)
    steps = 160
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    t = torch.arange(64) / 64.0

    def frames(n):
        y = torch.randint(0, 3, (n,), generator=gen)
        f0 = 3.0 + 2.0 * y.float() + 0.5 * torch.rand(n, generator=gen)
        h2 = torch.tensor([0.8, 0.1, 0.45])[y]
        ph = 2 * math.pi * torch.rand(n, 1, generator=gen)
        x = torch.sin(2 * math.pi * f0[:, None] * t + ph)
        x = x + h2[:, None] * torch.sin(4 * math.pi * f0[:, None] * t + ph)
        return x + 0.3 * torch.randn(n, 64, generator=gen), y

    ctx.attach(model, opt)
    losses, accs = [], []
    for _step in range(steps):
        total = 0.0
        for _micro in range(2):
            x, y = frames(32)
            ctx.targets(y)
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1) / 2
            loss.backward()
            total += float(loss.detach())
            accs.append(float((out.argmax(-1) == y).float().mean()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("accuracy over 0.8 late", _mean(accs[-20:]) > 0.8)
