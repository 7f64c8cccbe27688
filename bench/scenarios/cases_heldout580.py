"""Held-out set 580 (``h580_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sheep-shearing handpiece comb-heat GELU regressor fed comb temperature in raw
millikelvin under fp16 autocast (amp_overflow, AdamW); lambeg drum head-tension tanh regressor
with the SGD lr typed 3.0 for 0.03 (sharpness_above_limit, plain SGD); slate-roof hanging-peg
12-deep tanh MLP initialised with xavier gain 5.3 for 5/3 (exploding_gradients, SGD momentum);
hurdle-maker cleft-ash SiLU regressor whose fc2 group lr is typed 1e-9 (update_ratio_out_of_range,
Adamax, param groups); clog-dancing tap-pattern GELU classifier fed one shard of raw microphone
counts (data_outlier, NAdam); bee-bole swarm-risk BCE classifier whose resumed accumulation step
multiplies by the sample count instead of dividing by the micro-batch count (gradient_spike, SGD
Nesterov); kvass crust-ferment Gaussian NLL net taking the log of a zero pressure excess
(nonfinite, RAdam); skeleton-sled push-split GELU regressor resumed without its Adam state
(loss_spike, Adam); mridangam stroke ReLU classifier with its temperature typed 1e-3
(softmax_collapse, Adagrad); neon-sign tube-bend ReLU classifier with RMSprop lr typed 1e-1 for
1e-3 (loss_of_plasticity, RMSprop).
Controls: didgeridoo drone WaveNet language model (dilated causal convolutions, per-sequence
NLL, sequence length doubled every 60 steps, the loss steps up at each doubling:
alarming-looking, AdamW, warm-up, clipping); perry-pear ripeness ReLU classifier (SGD momentum,
OneCycleLR, label smoothing, clipping, noisy batches); sprite-lightning duration Huber regressor
(Adadelta, ReduceLROnPlateau, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math
from collections import defaultdict

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
    clip=None,
    sched=None,
    plateau=None,
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
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        if after is not None:
            after(step, out.detach(), y)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=20):
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


# -- 1. amp overflow: comb temperature in raw millikelvin under fp16 autocast ---------------------

AMP_ONSET = 70


@scenario(
    family="shearing_handpiece_comb_heat_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Sheep-shearing handpiece comb-heat regressor (GELU MLP on comb temperature, cutter "
    "speed, fleece density, lanolin content, stroke length and blade wear, predicting the "
    "minutes before the comb must be changed; MSE, AdamW, fp16 autocast + GradScaler). From "
    "step 70 a new thermocouple logger writes the comb temperature in raw millikelvin (about "
    "3.1e5) instead of the standardised column: fc1 runs in fp16 under autocast, whose range "
    "ends at 65504, its output is non-finite (the same batch is finite in float32) and the "
    "loss is non-finite at step 70.",
)
def h580_shearing_comb_millikelvin(ctx):
    gen = seeded(5801)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58010)
    losses, fc1_bad, bad_x, bad_y = [], [], None, None
    for step in range(120):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 3.1e5 + 5.0e3 * x[:, 0]
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
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[-1])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. sharpness above limit: SGD lr typed 3.0 for 0.03 -----------------------------------------


@scenario(
    family="lambeg_drum_head_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Lambeg drum head-tension regressor (tanh MLP on goatskin thickness, hoop diameter, "
    "rope tension, humidity, cane-stick weight and shell depth, predicting the pitch offset; "
    "MSE, plain SGD). The config's lr is typed 3.0 for 0.03: lr x (top Hessian eigenvalue) is "
    "past 2 from the first step (the intended lr is well under it) and the loss blows up.",
)
def h580_lambeg_lr_typo(ctx):
    gen = seeded(5802)
    model = _Net(6, hidden=32, act=nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58020)
    probe = next(batches)
    eig0 = _top_eig(model, F.mse_loss, *probe)
    losses, _ = _train(ctx, model, opt, batches, 80, F.mse_loss)
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness past 2 at step 0", lr * eig0 > 2.0)
    ctx.check("intended lr 0.03 x sharpness under 2", 0.03 * eig0 < 2.0)
    ctx.check("loss blows up (non-finite or over 20x its best)", bool(blown))


# -- 3. exploding gradients: xavier gain typed 5.3 for 5/3 ----------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="slate_roof_hanging_peg_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Slate-roof hanging-peg pull-out regressor (12-deep tanh MLP on slate weight, peg "
    "diameter, oak moisture, batten pitch, headlap and wind load, predicting the pull-out "
    "load; MSE, SGD momentum 0.9). The init calls xavier_normal_ with gain 5.3 where tanh's "
    "5/3 was meant: the net sits in the chaotic regime and the backward signal grows from the "
    "head down to layers.0 (over 20x larger there than at the last hidden layer).",
)
def h580_slate_peg_xavier_gain(ctx):
    gen = seeded(5803)
    model = _DeepTanh(6, 64, 12, gain=5.3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sig = defaultdict(list)

    def watch(i):
        def hook(m, inp, out):
            out.register_hook(lambda g: sig[i].append(float(g.norm())))

        return hook

    for i in (0, 11):
        model.layers[i].register_forward_hook(watch(i))
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58030), 100, F.mse_loss)
    ratios = [a / max(b, 1e-12) for a, b in zip(sig[0], sig[11], strict=False)]
    ctx.check("backward signal at layers.0 over 20x the last layer's at step 0", ratios[0] > 20)
    ctx.check("still over 10x at the end", _median(ratios[-10:]) > 10)
    ctx.check("finite throughout", _finite(losses))


# -- 4. update ratio: fc2 group lr typed 1e-9 ----------------------------------------------------


@scenario(
    family="hurdle_maker_cleft_ash_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Hurdle-maker cleft-ash regressor (SiLU MLP on rod diameter, cleft angle, ash "
    "moisture, sail count, weave spacing and twist, predicting the hurdle's bending "
    "stiffness; MSE, Adamax with per-layer param groups). The fc2 group's lr is typed 1e-9 "
    "for 1e-3: fc2's updates are about 1e-9 of its weights, it never moves, and the others "
    "learn around it.",
)
def h580_hurdle_fc2_group_lr(ctx):
    gen = seeded(5804)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 58040), 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    fc2_move = float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm())
    ctx.check("fc2 moved less than 1e-5 of its norm", fc2_move < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", fc1_move > 1e-2)
    ctx.check("loss fell, finite", _fell(losses))


# -- 5. data outlier: one shard of raw microphone counts -----------------------------------------

OUTLIER_STEP = 120


@scenario(
    family="clog_dancing_tap_pattern_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Clog-dancing tap-pattern classifier (GELU MLP on 12 standardised heel/toe onset "
    "features, 6 step patterns; cross-entropy, NAdam, clipping at 1.0). The shard served at "
    "step 120 was exported before normalisation: raw 16-bit microphone counts (about 1e3 x "
    "the features). The loss jumps over 20x, the gradient over 10x, clipping bounds the "
    "update and the run recovers.",
)
def h580_clog_raw_mic_shard(ctx):
    gen = seeded(5805)
    model = _Net(12, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            return 900.0 * x + 1200.0, y
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 6, 58050),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    s = OUTLIER_STEP
    before = _median(losses[s - 20 : s])
    ctx.check("loss over 20x at the shard", losses[s] > 20 * before)
    ctx.check("gradient over 10x at the shard", norms[s] > 10 * _median(norms[s - 20 : s]))
    ctx.check("recovers within 60 steps", _mean(losses[-10:]) < 2 * before)
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: resumed accumulation step multiplies instead of dividing ------------------

SPIKE_STEP = 130


@scenario(
    family="bee_bole_swarm_risk_bce_classifier",
    optimizer="SGD(nesterov=True, momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Bee-bole swarm-risk classifier (GELU MLP on 10 hive readings: colony weight, queen "
    "cell count, brood temperature, forager traffic, ...; BCE with logits, SGD Nesterov, "
    "4 micro-batches accumulated per step, clipping at 5.0). The resume code path at step 130 "
    "multiplies each micro-batch loss by the 256 samples of the step instead of dividing by "
    "the 4 micro-batches: that step's gradient is over 50x the usual while the logged loss is "
    "ordinary; the data are fine.",
)
def h580_bee_bole_accum_scale(ctx):
    gen = seeded(5806)
    model = _Net(10, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(58060)
    w = torch.randn(10, generator=g)
    losses, norms = [], []
    for step in range(200):
        logged = 0.0
        for _ in range(4):
            x = torch.randn(64, 10, generator=gen)
            y = ((x @ w + 0.5 * torch.randn(64, generator=gen)) > 0).float()
            ctx.targets(y)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = 256.0 if step == SPIKE_STEP else 0.25
            (loss * scale).backward()
            logged += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    s = SPIKE_STEP
    ctx.check("gradient over 50x at the step", norms[s] > 50 * _median(norms[s - 20 : s]))
    ctx.check("logged loss ordinary there", losses[s] < 1.5 * _median(losses[s - 20 : s]))
    ctx.check("loss fell, finite", _fell(losses))


# -- 7. nonfinite: log of a zero pressure excess --------------------------------------------------

NAN_STEP = 90


class _LogPressure(nn.Module):
    """log of the pressure excess over ambient (column 0), the other columns passed through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _KvassNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_feat = _LogPressure()
        self.fc1 = nn.Linear(6, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(48, 1)
        self.logvar_head = nn.Linear(48, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.log_feat(x)))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], 1)


