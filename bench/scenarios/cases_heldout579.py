"""Held-out set 579 (``h579_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: fog-catcher mesh water-yield regressor fed raw anemometer pulse counts under fp16
autocast (amp_overflow, AdamW); bog-snorkelling flipper-drag regressor whose hand-written
decoupled weight decay multiplies by (1 + lr*wd) (loss_divergence, SGD momentum); cestoball
shot-arc regressor whose SGD lr is typed 4.0 for 0.04 (sharpness_above_limit, plain SGD);
tamburitza string-sustain 12-deep tanh MLP with orthogonal init gain 4.0 (exploding_gradients,
SGD Nesterov); knife-sharpening bevel-angle regressor whose fc2 group lr is typed 1e-9
(update_ratio_out_of_range, RMSprop, param groups); dog-agility weave-pole fault classifier fed
one shard in raw millimetres (data_outlier, NAdam); cobbler welt-stitch BCE classifier whose
resumed accumulation step multiplies by the loss scale (gradient_spike, SGD momentum);
sugar-cane brix Gaussian NLL net taking the log of a zero stalk count (nonfinite, RAdam);
octopush puck-flick ReLU classifier with Adam lr typed 1e-1 for 1e-3 (loss_of_plasticity, Adam);
guzheng pluck-technique classifier whose temperature is read as 1e-3 (softmax_collapse, Adagrad).
Controls: birdcall sonogram/caption CLIP-style dual encoder whose learnt logit scale climbs from
10 to its clamp at 100 (alarming-looking, AdamW, warm-up); hat-block felt-shrink Huber regressor
(Adamax, ReduceLROnPlateau, noisy readings); millinery straw-braid ReLU classifier (SGD
Nesterov, OneCycleLR, label smoothing 0.1, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


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
    after=None,
    alter=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
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
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if after is not None:
            after(step)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
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


# -- 1. amp overflow: raw anemometer pulse counts under fp16 autocast -----------------------------

AMP_ONSET = 80


@scenario(
    family="fog_catcher_mesh_water_yield_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Fog-catcher mesh water-yield regressor (GELU MLP on wind speed, fog droplet density, "
    "mesh shade coefficient, panel angle, humidity and temperature, MSE, AdamW, fp16 autocast "
    "+ GradScaler). From step 80 a logger swap writes the wind column as raw anemometer pulse "
    "counts (about 2e5) instead of standardised m/s: autocast runs fc1 in fp16, whose range "
    "ends at 65504, fc1's output is non-finite (the same batch is finite in float32) and the "
    "loss is non-finite at step 80.",
)
def h579_fog_catcher_pulse_counts(ctx):
    gen = seeded(5791)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57910)
    losses, fc1_bad, bad_x, bad_y = [], [], None, None
    for step in range(130):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 2.0e5 + 5.0e3 * x[:, 0]
            bad_x, bad_y = x, y
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    with torch.no_grad():
        fp32_loss = float(F.mse_loss(model(bad_x), bad_y)) if bad_x is not None else math.nan
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[AMP_ONSET])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. loss divergence: decoupled weight decay with its sign flipped ----------------------------


@scenario(
    family="bog_snorkel_flipper_drag_tanh_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Bog-snorkelling flipper-drag regressor (tanh MLP on flipper blade area, stiffness, "
    "kick rate, peat-water density, trench depth and swimmer mass, MSE, SGD momentum 0.9). A "
    "hand-written decoupled weight decay after each step is written p *= (1 + lr * wd) instead "
    "of (1 - lr * wd): the net fits first, then every weight grows geometrically, the tanh "
    "units saturate and the loss climbs slowly, with no jump, to over twice its best.",
)
def h579_bog_snorkel_decay_sign(ctx):
    gen = seeded(5792)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 0.03, 0.25
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.mul_(1 + lr * wd)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57920), 300, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 3. sharpness above limit: SGD lr typed 4.0 for 0.04 -----------------------------------------


@scenario(
    family="cestoball_shot_arc_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Cestoball shot-arc regressor (tanh MLP on release height, release angle, distance to "
    "the basket, defender reach, ball spin and wrist speed, predicting apex height; MSE, plain "
    "SGD). The lr is typed 4.0 for 0.04 in the config: lr x (top Hessian eigenvalue) is past 2 "
    "from the first step and the loss blows up.",
)
def h579_cestoball_lr_typo(ctx):
    gen = seeded(5793)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 57930)
    probe = next(batches)
    eig0 = _top_eig(model, F.mse_loss, *probe)
    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss)
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("intended lr 0.04 x sharpness below 2", 0.04 * eig0 < 2.0)
    ctx.check("loss blows up (non-finite or over 20x its best)", bool(blown))


# -- 4. exploding gradients: orthogonal init gain typed 4.0 -------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="tamburitza_string_sustain_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Tamburitza string-sustain regressor (12-deep tanh MLP on string gauge, plectrum "
    "angle, bridge height, soundboard thickness, fret position and attack velocity, predicting "
    "sustain time; MSE, SGD Nesterov). The orthogonal init's gain is typed 4.0 where 1.0 was "
    "meant: the net is in the chaotic regime and the gradient grows through depth from the head "
    "to layers.0 (over 20x larger there than at the last hidden layer).",
)
def h579_tamburitza_init_gain(ctx):
    gen = seeded(5794)
    model = _DeepTanh(6, 48, 12, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios = []

    def backprop(step, loss):
        if step < 20:
            g = torch.autograd.grad(
                loss, [model.layers[0].weight, model.layers[-1].weight], retain_graph=True
            )
            ratios.append(float(g[0].norm() / g[1].norm().clamp_min(1e-12)))
        return loss

    ref = _DeepTanh(6, 48, 12, gain=1.0)
    x0, y0 = next(_readings(torch.Generator().manual_seed(1), 64, 6, 57940))
    g = torch.autograd.grad(F.mse_loss(ref(x0), y0), [ref.layers[0].weight, ref.layers[-1].weight])
    ref_ratio = float(g[0].norm() / g[1].norm())
    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57940), 120, F.mse_loss, backprop=backprop
    )
    ctx.check("layers.0 gradient over 20x the last hidden layer's", min(ratios[:5]) > 20)
    ctx.check("with gain 1.0 the ratio stays under 5", ref_ratio < 5)
    ctx.check("grows through depth for the first 20 steps", _mean(ratios) > 20)


# -- 5. update ratio: fc2 group lr typed 1e-9 ------------------------------------------------------


@scenario(
    family="knife_sharpening_bevel_angle_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Knife-sharpening bevel-angle regressor (SiLU MLP on whetstone grit, stroke pressure, "
    "stroke count, blade steel hardness, edge thickness and guide angle, predicting the final "
    "bevel angle; MSE, RMSprop with param groups). The fc2 group's lr is typed 1e-9 for 1e-3: "
    "fc2's updates are about 1e-9 of its weights, fc2 never moves while the rest trains.",
)
def h579_knife_bevel_group_lr(ctx):
    gen = seeded(5795)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters()},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters()},
        ],
        lr=1e-3,
    )
    fc2_0, fc1_0 = _flat(model.fc2), _flat(model.fc1)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57950), 200, F.mse_loss)
    fc2_move = float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm())
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", fc2_move < 1e-5)
    ctx.check("fc1 moved over 1% of its norm", fc1_move > 0.01)
    ctx.check("finite throughout", _finite(losses))


# -- 6. data outlier: one shard in raw millimetres ------------------------------------------------

OUTLIER_STEP = 120


@scenario(
    family="dog_agility_weave_pole_fault_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Dog-agility weave-pole fault classifier (GELU MLP on 12 gate-timing and paw-position "
    "features, 5 fault classes, cross-entropy, NAdam, clipping at 1.0). One shard, read at "
    "step 120, was exported with the paw positions in raw millimetres instead of standardised "
    "units: that batch's loss is over 20x the run's and its gradient over 10x; the next "
    "batches are clean and the run recovers.",
)
def h579_dog_agility_mm_shard(ctx):
    gen = seeded(5796)
    model = _Net(12, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x * 1000.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 5, 57960),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    around = losses[OUTLIER_STEP - 20 : OUTLIER_STEP]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss at the shard over 20x the run's", losses[OUTLIER_STEP] > 20 * _mean(around))
    ctx.check(
        "gradient at the shard over 10x the run's",
        norms[OUTLIER_STEP] > 10 * _mean(norms[OUTLIER_STEP - 20 : OUTLIER_STEP]),
    )
    ctx.check("recovers within 40 steps", _mean(losses[-20:]) < 2 * _mean(around))


# -- 7. gradient spike: resumed accumulation step multiplies by the loss scale --------------------

SPIKE_STEP = 130


@scenario(
    family="cobbler_welt_stitch_gelu_bce_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Cobbler welt-stitch pass/fail classifier (GELU MLP on awl depth, thread tension, "
    "stitch pitch, welt thickness, wax coat and leather moisture, BCE with logits, SGD momentum "
    "0.9, gradient accumulation over 4 micro-batches, clipping at 5.0). The step resumed from a "
    "checkpoint at 130 rebuilds the accumulation with the old fp16 loss scale 512 applied in "
    "fp32 (no scaler to undo it): that one step's gradient is over 50x the run's, the logged "
    "loss is ordinary.",
)
def h579_cobbler_resume_scale(ctx):
    gen = seeded(5797)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(57970)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(4):
            x = torch.randn(32, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(32, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            weight = 512.0 / 4 if step == SPIKE_STEP else 1.0 / 4
            (loss * weight).backward()
            total += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    before = norms[SPIKE_STEP - 20 : SPIKE_STEP]
    ctx.check(
        "gradient at the resumed step over 50x the run's", norms[SPIKE_STEP] > 50 * _mean(before)
    )
    ctx.check(
        "logged loss ordinary at that step",
        losses[SPIKE_STEP] < 1.5 * _mean(losses[SPIKE_STEP - 10 : SPIKE_STEP]),
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained", _fell(losses))


# -- 8. nonfinite: log of a zero stalk count ------------------------------------------------------

NAN_STEP = 90


class _LogCount(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _BrixNLL(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_count = _LogCount()
        self.body = nn.Sequential(nn.Linear(6, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU())
        self.mean = nn.Linear(48, 1)
        self.log_var = nn.Linear(48, 1)

    def forward(self, x):
        h = self.body(self.log_count(x))
        return torch.cat([self.mean(h), self.log_var(h)], dim=1)


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1]
    return 0.5 * (log_var + (y - mu) ** 2 / log_var.exp()).mean()


@scenario(
    family="sugar_cane_brix_ripeness_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_count",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Sugar-cane brix ripeness net (SiLU MLP predicting mean and log-variance of brix, "
    "Gaussian NLL, RAdam) whose first feature is log(stalk count per metre) taken inside the "
    "model. At step 90 a field sheet records a gap row with a stalk count of 0: log(0) is -inf, "
    "the forward pass produces inf - inf and the loss is NaN at step 90.",
)
def h579_sugar_cane_log_zero(ctx):
    gen = seeded(5798)
    model = _BrixNLL()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 6, 57980, noise=0.2)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = torch.exp(0.3 * x[:, 0]) * 12.0
            yield x, y

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[3, 0] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 150, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained finitely before the gap row", _fell(losses[:NAN_STEP], ratio=0.9))
    ctx.check("loss first non-finite at step 90", first_bad == NAN_STEP)
    ctx.check("log(0) is -inf", math.isinf(float(torch.log(torch.tensor(0.0)))))


# -- 9. loss of plasticity: Adam lr typed 1e-1 ----------------------------------------------------


@scenario(
    family="octopush_puck_flick_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Octopush (underwater hockey) puck-flick classifier (ReLU MLP on 16 stick-angle, "
    "fin-kick and pool-depth features, 6 flick types, cross-entropy, Adam). The lr is typed "
    "1e-1 for 1e-3: the first large updates push most of fc2's ReLU units negative for every "
    "input; over 40% of act2 is dead and stays dead, and the loss stalls without blowing up.",
)
def h579_octopush_adam_lr_typo(ctx):
    gen = seeded(5799)
    model = _Net(16, hidden=32, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    batches = _classes(gen, 64, 16, 6, 57990, spread=0.5, noise=1.5)
    probe_x = torch.cat([next(batches)[0] for _ in range(8)])

    def dead():
        with torch.no_grad():
            return float((model.features(probe_x) <= 0).all(0).float().mean())

    dead0 = dead()
    trace = []

    def before(step):
        if step % 20 == 0:
            trace.append(dead())

    losses, _ = _train(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, before=before
    )
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 40% of act2 dead at the end", dead() > 0.4)
    ctx.check("stays dead over the last half", min(trace[len(trace) // 2 :]) > 0.4)
    ctx.check("finite throughout", _finite(losses))


# -- 10. softmax collapse: temperature read as 1e-3 ----------------------------------------------


class _TempNet(_Net):
    def __init__(self, temperature, **kw):
        super().__init__(**kw)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="guzheng_pluck_technique_temperature_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Guzheng pluck-technique classifier (ReLU MLP on 12 nail-attack, string-bend and "
    "tremolo features, 8 techniques, cross-entropy, Adagrad). The logit temperature comes from "
    "a config written in milli-units and is read as 1e-3 instead of 1.0: the logits are 1000x, "
    "and over 40% of rows' target probabilities round to exactly 1.0 in float32.",
)
def h579_guzheng_temperature(ctx):
    gen = seeded(57910)
    model = _TempNet(1e-3, d_in=12, hidden=48, out=8)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 12, 8, 579100)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        p = torch.softmax(model(x).float(), dim=-1)
    frac = float((p.gather(1, y[:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)
    ctx.check("some probabilities exactly 0", bool((p == 0).any()))


# -- 11. control (alarming): CLIP-style dual encoder, logit scale climbs to its clamp -------------


class _Tower(nn.Module):
    def __init__(self, d_in, dim=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, dim)

    def forward(self, x):
        return F.normalize(self.fc2(self.act(self.fc1(x))), dim=-1)


class _DualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.sonogram = _Tower(24)
        self.caption = _Tower(16)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, a, b):
        return self.logit_scale.exp() * self.sonogram(a) @ self.caption(b).T


@scenario(
    family="birdcall_sonogram_caption_clip_dual_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Birdcall sonogram/caption CLIP-style dual encoder (two GELU towers, 24 sonogram "
    "features and 16 caption features of 64 bird calls, one noisy pair per call in each "
    "batch, normalised embeddings, symmetric InfoNCE, AdamW with betas (0.9, 0.98) and a "
    "20-step warm-up, the learnable logit scale in its own no-decay group at a higher lr and "
    "clamped to 100 as in CLIP). The logit scale climbs from 10 to its clamp at 100 and the "
    "logits grow about tenfold: alarming-looking, but healthy, the contrastive loss falls "
    "and stays finite.",
)
def h579_birdcall_clip_scale_clamp(ctx):
    gen = seeded(57911)
    model = _DualEncoder()
    towers = [p for n, p in model.named_parameters() if n != "logit_scale"]
    opt = torch.optim.AdamW(
        [
            {"params": towers, "weight_decay": 0.01},
            {"params": [model.logit_scale], "weight_decay": 0.0, "lr": 0.2},
        ],
        lr=1e-3,
        betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    g = torch.Generator().manual_seed(579110)
    wa, wb = torch.randn(12, 24, generator=g), torch.randn(12, 16, generator=g)
    calls = torch.randn(64, 12, generator=g)
    ctx.attach(model, opt)
    losses, scales, max_logit = [], [], []
    for _ in range(200):
        z = calls[torch.randperm(64, generator=gen)]
        a = z @ wa + 0.3 * torch.randn(64, 24, generator=gen)
        b = z @ wb + 0.3 * torch.randn(64, 16, generator=gen)
        logits = model(a, b)
        target = torch.arange(64)
        ctx.targets(target)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100.0))
        losses.append(float(loss.detach()))
        max_logit.append(float(logits.detach().abs().max()))
        scales.append(float(model.logit_scale.detach().exp()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("contrastive loss fell", _fell(losses, ratio=0.5))
    ctx.check("logit scale climbs from 10 to its clamp at 100", scales[-1] > 99.9)
    ctx.check("logits grow about tenfold", _mean(max_logit[-10:]) > 8 * _mean(max_logit[:5]))


# -- 12. control: hat-block felt-shrink Huber regressor, Adamax + ReduceLROnPlateau -------------


@scenario(
    family="hat_block_felt_shrink_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hat-block felt-shrink regressor (tanh MLP on felt fibre, steam time, block size, "
    "brim width, water temperature and fulling pressure, Huber loss, Adamax, "
    "ReduceLROnPlateau, noisy readings with occasional mis-read gauges). Healthy control.",
)
def h579_hat_block_plateau(ctx):
    gen = seeded(57912)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    base = _readings(gen, 64, 6, 579120, noise=0.2)

    def batches():
        for x, y in base:
            flip = torch.rand(64, generator=gen) < 0.03
            yield x, torch.where(flip, y + 3.0 * torch.randn(64, generator=gen), y)

    losses, _ = _train(ctx, model, opt, batches(), 250, F.huber_loss, plateau=plateau)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("median loss fell", sorted(losses[-30:])[15] < 0.6 * sorted(losses[:10])[5])


# -- 13. control: millinery straw-braid classifier, SGD Nesterov + OneCycleLR ---------------------


@scenario(
    family="millinery_straw_braid_relu_classifier",
    optimizer="SGD(momentum=0.9, nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Millinery straw-braid classifier (ReLU MLP on 14 plait-width, straw-moisture and "
    "stitch features, 7 braid types, cross-entropy with label smoothing 0.1, SGD Nesterov, "
    "OneCycleLR, clipping at 1.0, noisy batches). Healthy control.",
)
def h579_millinery_onecycle(ctx):
    gen = seeded(57913)
    model = _Net(14, hidden=64, out=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 14, 7, 579130, noise=1.2),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.6))
