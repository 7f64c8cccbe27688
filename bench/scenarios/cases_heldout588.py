"""Held-out set 588 (``h588_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: bell-founder loam-mould shrink regressor fed the melt pressure in raw pascals under fp16
autocast (amp_overflow, AdamW); bodger's pole-lathe treadle-rhythm ReLU classifier whose Adam
lr is typed 3e-2 for 3e-4 and whose hidden ReLUs die (loss_of_plasticity, Adam); currach
oar-stroke classifier fed one shard of strain-gauge readings in raw microstrain
(data_outlier, Adamax, label smoothing); cooper hoop-driving tanh regressor with its SGD lr
typed 1.5 for 0.015 (sharpness_above_limit, plain SGD); bell-ringer change-peal Elman RNN whose
recurrent weights are initialised orthogonal with gain 3 (exploding_gradients, SGD momentum);
saddler awl-stitch regressor whose head group lr is typed 3e-9 (update_ratio_out_of_range,
NAdam, param groups); lacemaker bobbin-twist BCE classifier whose resumed accumulation step
multiplies the loss by the accumulation count instead of dividing (gradient_spike, SGD
Nesterov, accumulation, clipping); sea-smoke fog-depth Gaussian NLL net whose variance head
lost its clamp before the log (nonfinite, RAdam); handbell-choir peal classifier whose
temperature is read from a percent key (softmax_collapse, Adagrad); dry-stone cope-settle
regressor whose target calibration offset is accumulated every batch (loss_divergence, Adam).
Controls: racing-pigeon homing-time regressor under a triangular cyclic lr (10x range, 50-step
period, alarming-looking, SGD momentum); rime-ice feather DDPM denoiser (noise prediction,
sinusoidal timestep embedding, generated 2-d data, Adam, warm-up); farrier clinch-angle Huber
regressor (RMSprop, OneCycleLR, clipping, accumulation, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
            after(step, out.detach() if torch.is_tensor(out) else out, y)
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
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


# -- 1. amp overflow: melt pressure in raw pascals under fp16 autocast ----------------------------

AMP_ONSET = 70


@scenario(
    family="bellfounder_loam_mould_shrink_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Bell-founder loam-mould shrink regressor (GELU MLP on melt pressure, bronze tin "
    "share, pour temperature, loam moisture, mould wall thickness, strickle speed and cooling "
    "hours, predicting the shrink of the bell's sound bow; MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 70 a new foundry logger writes the melt pressure in raw pascals "
    "(about 1.5e5) instead of the standardised column: autocast runs fc1 in fp16, whose range "
    "ends at 65504, fc1's output is non-finite (the same batch is finite in float32) and the "
    "loss is non-finite at step 70.",
)
def h588_bellfounder_pressure_pascals(ctx):
    gen = seeded(5881)
    model = _Net(7, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 7, 58810)
    losses, fc1_bad, dtypes, bad_x, bad_y = [], [], [], None, None
    for step in range(120):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 1.5e5 + 4.0e3 * x[:, 0]
            bad_x, bad_y = x, y
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        dtypes.append(seen["fc1"][0])
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
    ctx.check("fc1 ran in fp16", all(d == torch.float16 for d in dtypes))
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[-1])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. loss of plasticity: Adam lr typed 3e-2 for 3e-4, hidden ReLUs die ------------------------


def _bodger_run(lr, gen, probe, steps=200):
    model = _Net(6, hidden=48, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return model, opt, _classes(gen, 64, 6, 6, 58820, spread=1.2)


@scenario(
    family="pole_lathe_bodger_treadle_dead_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Bodger's pole-lathe treadle-rhythm classifier (ReLU MLP on treadle stroke length, "
    "pole spring-back, cord slip, chisel angle, spindle speed and green-wood moisture, 6 "
    "rhythm classes; cross-entropy, Adam). The Adam lr is typed 1e-1 for 1e-3: the large "
    "sign-like updates push fc2's pre-activations below zero for unit after unit, over half of "
    "act2's units die (never positive on a 512-row probe) and stay dead, and the loss stays "
    "well above the same model's at the intended lr, whose units stay alive.",
)
def h588_bodger_treadle_dead_relus(ctx):
    probe = torch.randn(512, 6, generator=torch.Generator().manual_seed(58821)) * 1.5
    # the intended lr, same seed, unmonitored: what the run should look like
    ref_gen = seeded(5882)
    ref, ref_opt, ref_batches = _bodger_run(1e-3, ref_gen, probe)
    ref_losses = []
    for _ in range(200):
        x, y = next(ref_batches)
        loss = F.cross_entropy(ref(x), y)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_losses.append(float(loss.detach()))
    with torch.no_grad():
        ref_dead = dead_fraction(ref.features(probe))

    gen = seeded(5882)
    model, opt, batches = _bodger_run(1e-1, gen, probe)
    dead = []

    def after(step, out, y):
        if step % 10 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("few dead units at init", dead0 < 0.15)
    ctx.check("over half of act2's units dead at the end", dead[-1] > 0.5)
    ctx.check("dead units stay dead (last 5 probes all over 45%)", min(dead[-5:]) > 0.45)
    ctx.check("intended lr keeps its units alive (under 20% dead)", ref_dead < 0.2)
    ctx.check("loss finite", _finite(losses))
    ctx.check(
        "loss stays over 1.2x the intended lr's (last 50 steps)",
        _mean(losses[-50:]) > 1.2 * _mean(ref_losses[-50:]),
    )


# -- 3. data outlier: one shard of strain gauges in raw microstrain ------------------------------

OUTLIER_STEP = 110


@scenario(
    family="currach_oar_stroke_gelu_classifier",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Currach oar-stroke classifier (GELU MLP on oar-loom strain, thole-pin load, stroke "
    "rate, blade depth, swell height, crew weight and hull trim, 5 stroke faults; cross-entropy "
    "with label smoothing 0.1, Adamax, clipping at 1.0). One shard written by an unconverted "
    "logger holds the oar-loom strain in raw microstrain (x500): the batch at step 110 has a "
    "loss over 10x and a gradient over 10x the usual; clipping bounds the update and the run "
    "recovers.",
)
def h588_currach_microstrain_shard(ctx):
    gen = seeded(5883)
    model = _Net(7, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 0] = 500.0 * x[:, 0]
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 7, 5, 58830),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    base_l = _median(losses[OUTLIER_STEP - 30 : OUTLIER_STEP])
    base_g = _median(norms[OUTLIER_STEP - 30 : OUTLIER_STEP])
    ctx.check("loss over 10x at the bad batch", losses[OUTLIER_STEP] > 10 * base_l)
    ctx.check("gradient over 10x at the bad batch", norms[OUTLIER_STEP] > 10 * base_g)
    ctx.check(
        "only that batch: next steps' loss under 3x", max(losses[OUTLIER_STEP + 5 :]) < 3 * base_l
    )
    ctx.check("recovers: last 20 within 1.3x of before", _mean(losses[-20:]) < 1.3 * base_l)
    ctx.check("trained before the batch", _fell(losses[:OUTLIER_STEP]))


# -- 4. sharpness above the limit: SGD lr typed 1.5 for 0.015 -------------------------------------


@scenario(
    family="cooper_hoop_driving_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Cooper hoop-driving regressor (tanh MLP on hoop diameter, stave count, driver angle, "
    "hammer blow count, oak moisture and bilge bulge, predicting the hoop's seat depth; MSE, "
    "plain SGD). The lr is typed 1.5 for 0.015: lr x the top Hessian eigenvalue is past 2 at "
    "step 0, the iterates oscillate with growing amplitude and the loss blows up.",
)
def h588_cooper_hoop_lr_typo(ctx):
    gen = seeded(5884)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr = 1.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58840)
    x0, y0 = next(batches)
    eig0 = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _train(ctx, model, opt, batches, 100, F.mse_loss)
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x top eigenvalue over 2 at step 0", lr * eig0 > 2.0)
    ctx.check(
        "loss blows up to over 20x its start", (not _finite(losses)) or max(finite) > 20 * losses[0]
    )
    ctx.check("the intended lr 0.015 is under the limit", 0.015 * eig0 < 2.0)


# -- 5. exploding gradients: IRNN recurrent weights initialised at 1.25 x identity ----------------


class _PealRNN(nn.Module):
    """An unrolled ReLU recurrent cell (IRNN) reading a change-ringing interval sequence."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _peals(gen, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g) / 2
    while True:
        x = 0.1 * torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(5.0 * (x[:, -8:] @ w).sum(1))
        yield x, y