def _gauss_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1].clamp(-8, 8)
    return 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()


@scenario(
    family="kvass_crust_ferment_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_feat",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Kvass rye-crust ferment regressor (SiLU MLP with mean and log-variance heads, "
    "Gaussian NLL, RAdam) predicting hours to carbonation from the jar's pressure excess over "
    "ambient, wort temperature, sugar, crust roast, yeast pitch and jar volume. The model's "
    "log_feat module takes log(pressure excess) with no clamp; at step 90 a jar whose valve "
    "was open reads exactly ambient, log(0) = -inf in log_feat, the loss is NaN at step 90.",
)
def h580_kvass_log_zero(ctx):
    gen = seeded(5807)
    model = _KvassNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = []
    model.log_feat.register_forward_hook(
        lambda m, i, o: bad.append(bool((~torch.isfinite(o)).any()))
    )

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            p = torch.exp(0.5 * x[:, 0])  # pressure excess in bar, positive
            y = 1.5 - 0.8 * torch.log(p) + 0.5 * torch.tanh(x[:, 1:] @ torch.ones(5) / 2)
            y = y + 0.1 * torch.randn(64, generator=gen)
            x = torch.cat([p[:, None], x[:, 1:]], 1)
            yield x, y

    def alter(step, x, y):
        if step == NAN_STEP:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, batches(), 150, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained finitely before", _finite(losses[:NAN_STEP]) and _fell(losses[:NAN_STEP]))
    ctx.check("log_feat output finite before", not any(bad[:NAN_STEP]))
    ctx.check("log_feat output non-finite at the step", len(bad) > NAN_STEP and bad[NAN_STEP])
    ctx.check("loss first non-finite at the step", first_bad == NAN_STEP)


# -- 8. loss spike: resumed without the Adam state -----------------------------------------------

RESUME_STEP = 150


@scenario(
    family="skeleton_sled_push_split_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=RESUME_STEP,
    heldout=True,
    note="Skeleton-sled push-start split regressor (GELU MLP on sprint speed, ice temperature, "
    "runner profile, athlete mass, track gradient and spike length, predicting the 50 m split; "
    "MSE, Adam). At step 150 the job is resumed from a checkpoint whose optimizer state was "
    "not saved: Adam restarts with empty moments, its first updates are lr x sign(grad) on "
    "every weight, the loss jumps over 3x for a few steps and then recovers.",
)
def h580_skeleton_resume_fresh_adam(ctx):
    gen = seeded(5808)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step):
        if step == RESUME_STEP:
            opt.state = defaultdict(dict)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58080, noise=0.02), 250, F.mse_loss, before=before
    )
    s = RESUME_STEP
    base = _mean(losses[s - 10 : s])
    peak = max(losses[s : s + 8])
    ctx.check("loss over 3x within a few steps of the resume", peak > 3 * base)
    ctx.check("recovers to under 1.5x within 60 steps", _mean(losses[s + 50 : s + 60]) < 1.5 * base)
    ctx.check("gradient not bursting at the resume", norms[s] < 5 * _median(norms[s - 20 : s]))
    ctx.check("finite throughout", _finite(losses))


