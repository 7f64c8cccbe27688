"""Held-out set 568 (``h568_``): 10 faults over 10 causes and 3 healthy controls, all hand-written
but one Hugging Face ConvBERT built from a tiny config.

Faults: glassblower punty-release GELU regressor fed the pyrometer in millikelvin under fp16
autocast (amp_overflow, AdamW); bandoneon bellows-pressure 1-D conv denoiser fed two clips in raw
int16 counts (data_outlier, Adamax); curling sweep-friction tanh regressor whose warm-up multiplies
by the warm-up factor without its division (sharpness_above_limit, plain SGD); didgeridoo overtone
ReLU Elman RNN with its identity recurrent init scaled 1.1 (exploding_gradients, SGD momentum);
saddlery tree-fit SiLU regressor whose body group stays at the warm-freeze lr 0 because the unfreeze
callback looks for a group named differently (update_ratio_out_of_range, RMSprop); bee-swarm hang
GELU BCE classifier whose pos_weight is read in per-mille for one step (gradient_spike, SGD
Nesterov); blacksmith forge-weld GRU with a masked mean pool that meets a weld with no hammer blows
logged (nonfinite, RAdam); hailstone habit cosine classifier with its logit scale typed 400 for 4.0
(softmax_collapse, Adam); cooperage croze-groove ReLU classifier whose fc2 bias gets -5 from a
copied init (loss_of_plasticity, Adagrad); chimney-sweep creosote-depth ReLU regressor whose
hand-written decoupled weight decay multiplies by 1 + lr*wd (loss_divergence, NAdam).
Controls: gamelan gong-pattern ConvBERT classifier (AdamW, warm-up + linear decay, clipping);
kitesurf trick GELU classifier with an entropy bonus whose weight decays to zero, so the reported
loss rises (alarming-looking, Adam); change-ringing method ReLU classifier (SGD momentum, OneCycleLR,
label smoothing, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    bert_batches,
    collapsed_fraction,
    dead_fraction,
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


def _fell(losses, k=10, ratio=0.7):
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
    forward=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
        if after is not None:
            after(step)
        losses.append(float(loss.detach()))
        ctx.step(loss)
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.0):
    """Gaussian class clusters in ``d_in`` dims: (x, label)."""
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield centres[y] + torch.randn(batch, d_in, generator=gen), y


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


def _top_eig(model, loss_fn, x, y, iters=12):
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


# -- 1. amp overflow: pyrometer in millikelvin under fp16 autocast -------------------------------


@scenario(
    family="glassblower_punty_release_temp_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Glassblower punty-release regressor (GELU MLP on gather temperature, glass weight, "
    "punty diameter, jack pressure, glory-hole reheat count and shop humidity, predicting seconds "
    "to a clean release; MSE, AdamW, fp16 autocast + GradScaler). From step 80 a new pyrometer "
    "logs the gather temperature in millikelvin (about 1.3e6) instead of the standardised column: "
    "autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same "
    "batch is finite in float32) and the loss is non-finite at step 80.",
)
def h568_glassblower_pyrometer_millikelvin(ctx):
    gen = seeded(5681)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 6, seed=5681)
    losses = []
    fc1_out = {}
    model.fc1.register_forward_hook(lambda m, i, o: fc1_out.__setitem__("o", o.detach()))
    for step in range(200):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = 1.3e6 + 2e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        if step == 80:
            ctx.check(
                "fc1's fp16 output is non-finite at step 80",
                not bool(fc1_out["o"].isfinite().all()),
            )
            with torch.no_grad():
                ctx.check(
                    "the same batch is finite through fc1 in float32",
                    bool(model.fc1(x).isfinite().all()),
                )
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
    ctx.check("the loss fell before the new pyrometer", _fell(losses[:80]))
    ctx.check(
        "the first non-finite loss is at step 80",
        len(losses) == 81 and not math.isfinite(losses[80]),
    )


# -- 2. data outlier: two clips in raw int16 counts ----------------------------------------------


class _BellowsDenoiser(nn.Module):
    """A small 1-D conv encoder-decoder with a skip connection."""

    def __init__(self, ch=16):
        super().__init__()
        self.enc1 = nn.Conv1d(1, ch, 5, padding=2)
        self.enc2 = nn.Conv1d(ch, ch, 5, padding=2, stride=2)
        self.dec1 = nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1)
        self.out = nn.Conv1d(2 * ch, 1, 5, padding=2)

    def forward(self, x):
        h1 = F.gelu(self.enc1(x[:, None]))
        h2 = F.gelu(self.enc2(h1))
        d = F.gelu(self.dec1(h2))
        return self.out(torch.cat([d, h1], 1))[:, 0]


def _bellows(gen, batch=16, length=64):
    t = torch.linspace(0, 1, length)
    while True:
        f = 2 + 4 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        clean = amp * torch.sin(6.28 * f * t + ph)
        yield clean + 0.3 * torch.randn(batch, length, generator=gen), clean


@scenario(
    family="bandoneon_bellows_pressure_conv1d_unet_denoiser",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Bandoneon bellows-pressure denoiser (1-D conv encoder-decoder with a skip connection on "
    "noisy bellows pressure traces; MSE, Adamax, clipping at 1.0). At step 90 the batch holds two "
    "clips from a recorder whose export skipped the float conversion: raw int16 counts (x32767), "
    "inputs and targets alike. The loss jumps by orders of magnitude for that one step, the "
    "gradient spikes, clipping bounds the update and the run recovers.",
)
def h568_bandoneon_int16_clips(ctx):
    gen = seeded(5682)
    model = _BellowsDenoiser()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 90:
            x, y = x.clone(), y.clone()
            x[:2] *= 32767.0
            y[:2] *= 32767.0
        return x, y

    losses, norms = _train(ctx, model, opt, _bellows(gen), 220, F.mse_loss, alter=alter, clip=1.0)
    pre = _median(losses[70:90])
    ctx.check("the loss at step 90 is over 1000x the median before", losses[90] > 1000 * pre)
    ctx.check(
        "the gradient at step 90 is over 100x the median before",
        norms[90] > 100 * _median(norms[70:90]),
    )
    ctx.check(
        "the run recovers: last 20 steps under 2x the pre-onset level",
        _mean(losses[-20:]) < 2 * pre,
    )
    ctx.check("the loss fell before the bad clips", _fell(losses[:90]))


# -- 3. sharpness above limit: warm-up multiplies by its length ----------------------------------


@scenario(
    family="curling_sweep_brush_friction_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=0,
    heldout=True,
    note="Curling sweep-friction regressor (tanh MLP on brush head pressure, sweep rate, pebble "
    "age, ice temperature and stone speed, predicting the friction drop; MSE, plain SGD). The "
    "LambdaLR warm-up returns min(step + 1, 30) without its division by 30, so the learning rate "
    "climbs from 0.1 towards 3.0, passes 2/sharpness within the warm-up and the loss blows up.",
)
def h568_curling_warmup_multiplied(ctx):
    gen = seeded(5683)
    model = _Net(5, hidden=32, act=nn.Tanh)
    base = 0.1
    warm = 30
    opt = torch.optim.SGD(model.parameters(), lr=base)
    # meant: min(s + 1, warm) / warm; the division was dropped
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, warm))
    batches = _readings(gen, 64, 5, seed=5683)
    probe = next(batches)
    ratios = []

    def before(step):
        if step % 3 == 0 and step < 30:
            ratios.append(opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, *probe))

    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness passes 2 at a measured step", max(ratios) > 2.0)
    blown = [v for v in losses if not math.isfinite(v) or v > 1e3 * min(losses[:5])]
    ctx.check("the loss blows up (non-finite or over 1000x its start)", len(blown) > 0)


# -- 4. exploding gradients: recurrent identity init scaled 1.1 ----------------------------------


class _OvertoneRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.1):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="relu")
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _breaths(gen, batch=32, length=30):
    while True:
        x = torch.randn(batch, length, 4, generator=gen) * 0.5
        y = x[:, :, 0].mean(1) * 3 + torch.tanh(x[:, -5:, 1].sum(1))
        yield x, y


@scenario(
    family="didgeridoo_overtone_jump_relu_elman_rnn",
    optimizer="SGD (momentum 0.9)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    onset=0,
    heldout=True,
    note="Didgeridoo overtone-jump regressor (ReLU Elman RNN over 30 frames of lip pressure, "
    "cheek pressure, airflow and drone pitch, predicting the overtone jump; MSE, SGD momentum). "
    "The IRNN init helper was called with gain 1.1 instead of 1.0, so the recurrent weight is "
    "1.1 x identity: the gradient grows back through time (the first frame's input gradient is "
    "about 10x the last's) and the run blows up.",
)
def h568_didgeridoo_irnn_gain(ctx):
    gen = seeded(5684)
    model = _OvertoneRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    batches = _breaths(gen)
    x, y = next(batches)
    x = x.clone().requires_grad_(True)
    F.mse_loss(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    model.zero_grad(set_to_none=True)
    ctx.check(
        "first frame's input gradient is over 5x the last frame's", float(g[0]) > 5 * float(g[-1])
    )
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    blown = [v for v in losses if not math.isfinite(v) or v > 1e3 * min(losses[:5])]
    ctx.check("the loss blows up (non-finite or over 1000x its start)", len(blown) > 0)


# -- 5. update ratio: body group never unfrozen ----------------------------------------------------


@scenario(
    family="saddlery_tree_fit_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    onset=0,
    heldout=True,
    note="Saddlery tree-fit regressor (SiLU MLP on wither height, shoulder angle, gullet width, "
    "panel length and rider weight, predicting the pressure-map peak; MSE, RMSprop, two param "
    "groups). The body group (fc1, fc2) starts at lr 0 for a head-only warm phase; the unfreeze "
    "callback at step 20 looks for a group named 'backbone' but the group is named 'body', so "
    "fc1 and fc2 stay at lr 0 all run and never move while the head trains.",
)
def h568_saddlery_body_never_unfrozen(ctx):
    gen = seeded(5685)
    model = _Net(5, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {
                "params": [*model.fc1.parameters(), *model.fc2.parameters()],
                "lr": 0.0,
                "name": "body",
            },
            {"params": model.head.parameters(), "lr": 1e-3, "name": "head"},
        ],
        lr=1e-3,
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))

    def before(step):
        if step == 20:
            for group in opt.param_groups:
                if group.get("name") == "backbone":
                    group["lr"] = 1e-3

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 5, seed=5685), 200, F.mse_loss, before=before
    )
    ctx.check("fc1 never moved", float((model.fc1.weight.detach() - w1).abs().max()) == 0.0)
    ctx.check("fc2 never moved", float((model.fc2.weight.detach() - w2).abs().max()) == 0.0)
    ctx.check("the head moved", float((model.head.weight.detach() - wh).abs().max()) > 1e-3)
    ctx.check("losses finite", _finite(losses))


# -- 6. gradient spike: pos_weight in per-mille for one step -------------------------------------


@scenario(
    family="bee_swarm_cluster_hang_gelu_bce_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Bee-swarm hang classifier (GELU MLP on cluster size, branch height, ambient temperature, "
    "scout dance count and time of day, predicting whether the swarm leaves within the hour; BCE "
    "with pos_weight, SGD Nesterov, clipping 1.0). At step 120 the config reload reads pos_weight "
    "from a per-mille field (1000 instead of 1.0) for one step: the backpropagated loss and "
    "gradient spike by orders of magnitude while the logged (unweighted) loss stays ordinary.",
)
def h568_bee_swarm_pos_weight_permille(ctx):
    gen = seeded(5686)
    model = _Net(5, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(5686)
    w = torch.randn(5, generator=g)

    def data():
        while True:
            x = torch.randn(64, 5, generator=gen)
            yield x, ((x @ w + 0.3 * torch.randn(64, generator=gen)) > 0).float()

    def backprop(step, loss):
        pw = torch.tensor(1000.0 if step == 120 else 1.0)
        return F.binary_cross_entropy_with_logits(model._last, model._y, pos_weight=pw)

    def fwd(m, x):
        m._last = m(x)
        return m._last

    batches = data()

    def alter(step, x, y):
        model._y = y
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches,
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        backprop=backprop,
        clip=1.0,
        forward=fwd,
    )
    ctx.check(
        "the gradient at step 120 is over 100x the median before",
        norms[120] > 100 * _median(norms[100:120]),
    )
    ctx.check(
        "the logged loss at step 120 is ordinary (under 3x the median)",
        losses[120] < 3 * _median(losses[100:120]),
    )
    ctx.check("the loss fell and stayed finite", _fell(losses))


# -- 7. nonfinite: masked mean pool over a weld with no blows --------------------------------------


class _MaskedMeanPool(nn.Module):
    def forward(self, h, mask):
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class _WeldGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.pool = _MaskedMeanPool()
        self.head = nn.Linear(hidden, 1)

    def forward(self, xm):
        x, mask = xm
        h, _ = self.gru(x)
        return self.head(self.pool(h, mask)).squeeze(-1)


@scenario(
    family="blacksmith_forge_weld_gru_masked_pool_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("pool",),
    diverges=75,
    onset=75,
    heldout=True,
    note="Blacksmith forge-weld strength regressor (GRU over up to 20 logged hammer blows: force, "
    "interval, billet temperature; masked mean pool; MSE, RAdam). At step 75 the batch holds a "
    "weld whose blow log is empty (the logger was off): the masked mean divides 0 by 0, the "
    "pooled feature is NaN and so is the loss at step 75.",
)
def h568_blacksmith_empty_blow_log(ctx):
    gen = seeded(5687)
    model = _WeldGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def data():
        while True:
            x = torch.randn(32, 20, 3, generator=gen)
            n = torch.randint(5, 21, (32,), generator=gen)
            mask = (torch.arange(20)[None] < n[:, None]).float()
            y = (x[..., 0] * mask).sum(1) / n + 0.1 * n
            yield (x, mask), y

    seen = {}

    def alter(step, xm, y):
        if step == 75:
            x, mask = xm
            mask = mask.clone()
            mask[3] = 0.0
            seen["empty"] = bool((mask.sum(1) == 0).any())
            return (x, mask), y
        return xm, y

    losses, _ = _train(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    ctx.check("the step-75 batch holds a weld with no blows", seen.get("empty", False))
    ctx.check(
        "the first non-finite loss is at step 75",
        len(losses) == 76 and not math.isfinite(losses[75]),
    )
    ctx.check("the loss fell before", _fell(losses[:75]))


# -- 8. softmax collapse: cosine head scale typed 400 ------------------------------------------------


class _CosineClassifier(nn.Module):
    def __init__(self, d_in, hidden, k, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, k, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(self.act1(self.fc1(x)), dim=-1)
        return self.scale * h @ F.normalize(self.head.weight, dim=-1).T


@scenario(
    family="hailstone_habit_cosine_scale_relu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    onset=0,
    heldout=True,
    note="Hailstone habit classifier (ReLU encoder + cosine head on radar reflectivity, updraft "
    "speed, freezing level, melting layer depth and cloud-top temperature; 6 habits; cross-entropy, "
    "Adam). The cosine head's scale was typed 400 instead of 4.0, so the logits span +-400 and "
    "the float32 softmax rounds most rows' target probability to exactly 1.0 once rows are fit.",
)
def h568_hailstone_cosine_scale_typo(ctx):
    gen = seeded(5688)
    model = _CosineClassifier(8, 48, 6, scale=400.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _classes(gen, 64, 8, 6, seed=5688, spread=1.5)
    fracs = []

    def after(step):
        if step % 10 == 9:
            with torch.no_grad():
                x, y = probe
                fracs.append(collapsed_fraction(model(x), y))

    probe = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", max(fracs) > 0.4)
    ctx.check("losses finite", _finite(losses))


# -- 9. loss of plasticity: fc2 bias -5 from a copied init --------------------------------------------


@scenario(
    family="cooperage_croze_groove_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    onset=0,
    heldout=True,
    note="Cooperage croze-groove classifier (ReLU MLP on groove depth, stave thickness, moisture, "
    "croze blade wear and head diameter; 5 fit grades; cross-entropy, Adagrad). The init code "
    "copied from a gated model fills fc2's bias with -5, so nearly every act2 unit is negative "
    "on every input from step 0; they get no gradient, stay dead and the loss stays near chance.",
)
def h568_cooperage_dead_fc2_bias(ctx):
    gen = seeded(5689)
    model = _Net(5, hidden=48, out=5, act=nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    batches = _classes(gen, 64, 5, 5, seed=5689, spread=1.5)
    probe = next(batches)
    with torch.no_grad():
        d0 = dead_fraction(model.features(probe[0]))
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        d1 = dead_fraction(model.features(probe[0]))
    ctx.check("over 90% of act2 dead at the start", d0 > 0.9)
    ctx.check("over 90% of act2 still dead at the end", d1 > 0.9)
    ctx.check("loss stays near chance (over 0.8 log 5)", _mean(losses[-20:]) > 0.8 * math.log(5))


# -- 10. loss divergence: decoupled weight decay with the wrong sign ---------------------------------


@scenario(
    family="chimney_sweep_creosote_depth_wd_sign_relu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=0,
    heldout=True,
    note="Chimney-sweep creosote-depth regressor (ReLU MLP on flue temperature, wood moisture, "
    "burn hours, draught and liner diameter, predicting creosote depth; Huber, NAdam). The "
    "hand-written decoupled weight decay after the step multiplies the weights by 1 + lr*wd "
    "instead of 1 - lr*wd: the weights grow steadily and the loss climbs slowly from its best, "
    "with no single jump.",
)
def h568_chimney_sweep_wd_sign(ctx):
    gen = seeded(5690)
    model = _Net(5, hidden=48, act=nn.ReLU)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 5, seed=5690), 250, F.huber_loss, after=after
    )
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(losses)
    ctx.check("weights over 2x their initial norm", w1 > 2 * w0)
    ctx.check("loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    jumps = [losses[i] / _mean(losses[i - 10 : i]) for i in range(10, len(losses))]
    ctx.check("no single jump: no step over 5x the mean of the 10 before", max(jumps) < 5.0)
    means = [_mean(losses[i : i + 25]) for i in range(0, len(losses), 25)]
    low = means.index(min(means))
    ctx.check(
        "the lowest 25-step mean is at least 75 steps before the end", len(means) - 1 - low >= 3
    )
    ctx.check("losses finite", _finite(losses))


# -- 11. control: ConvBERT from a tiny config ---------------------------------------------------------


@scenario(
    family="gamelan_gong_cycle_convbert_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gamelan gong-cycle classifier: a Hugging Face ConvBERT (2 layers, hidden 32) built from "
    "a tiny config reads token sequences of struck instruments and predicts whether the kempul "
    "strokes outnumber the kenong strokes; cross-entropy, AdamW, linear warm-up then linear decay, "
    "clipping at 1.0. Healthy.",
)
def h568_gamelan_convbert_control(ctx):
    from transformers import ConvBertConfig, ConvBertForSequenceClassification

    gen = seeded(5691)
    config = ConvBertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        embedding_size=32,
        max_position_embeddings=64,
        head_ratio=2,
        conv_kernel_size=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    model = ConvBertForSequenceClassification(config)
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 16, max(0.05, (steps - s) / (steps - 16)))
    )
    losses, _ = _train(
        ctx,
        model,
        opt,
        bert_batches(gen, batch=32, length=16),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("the loss fell", _fell(losses, k=20, ratio=0.8))
    ctx.check("losses finite", _finite(losses))


# -- 12. control (alarming): entropy bonus decaying to zero -----------------------------------------


@scenario(
    family="kitesurf_trick_landing_entropy_bonus_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kitesurf trick-landing classifier (GELU MLP on kite power, board speed, pop height, "
    "rotation rate and wind gust; 4 landing outcomes; Adam). The loss is cross-entropy minus an "
    "entropy bonus whose weight decays linearly from 0.6 to 0 over the run, a standard way to "
    "keep early predictions soft; the reported total loss rises as the bonus fades while the "
    "cross-entropy falls. Healthy, alarming-looking.",
)
def h568_kitesurf_entropy_bonus_control(ctx):
    gen = seeded(5692)
    model = _Net(5, hidden=48, out=4, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 200
    ces = []

    def loss_fn(logits, y):
        ce = F.cross_entropy(logits, y)
        ces.append(float(ce.detach()))
        logp = F.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        beta = 0.6 * max(0.0, 1 - len(ces) / (0.8 * steps))
        return ce - beta * entropy

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 5, 4, seed=5692, spread=1.2),
        steps,
        loss_fn,
        classifier=True,
    )
    ctx.check("the cross-entropy fell", _fell(ces))
    ctx.check(
        "the reported loss rises from its early minimum",
        _mean(losses[-10:]) > min(losses[:60]) + 0.2,
    )
    ctx.check("losses finite", _finite(losses))


# -- 13. control: OneCycle, label smoothing, accumulation, clipping --------------------------------


@scenario(
    family="change_ringing_method_onecycle_smoothing_relu_classifier",
    optimizer="SGD (momentum 0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Change-ringing method classifier (ReLU MLP on rope-sight timings of a touch, 6 methods; "
    "cross-entropy with label smoothing 0.1, SGD momentum, OneCycleLR, gradient accumulation over "
    "2 micro-batches, clipping at 1.0, noisy batches). Healthy.",
)
def h568_change_ringing_onecycle_control(ctx):
    gen = seeded(5693)
    model = _Net(10, hidden=64, out=6, act=nn.ReLU)
    steps = 150
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    ctx.attach(model, opt)
    batches = _classes(gen, 32, 10, 6, seed=5693, spread=0.8)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses))
    ctx.check("losses finite", _finite(losses))