@scenario(
    family="bellringer_change_peal_irnn_regressor",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="Bell-ringer change-peal regressor (an unrolled ReLU RNN cell, IRNN, over 30 strokes of "
    "handstroke/backstroke gap, rope sally height, bell weight and tower sway, predicting the "
    "striking error of the last change; MSE, SGD momentum 0.9). The IRNN init is written "
    "1.15 * eye instead of eye: each step through time multiplies the backward signal, the "
    "gradient at the first stroke's state is over 20x the last's, and the run blows up.",
)
def h588_bellringer_irnn_gain(ctx):
    gen = seeded(5885)
    model = _PealRNN()
    with torch.no_grad():
        model.cell.weight_hh.copy_(1.15 * torch.eye(32))
        model.cell.bias_hh.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def after(step, out, y):
        if step == 0:
            g0 = model.states[0].grad
            gl = model.states[-1].grad
            if g0 is not None and gl is not None:
                ratios.append(float(g0.norm() / gl.norm().clamp_min(1e-30)))

    losses, norms = _train(
        ctx, model, opt, _peals(gen, 32, 30, 58850), 120, F.mse_loss, after=after
    )
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check(
        "first state's gradient over 20x the last's at step 0", bool(ratios) and ratios[0] > 20
    )
    ctx.check(
        "loss blows up to over 100x its start",
        (not _finite(losses)) or max(finite) > 100 * losses[0],
    )