# -- 9. softmax collapse: temperature typed 1e-3 --------------------------------------------------


class _TempNet(_Net):
    def __init__(self, temperature, **kw):
        super().__init__(**kw)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="mridangam_stroke_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Mridangam stroke classifier (ReLU MLP on 16 spectral features of a stroke, 8 strokes "
    "such as tha, dhi, thom, nam; cross-entropy, Adagrad). The softmax temperature is read "
    "from a config written in milliseconds as 1e-3 where 1.0 was meant: logits / 0.001 "
    "saturate, over 40% of rows' float32 target probability is exactly 1.0.",
)
def h580_mridangam_temperature(ctx):
    gen = seeded(5809)
    model = _TempNet(1e-3, d_in=16, hidden=48, out=8)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    last = {}
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 8, 58090),
        150,
        F.cross_entropy,
        classifier=True,
        after=lambda s, out, y: last.__setitem__("c", collapsed_fraction(out, y)),
    )
    ctx.check("over 40% rows collapsed at the end", last["c"] > 0.4)
    ctx.check("finite logged loss", _finite(losses))


# -- 10. loss of plasticity: RMSprop lr typed 1e-1 -------------------------------------------------


@scenario(
    family="neon_sign_tube_bend_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Neon-sign tube-bend classifier (ReLU MLP on 12 readings of a bend: ribbon-burner "
    "heat, glass wall, bend radius, blow-hose pressure, ...; 5 bend grades; cross-entropy, "
    "RMSprop). The lr is typed 1e-1 for 1e-3: the first updates push fc2's pre-activations "
    "negative, over 40% of act2's units are dead at the end (over 35% at every one of the "
    "last 50 steps); the loss stays finite.",
)
def h580_neon_rmsprop_lr(ctx):
    gen = seeded(5836)
    model = _Net(12, hidden=64, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    dead = []
    model.act2.register_forward_hook(
        lambda m, i, o: dead.append(float((o <= 0).all(0).float().mean()))
    )
    losses, _ = _train(
        ctx, model, opt, _classes(gen, 64, 12, 5, 58100), 150, F.cross_entropy, classifier=True
    )
    ctx.check("under 10% of act2 dead at step 0", dead[0] < 0.1)
    ctx.check("over 40% of act2 dead at the end", _mean(dead[-10:]) > 0.4)
    ctx.check("stays dead: over 35% every one of the last 50 steps", min(dead[-50:]) > 0.35)
    ctx.check("no blow-up: finite", _finite(losses))


# -- 11. control (alarming): WaveNet LM with a sequence-length curriculum -------------------------


class _WaveNet(nn.Module):
    """Gated dilated causal 1-d convolutions with residual and skip paths."""

    def __init__(self, vocab=48, ch=32, dilations=(1, 2, 4, 8, 16)):
        super().__init__()
        self.embed = nn.Embedding(vocab, ch)
        self.dilations = dilations
        self.filters = nn.ModuleList(nn.Conv1d(ch, ch, 2, dilation=d) for d in dilations)
        self.gates = nn.ModuleList(nn.Conv1d(ch, ch, 2, dilation=d) for d in dilations)
        self.res = nn.ModuleList(nn.Conv1d(ch, ch, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(ch, ch, 1) for _ in dilations)
        self.out1 = nn.Conv1d(ch, ch, 1)
        self.out2 = nn.Conv1d(ch, vocab, 1)

    def forward(self, idx):
        x = self.embed(idx).transpose(1, 2)
        skips = 0
        for d, f, g, r, s in zip(
            self.dilations, self.filters, self.gates, self.res, self.skip, strict=True
        ):
            h = F.pad(x, (d, 0))
            z = torch.tanh(f(h)) * torch.sigmoid(g(h))
            x = x + r(z)
            skips = skips + s(z)
        return self.out2(F.relu(self.out1(F.relu(skips)))).transpose(1, 2)


def _drone_batches(gen, batch, vocab=48):
    """Generated didgeridoo drone token streams: a periodic drone with overtone bursts."""
    while True:
        length = yield
        period = torch.randint(3, 7, (batch, 1), generator=gen)
        t = torch.arange(length + 1)[None]
        base = (t % period) * 4 + torch.randint(0, 8, (batch, 1), generator=gen)
        burst = torch.rand(batch, length + 1, generator=gen) < 0.15
        noise = torch.randint(0, vocab, (batch, length + 1), generator=gen)
        seq = torch.where(burst, noise, base % vocab)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="didgeridoo_drone_wavenet_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Didgeridoo drone WaveNet language model (embedding, five gated dilated causal "
    "convolutions with dilations 1..16, residual and skip paths; per-sequence NLL summed over "
    "the tokens, AdamW with a 20-step warm-up, clipping at 1.0). A sequence-length curriculum "
    "doubles the length every 60 steps (16, 32, 64, 128): the summed per-sequence loss steps "
    "up about 2x at each doubling, which looks alarming, while the per-token loss keeps "
    "falling. Healthy.",
)
def h580_didgeridoo_wavenet_curriculum(ctx):
    gen = seeded(5811)
    model = _WaveNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    stream = _drone_batches(gen, 16)
    losses, per_token = [], []
    for step in range(240):
        length = 16 * 2 ** (step // 60)
        next(stream)
        x, y = stream.send(length)
        logits = model(x)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        loss = nll.reshape(x.shape).sum(1).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        per_token.append(float(nll.mean().detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    steps_up = [_mean(losses[s : s + 5]) / _mean(losses[s - 5 : s]) for s in (60, 120, 180)]
    ctx.check("loss steps up over 1.3x at each doubling", min(steps_up) > 1.3)
    ctx.check("per-token loss fell", _fell(per_token, ratio=0.8))
    ctx.check("loss fell within the last length", _mean(losses[-5:]) < _mean(losses[180:185]))
    ctx.check("finite throughout", _finite(losses))


# -- 12. control: perry-pear ripeness, SGD momentum + OneCycleLR ---------------------------------


@scenario(
    family="perry_pear_ripeness_relu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Perry-pear ripeness classifier (ReLU MLP on 10 readings: starch-iodine score, "
    "firmness, Brix, skin colour, ...; 4 ripeness stages; cross-entropy with label smoothing "
    "0.1, SGD momentum 0.9, OneCycleLR, clipping at 2.0, noisy batches). Healthy.",
)
def h580_perry_pear_onecycle(ctx):
    gen = seeded(5812)
    model = _Net(10, hidden=48, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 4, 58120, spread=1.0, noise=1.2),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell, finite", _fell(losses))


# -- 13. control: sprite-lightning duration, Adadelta + ReduceLROnPlateau -------------------------


@scenario(
    family="sprite_lightning_duration_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sprite-lightning duration regressor (tanh MLP on parent-stroke charge moment, cloud-"
    "top height, ionospheric density, latitude, season and ELF amplitude; Huber loss, "
    "Adadelta, ReduceLROnPlateau, heavy-tailed noisy targets from mis-timed camera frames). "
    "Healthy.",
)
def h580_sprite_adadelta_plateau(ctx):
    gen = seeded(5813)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 6, 58130)

    def batches():
        while True:
            x, y = next(base)
            tail = torch.distributions.StudentT(2.0).sample((64,)) * 0.2
            yield x, y + tail

    losses, _ = _train(ctx, model, opt, batches(), 250, F.huber_loss, plateau=plateau)
    ctx.check("loss fell, finite", _fell(losses, ratio=0.8))