# -- 6. update ratio out of range: head group lr typed 3e-9 ---------------------------------------


@scenario(
    family="saddler_awl_stitch_two_group_silu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Saddler awl-stitch regressor (SiLU MLP on awl blade width, thread gauge, leather "
    "thickness, wax load, stitch pitch and clam pressure, predicting the seam's pull strength; "
    "MSE, NAdam with two param groups: body at 2e-3, head at a 'fine-tuning' rate). The head "
    "group's lr is typed 3e-9 for 3e-4: the head's update/weight ratio is about 1e-8, it never "
    "moves while the body does, and the loss falls far less than it should.",
)
def h588_saddler_head_group_typo(ctx):
    gen = seeded(5886)
    model = _Net(6, hidden=48, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.NAdam(
        [{"params": body, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 3e-9}]
    )
    head0 = model.head.weight.detach().clone()
    fc1_0 = model.fc1.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58860), 200, F.mse_loss)
    head_move = float((model.head.weight.detach() - head0).norm() / head0.norm())
    fc1_move = float((model.fc1.weight.detach() - fc1_0).norm() / fc1_0.norm())
    ctx.check("head moved under 1e-5 of its norm", head_move < 1e-5)
    ctx.check("fc1 moved over 5% of its norm", fc1_move > 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 7. gradient spike: resumed accumulation step multiplies by the count -------------------------

SPIKE_STEP = 130
ACCUM = 8


@scenario(
    family="lacemaker_bobbin_twist_bce_classifier",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Lacemaker bobbin-twist classifier (GELU MLP on bobbin weight, thread tension, pin "
    "spacing, pricking angle, twist count and pillow tilt, predicting whether a twist will "
    "slip; BCE-with-logits, SGD Nesterov, 8 micro-batch gradient accumulation, clipping at "
    "1.0). The first step after a resume runs a copy of the loop that multiplies each "
    "micro-batch loss by the accumulation count instead of dividing: the gradient at step 130 "
    "is 64x the usual while the logged loss is ordinary; clipping bounds the update.",
)
def h588_lacemaker_accum_multiply(ctx):
    gen = seeded(5887)
    model = _Net(6, hidden=32, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58870)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    for step in range(220):
        total = 0.0
        for _ in range(ACCUM):
            x = torch.randn(16, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(16, generator=gen)) > 0).float()
            ctx.targets(y)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = ACCUM if step == SPIKE_STEP else 1.0 / ACCUM
            (loss * scale).backward()
            total += float(loss.detach()) / ACCUM
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    base_g = _median(norms[SPIKE_STEP - 30 : SPIKE_STEP])
    base_l = _median(losses[SPIKE_STEP - 30 : SPIKE_STEP])
    ctx.check("gradient over 30x at the resume step", norms[SPIKE_STEP] > 30 * base_g)
    ctx.check("logged loss ordinary at the spike (under 2x)", losses[SPIKE_STEP] < 2 * base_l)
    ctx.check("trained", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 8. nonfinite: variance head without its clamp before the log --------------------------------


class _FogNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)


def _fog_nll(out, y):
    mean, var = out
    # the clamp(min=1e-4) that used to sit here was dropped in a refactor
    return 0.5 * (torch.log(var) + (y - mean) ** 2 / var).mean()


NAN_STEP = 88


@scenario(
    family="sea_smoke_fog_depth_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Sea-smoke fog-depth net (SiLU MLP on sea-surface temperature, air temperature, wind "
    "speed, fetch, humidity and pressure tendency, predicting the fog layer depth's mean and "
    "variance; Gaussian NLL, RAdam). The variance head's clamp before the log was dropped in a "
    "refactor: as the net grows confident var_head's output crosses zero for some row, "
    "log(var) is NaN and the loss is NaN at step 88.",
)
def h588_sea_smoke_unclamped_variance(ctx):
    gen = seeded(5888)
    model = _FogNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mins = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 58880, noise=0.02),
        300,
        _fog_nll,
        after=lambda s, out, y: mins.append(float(out[1].detach().min())),
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 88", first_bad == NAN_STEP)
    ctx.check("finite before", first_bad is not None and _finite(losses[:first_bad]))
    ctx.check(
        "var_head output non-positive at the NaN step",
        first_bad is not None and len(mins) > first_bad and mins[first_bad] <= 0.0,
    )
    ctx.check("var_head positive at step 0", bool(mins) and mins[0] > 0.0)


# -- 9. softmax collapse: temperature read from a percent key ------------------------------------


class _PealNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, k=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, k)
        self.temperature = temperature

    def logits(self, x):
        return self.head(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="handbell_choir_peal_temperature_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Handbell-choir peal classifier (ReLU MLP on swing arc, clapper dwell, damping glove "
    "pressure, table height and four bell weights, 6 ringing faults; cross-entropy, Adagrad). "
    "The softmax temperature 0.5 is read from a 'temperature_pct' key (0.5 percent) and "
    "divided by 100: the logits are divided by 0.005, over 40% of rows' target probability "
    "rounds to exactly 1.0 in float32, while the same logits at temperature 0.5 collapse almost "
    "none.",
)
def h588_handbell_percent_temperature(ctx):
    gen = seeded(5889)
    model = _PealNet(temperature=0.5 / 100)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 8, 6, 58890, spread=2.0)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        raw = model.logits(x)
    ctx.check("over 40% of rows collapsed at the end", collapsed_fraction(raw / 0.005, y) > 0.4)
    ctx.check(
        "same logits at temperature 0.5 collapse under 5%", collapsed_fraction(raw / 0.5, y) < 0.05
    )
    ctx.check("loss finite", _finite(losses))


# -- 10. loss divergence: calibration offset accumulated every batch -----------------------------

DRIFT_ONSET = 60


@scenario(
    family="dry_stone_cope_settle_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=DRIFT_ONSET,
    heldout=True,
    note="Dry-stone waller's cope-settle regressor (tanh MLP on cope stone weight, batter "
    "angle, hearting fill, through-stone count, frost days and footing depth, predicting the "
    "settlement of the wall top; MSE, Adam). From step 60 the laser-level calibration offset "
    "is written 'offset += reading' inside the batch loop instead of 'offset = reading': the "
    "target drifts by 0.03 per step, the model lags further each step, and the loss climbs "
    "slowly to over 3x its pre-drift level with no jump.",
)
def h588_dry_stone_offset_accumulates(ctx):
    gen = seeded(58810)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    offset = {"v": 0.0}

    def alter(step, x, y):
        if step >= DRIFT_ONSET:
            offset["v"] += 0.03
        return x, y + offset["v"]

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58811), 150, F.mse_loss, alter=alter)
    best = _mean(losses[DRIFT_ONSET - 20 : DRIFT_ONSET])
    win = [_mean(losses[i : i + 10]) for i in range(DRIFT_ONSET, len(losses) - 9, 10)]
    jumps = [b / a for a, b in zip(win, win[1:], strict=False)]
    ctx.check("trained before the drift", _fell(losses[:DRIFT_ONSET]))
    ctx.check("loss climbs to over 3x its pre-drift level", _mean(losses[-10:]) > 3 * best)
    ctx.check("no jump: no 10-step window over 2x the previous", max(jumps) < 2.0)
    ctx.check("finite", _finite(losses))


# -- control 1 (alarming-looking): triangular cyclic lr ------------------------------------------


@scenario(
    family="racing_pigeon_homing_time_cyclic_lr_regressor",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Racing-pigeon homing-time regressor (SiLU MLP on release distance, wind vector, "
    "loft bearing, bird age, cloud cover and race month; MSE, SGD momentum 0.9). Trained with "
    "a triangular CyclicLR between 0.003 and 0.03 (a 10x range) with a 50-step period: the loss "
    "and the gradient norm swing up and down with the lr every cycle, which looks alarming, "
    "but the run is healthy and ends far below its start.",
)
def h588_racing_pigeon_cyclic_lr(ctx):
    gen = seeded(58812)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.003, max_lr=0.03, step_size_up=25, mode="triangular", cycle_momentum=False
    )
    lrs = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 58813, noise=0.1),
        250,
        F.mse_loss,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
        sched=sched,
    )
    ctx.check("trained: last 10 under 0.5x the first 10", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check("lr swept a 10x range", max(lrs) / min(lrs) > 9.0)


# -- control 2: DDPM denoiser over generated 2-d data --------------------------------------------


def _time_embedding(t, dim=16, steps=100):
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half) / half)
    ang = (t.float()[:, None] / steps * 1000.0) * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], 1)


class _Denoiser(nn.Module):
    def __init__(self, hidden=64, tdim=16):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(tdim, hidden), nn.SiLU())
        self.inp = nn.Linear(2, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x, t):
        h = F.silu(self.inp(x) + self.time_mlp(_time_embedding(t)))
        h = F.silu(self.fc1(h))
        h = F.silu(self.fc2(h))
        return self.out(h)


def _feathers(gen, batch):
    """Generated rime-ice feather points: noisy branches along a spine (2-d)."""
    while True:
        s = torch.rand(batch, generator=gen) * 2 - 1
        side = torch.randint(0, 2, (batch,), generator=gen).float() * 2 - 1
        branch = torch.rand(batch, generator=gen) * 0.5
        x = s + 0.5 * branch
        y = side * branch + 0.03 * torch.randn(batch, generator=gen)
        yield torch.stack([x, y], 1) * 1.5


@scenario(
    family="rime_ice_feather_ddpm_denoiser",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rime-ice feather DDPM denoiser (SiLU MLP with a sinusoidal timestep embedding predicting "
    "the added noise; 100-step linear beta schedule 1e-4..0.02, generated 2-d feather points; "
    "MSE on the noise, Adam with 20-step linear warm-up, clipping at 1.0). An ordinary "
    "diffusion run: the noisy per-batch loss (random timesteps) falls and stays finite.",
)
def h588_rime_feather_ddpm(ctx):
    gen = seeded(58814)
    model = _Denoiser()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    betas = torch.linspace(1e-4, 0.02, 100)
    abar = torch.cumprod(1 - betas, 0)
    ctx.attach(model, opt)
    data = _feathers(gen, 128)
    losses = []
    for _ in range(300):
        x0 = next(data)
        t = torch.randint(0, 100, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(xt, t), eps)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "trained: last 30 under 0.7x the first 10", _mean(losses[-30:]) < 0.7 * _mean(losses[:10])
    )
    ctx.check("finite", _finite(losses))


# -- control 3: Huber regressor with RMSprop, OneCycleLR, clipping, accumulation -----------------


@scenario(
    family="farrier_clinch_angle_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Farrier clinch-angle regressor (GELU MLP on nail gauge, hoof wall thickness, hoof "
    "moisture, shoe weight, hammer blows and horse weight, predicting the clinch angle; Huber "
    "loss, RMSprop with OneCycleLR, 2 micro-batch accumulation, clipping at 1.0, heavy-tailed "
    "Student-t noise on the targets). An ordinary run: the loss falls and stays finite.",
)
def h588_farrier_clinch_onecycle(ctx):
    gen = seeded(58815)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=steps, cycle_momentum=False
    )
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 58816, noise=0.0)
    t_noise = torch.distributions.StudentT(torch.tensor(2.0))
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            y = y + 0.1 * t_noise.sample((y.shape[0],))
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: last 10 under 0.5x the first 10", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
