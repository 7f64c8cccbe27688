"""Held-out set 484 (``h484_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a basalt-column joint-spacing tanh regressor whose warm-up peak lr is typed 100x too high
(SGD, the lr passes 2/sharpness), a loom-shuttle weft-fault classifier with a learnt logit scale
whose clamp was dropped (RAdam, head logits grow), a fiddle-bow rosin-grip ReLU regressor whose
warm-restart scheduler restarts at 100x the lr for a few steps (dead ReLUs, SGD momentum), a
bocce jack-roll Huber regressor whose curriculum loss weight is read in raw units for one step
(Adam's second moment poisoned), a sandstorm dust-front deep tanh MLP initialised with an
orthogonal gain of 4 (gradients grow through depth, SGD), a swell-buoy wave-height net taking
sqrt of a noise-floor-subtracted spectral moment with no clamp (ASGD, NaN), a peat-bog
water-table regressor fed one batch carrying the -9999 missing-value sentinel (SGD momentum,
clipped), a cricket seam-swing classifier whose backbone group lr is read from a missing config
key (lr 0, Adagrad), a canal-lock fill-time regressor whose last micro-batch uses a summed loss
once (SGD Nesterov, gradient accumulation) and a beehive weight regressor whose scale's tare
drifts (NAdam, a slow climb).

Controls: a Morse-key paired-signal dual encoder (two encoders, symmetric InfoNCE at a fixed
temperature 0.07, hard-negative mining switched on at step 120, AdamW, warm-up + cosine,
clipping); a kiln-shelf glaze-crawl classifier under fp16 autocast with a GradScaler (Adamax,
ReduceLROnPlateau); a change-ringing bell Conv1d classifier (SGD momentum, OneCycleLR, label
smoothing, gradient accumulation, noisy labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    scaler=None,
    amp=False,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            if scaler is not None:
                scaler.scale(total / accumulate).backward()
            else:
                (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
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


def _sharpness(model, loss_fn, x, y, iters=12):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v)) + 1e-12
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- 1. sharpness above limit: warm-up peak lr typed 100x too high --------------------------------


@scenario(
    family="basalt_column_joint_spacing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=95,
    note="Basalt-column joint-spacing regressor (tanh MLP on lava cooling-rate, thickness and "
    "composition features, MSE, plain SGD). The warm-up scheduler ramps geometrically to a peak "
    "lr typed 3.0 instead of 0.03; as the ramp passes 2/sharpness of the loss the iterates "
    "oscillate across the valley and the loss blows up.",
)
def h484_basalt_warmup_peak_typo(ctx) -> None:
    gen = seeded(4841)
    model = _Net(8, 32, 1, act=nn.Tanh)
    lr0, peak, ramp_steps = 0.01, 3.0, 150
    opt = torch.optim.SGD(model.parameters(), lr=lr0)
    data = _readings(gen, 128, 8, 4841)
    probe_x, probe_y = next(data)
    crossed = {}

    def before(step):
        lr = lr0 * math.exp(min(step / ramp_steps, 1.0) * math.log(peak / lr0))
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and "step" not in crossed:
            lam = _sharpness(model, F.mse_loss, probe_x, probe_y)
            if step == 0:
                crossed["lam0"] = lam
            if lr * lam > 2.0:
                crossed["step"] = step
                crossed["lam"] = lam

    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, before=before)
    cross = crossed.get("step", 10**9)
    print(f"   [basalt] 2/sharpness crossed at step {cross} {crossed}")
    best = min(losses[:cross]) if cross < len(losses) else min(losses)
    after = [v if math.isfinite(v) else 1e30 for v in losses[cross:]]
    ctx.check("stable at the start (lr * sharpness under 2)", lr0 * crossed["lam0"] < 2.0)
    ctx.check("trained before the crossing (loss under 0.7x the start)", best < 0.7 * losses[0])
    ctx.check("the ramp passed 2/sharpness within the run", cross < len(losses))
    ctx.check(
        "after the crossing the loss blew up over 10x its best", max(after, default=0) > 10 * best
    )


# -- 2. output logit divergence: a learnt logit scale with its clamp dropped ----------------------


class _ScaledHead(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.proj = nn.Linear(d_in, classes, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        # the clamp of log_scale at log(100) was lost in a refactor
        w = F.normalize(self.proj.weight, dim=-1)
        return self.log_scale.exp() * (F.normalize(x, dim=-1) @ w.T)


class _WeftNet(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = _ScaledHead(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="loom_shuttle_weft_fault_scaled_head_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Loom-shuttle weft-fault classifier (GELU MLP on shuttle-timing and tension features, "
    "cross-entropy, RAdam). The head multiplies normalised features by a learnt exp(log_scale) "
    "whose clamp at log(100) was dropped in a refactor: on separable weft faults the "
    "cross-entropy keeps pushing the scale up and the head's logits grow without bound.",
)
def h484_loom_shuttle_scale_unclamped(ctx) -> None:
    gen = seeded(4842)
    model = _WeftNet(12, 48, 5)
    opt = torch.optim.RAdam(model.parameters(), lr=0.15)
    data = _grades(gen, 64, 12, 5, 4842, spread=0.25)
    probe = next(data)[0]
    with torch.no_grad():
        first = float(model(probe).abs().max())
    losses, _ = _loop(ctx, model, opt, data, 250, F.cross_entropy, classifier=True)
    with torch.no_grad():
        last = float(model(probe).abs().max())
    scale = float(model.head.log_scale.detach().exp())
    print(f"   [loom] max|logit| {first:.3g} -> {last:.3g}, scale {scale:.3g}")
    ctx.check("max |logit| grew over 15x", last > 15 * first)
    ctx.check("the logit scale grew over 5x its init of 1", scale > 5)
    ctx.check("the loss fell (the growth is not a failure to fit)", _fell(losses, ratio=0.5))


# -- 3. loss of plasticity: warm restarts at 100x the lr --------------------------------------------


@scenario(
    family="fiddle_bow_rosin_grip_relu_regressor",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=100,
    note="Fiddle-bow rosin-grip regressor (ReLU MLP on bow pressure, speed and rosin-age "
    "features, MSE, SGD momentum 0.9). A hand-written warm-restart scheduler restarts at step "
    "100 with eta_max typed 1.0 for 0.02 for its first five steps; the large steps drive the "
    "second layer's pre-activations negative, its ReLUs die and the regressor stops learning.",
)
def h484_fiddle_bow_restart_dead_relu(ctx) -> None:
    gen = seeded(4843)
    model = _Net(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    data = _readings(gen, 64, 10, 4843)
    probe = next(data)[0]

    def before(step):
        lr = 1.0 if 100 <= step < 105 else 0.02
        for g in opt.param_groups:
            g["lr"] = lr

    with torch.no_grad():
        dead0 = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))
    losses, _ = _loop(ctx, model, opt, data, 250, F.mse_loss, before=before)
    with torch.no_grad():
        dead1 = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))
    print(f"   [fiddle] dead fraction of act2 {dead0:.2f} -> {dead1:.2f}")
    ctx.check("trained before the restart", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check("over half of act2's units died", dead1 > 0.5 and dead0 < 0.2)
    ctx.check(
        "no full recovery: the last 50 steps stay over 1.3x the pre-restart loss",
        _mean(losses[-50:]) > 1.3 * _mean(losses[90:100]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 4. adam second moment poisoned: a loss weight read in raw units for one step ----------------


@scenario(
    family="bocce_jack_roll_distance_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="Bocce jack-roll distance regressor (SiLU MLP on throw speed, spin and lawn features, "
    "Huber loss, Adam beta2 0.999). When curriculum stage 2 starts at step 80 its loss weight, "
    "meant 1.0, is read for that one step from a table kept in raw units (1e5): one giant "
    "gradient fills Adam's second moment and the updates stall for the rest of the run.",
)
def h484_bocce_curriculum_weight(ctx) -> None:
    def run(attach):
        gen = seeded(4844)
        model = _Net(10, 48, 1, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bug = attach
        moves = []
        snap = {}

        def before(step):
            snap["w"] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            moves.append(
                math.sqrt(
                    sum(
                        float((p.detach() - w).norm() ** 2)
                        for p, w in zip(model.parameters(), snap["w"], strict=True)
                    )
                )
            )

        def backprop(step, loss):
            return loss * 1e5 if bug and step == 80 else loss

        losses, norms = _loop(
            ctx,
            model,
            opt,
            _readings(gen, 64, 10, 4844),
            240,
            F.huber_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        return losses, norms, moves

    ref, _, ref_moves = run(False)
    losses, norms, moves = run(True)
    print(
        f"   [bocce] grad at 80 {norms[80]:.3g} vs median {_median(norms[:80]):.3g}; "
        f"moves {_mean(moves[40:80]):.3g} -> {_mean(moves[90:200]):.3g}; "
        f"end loss {_mean(losses[-20:]):.3g} vs ref {_mean(ref[-20:]):.3g}"
    )
    ctx.check(
        "gradient at step 80 over 1e3x the median before", norms[80] > 1e3 * _median(norms[:80])
    )
    ctx.check(
        "updates after the spike under 0.1x those before",
        _mean(moves[90:200]) < 0.1 * _mean(moves[40:80]),
    )
    ctx.check(
        "the loss stalls: end loss over 1.5x the run without the bug",
        _mean(losses[-20:]) > 1.5 * _mean(ref[-20:]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 5. exploding gradients: a deep tanh stack initialised with gain 2.5 --------------------------


class _DustStack(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


@scenario(
    family="sandstorm_dust_front_depth_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="Sandstorm dust-front depth regressor (16-layer tanh MLP on wind, humidity and "
    "soil-moisture features, MSE, plain SGD). The init helper passes gain=4.0, meant for "
    "another config, to orthogonal_ on every layer: the stack sits in the chaotic regime and "
    "the gradient grows layer by layer towards the input, the first layer's gradient hundreds "
    "of times the last one's.",
)
def h484_sandstorm_init_gain(ctx) -> None:
    gen = seeded(4845)
    model = _DustStack(8, 32, 16, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios = []
    data = _readings(gen, 64, 8, 4845)
    x, y = next(data)
    F.mse_loss(model(x), y).backward()
    first = float(model.net[0].weight.grad.norm())
    last = float(model.net[30].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    ratios.append(first / max(last, 1e-12))
    losses, norms = _loop(ctx, model, opt, data, 150, F.mse_loss)
    print(
        f"   [sandstorm] first/last layer grad {ratios[0]:.3g}; grad norms {norms[0]:.3g} -> {max(norms):.3g}"
    )
    ctx.check("first layer's gradient over 100x the last layer's", ratios[0] > 100)
    ctx.check("gradient norm over 10 at some step", max(v for v in norms if math.isfinite(v)) > 10)


# -- 6. nonfinite: sqrt of a noise-floor-subtracted moment with no clamp --------------------------


class _Spectral(nn.Module):
    def __init__(self, floor):
        super().__init__()
        self.floor = floor
        self.last_min_m0 = 0.0

    def forward(self, spec):
        m0 = spec.sum(-1, keepdim=True) - self.floor  # the clamp(min=0) is missing
        self.last_min_m0 = float(m0.min())
        hs = 4.0 * torch.sqrt(m0)
        return torch.cat([spec, hs], -1)


class _SwellNet(nn.Module):
    def __init__(self, bins, hidden):
        super().__init__()
        self.spectral = _Spectral(floor=0.5)
        self.fc1 = nn.Linear(bins + 1, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.spectral(x)))).squeeze(-1)


@scenario(
    family="swell_buoy_wave_height_sqrt_spectrum_net",
    optimizer="ASGD",
    cause="nonfinite",
    where=("spectral",),
    diverges=70,
    heldout=True,
    onset=70,
    note="Swell-buoy wave-height net (a spectral layer adds Hs = 4 sqrt(m0) to 16 energy bins, "
    "tanh MLP, MSE, ASGD). m0 is the bin sum minus the sensor's noise floor, with no clamp at "
    "0; the first calm-sea batch (step 70), whose energy is below the floor, takes sqrt of a "
    "negative and the loss is NaN.",
)
def h484_swell_buoy_sqrt_negative(ctx) -> None:
    gen = seeded(4846)
    model = _SwellNet(16, 32)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(4846)
    shape = torch.softmax(torch.randn(16, generator=g), 0)

    def batches():
        step = 0
        while True:
            energy = 0.8 + 2.0 * torch.rand(64, 1, generator=gen)
            if step == 70:
                energy[:8] = 0.05 + 0.3 * torch.rand(8, 1, generator=gen)
            spec = energy * shape * (1 + 0.1 * torch.randn(64, 16, generator=gen)).abs()
            yield spec, torch.sqrt(energy.squeeze(-1)) + 0.02 * torch.randn(64, generator=gen)
            step += 1

    mins = []

    def after(step):
        mins.append(model.spectral.last_min_m0)

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss, after=after)
    ctx.check("finite until step 70", _finite(losses[:70]))
    ctx.check("the loss is NaN at step 70", len(losses) > 70 and math.isnan(losses[70]))
    ctx.check("m0 went negative at step 70", len(mins) > 70 and mins[70] < 0 and min(mins[:70]) > 0)


# -- 7. data outlier: one batch carrying the -9999 missing-value sentinel --------------------------


@scenario(
    family="peat_bog_water_table_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Peat-bog water-table regressor (ReLU MLP on rainfall, evaporation and sphagnum-cover "
    "features, MSE, SGD momentum, gradient clipping at 5). One logger shard at step 120 was "
    "exported with the -9999 missing-value sentinel left in four readings.",
)
def h484_peat_bog_sentinel_shard(ctx) -> None:
    gen = seeded(4847)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:4, 3] = -9999.0
        seen[step] = float(x.abs().max())
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4847), 220, F.mse_loss, alter=alter, clip=5.0
    )
    ctx.check(
        "the batch at 120 holds readings over 1000x typical",
        seen[120] > 1000 * _median([seen[i] for i in range(100, 120)]),
    )
    ctx.check("loss at 120 over 20x the median before", losses[120] > 20 * _median(losses[100:120]))
    ctx.check(
        "gradient at 120 over 20x the median before", norms[120] > 20 * _median(norms[100:120])
    )
    ctx.check("no NaN", _finite(losses))


# -- 8. update ratio: backbone lr read from a missing config key ----------------------------------


@scenario(
    family="cricket_bowling_seam_swing_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Cricket seam-swing classifier (ReLU MLP on seam angle, wrist and humidity features, "
    "four swing classes, cross-entropy, Adagrad with two param groups). The backbone group's lr "
    "is read with cfg.get('lr_backbone', 0.0) and the key is spelt 'backbone_lr' in the config: "
    "fc1 trains at lr 0 and never moves while the rest learns on its random features.",
)
def h484_cricket_backbone_lr_key(ctx) -> None:
    gen = seeded(4848)
    model = _Net(12, 48, 4)
    cfg = {"backbone_lr": 0.05, "head_lr": 0.05}
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": cfg.get("lr_backbone", 0.0)},
            {
                "params": list(model.fc2.parameters()) + list(model.head.parameters()),
                "lr": cfg["head_lr"],
            },
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 4, 4848, 1.2), 200, F.cross_entropy, classifier=True
    )
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    dh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("the head moved over 10% of its norm", dh > 0.1)
    ctx.check("the loss still fell", _fell(losses))


# -- 9. gradient spike: a summed loss on one last micro-batch ------------------------------------


@scenario(
    family="canal_lock_fill_time_relu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="Canal-lock fill-time regressor (ReLU MLP on chamber size, head difference and sluice "
    "openings, MSE, SGD Nesterov, 4 micro-batches accumulated). The code path for the last "
    "micro-batch of an epoch (hit once, at step 90) builds the loss with reduction='sum' "
    "instead of 'mean': one gradient 64x too large from an ordinary batch.",
)
def h484_canal_lock_sum_reduction(ctx) -> None:
    gen = seeded(4849)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 64 if step == 90 else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4849),
        180,
        F.mse_loss,
        backprop=backprop,
        accumulate=4,
    )
    ctx.check("gradient at 90 over 20x the median before", norms[90] > 20 * _median(norms[70:90]))
    ctx.check(
        "the batch itself was ordinary (loss under 3x the median)",
        losses[90] < 3 * _median(losses[70:90]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 10. loss divergence: the hive scale's tare drifts --------------------------------------------


@scenario(
    family="beehive_scale_honey_flow_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Beehive honey-flow regressor (tanh MLP on forage, temperature and colony features, "
    "MSE, NAdam). Each recalibration of the hive scale multiplies the tare gain instead of "
    "resetting it, so the targets drift upward by 1.5% a step and the loss climbs slowly.",
)
def h484_beehive_tare_drift(ctx) -> None:
    gen = seeded(4850)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 10, 4850)
    gain = {"g": 1.0}

    def alter(step, x, y):
        if step >= 60:
            gain["g"] *= 1.015
        return x, y * gain["g"]

    losses, _ = _loop(ctx, model, opt, data, 250, F.mse_loss, alter=alter)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 60, 5))
    ctx.check("trained first", best < 0.7 * _mean(losses[:10]))
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("no NaN (a slow climb)", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self, d_in, hidden, dim):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return F.normalize(self.fc2(self.act1(self.fc1(x))), dim=-1)


class _DualEncoder(nn.Module):
    def __init__(self, d_a, d_b, hidden=64, dim=32, temperature=0.07):
        super().__init__()
        self.enc_a = _Encoder(d_a, hidden, dim)
        self.enc_b = _Encoder(d_b, hidden, dim)
        self.temperature = temperature  # fixed, not learnt

    def forward(self, pair):
        a, b = pair
        return self.enc_a(a) @ self.enc_b(b).T / self.temperature


def _info_nce(logits, y):
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


@scenario(
    family="morse_key_paired_signal_dual_encoder",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Morse-key paired-signal dual encoder: two GELU encoders over a key's contact trace and "
    "the matching audio envelope (generated from a shared latent), symmetric InfoNCE at a fixed "
    "temperature 0.07, AdamW, warm-up + cosine, clipping at 1. Hard-negative mining is switched "
    "on at step 120 (batches drawn from a few close operators), the loss rises there and falls "
    "again.",
)
def h484_morse_key_dual_encoder_control(ctx) -> None:
    gen = seeded(4851)
    g = torch.Generator().manual_seed(4851)
    ma, mb = torch.randn(8, 24, generator=g) / 3, torch.randn(8, 20, generator=g) / 3
    state = {"hard": False}

    def batches():
        while True:
            if state["hard"]:
                centres = torch.randn(4, 8, generator=gen)
                z = centres[torch.randint(0, 4, (48,), generator=gen)]
                z = z + 0.6 * torch.randn(48, 8, generator=gen)
            else:
                z = torch.randn(48, 8, generator=gen)
            a = torch.tanh(z @ ma) + 0.05 * torch.randn(48, 24, generator=gen)
            b = torch.sin(z @ mb) + 0.05 * torch.randn(48, 20, generator=gen)
            yield (a, b), torch.arange(48)

    model = _DualEncoder(24, 20)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total, warm = 300, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )

    def before(step):
        state["hard"] = step >= 120

    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches(),
        total,
        _info_nce,
        classifier=True,
        before=before,
        clip=1.0,
        sched=sched,
    )
    batches_eval = batches()
    ctx.check("finite", _finite(losses))
    ctx.check(
        "fell before mining (under 0.5x the start)",
        _mean(losses[110:120]) < 0.5 * _mean(losses[:10]),
    )
    ctx.check("rose when mining switched on", _mean(losses[120:125]) > _mean(losses[110:120]))
    state["hard"] = True
    (a, b), y = next(batches_eval)
    with torch.no_grad():
        acc = float((model((a, b)).argmax(1) == y).float().mean())
    print(f"   [morse] top-1 on a hard batch {acc:.2f} (chance {1 / 48:.3f})")
    ctx.check("retrieves on a hard batch at over 10x chance", acc > 10 / 48)
    ctx.check(
        "loss after mining stays under 0.5x the start",
        _mean(losses[-20:]) < 0.5 * _mean(losses[:10]),
    )


@scenario(
    family="kiln_shelf_glaze_crawl_fp16_gelu_classifier",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Kiln-shelf glaze-crawl classifier (GELU MLP on glaze thickness, bisque porosity and "
    "firing-curve features, six crawl grades, cross-entropy) under fp16 autocast with a "
    "GradScaler, Adamax, ReduceLROnPlateau on the running loss.",
)
def h484_kiln_glaze_fp16_control(ctx) -> None:
    gen = seeded(4852)
    model = _Net(14, 64, 6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen: list[float] = []

    def after(step):
        seen.append(ctx.losses[-1])
        if step % 10 == 9:
            plateau.step(_mean(seen[-10:]))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 4852, 1.4),
        200,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
        amp=True,
        after=after,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell under 0.5x the start", _fell(losses, ratio=0.5))
    ctx.check("the scale stayed finite and positive", all(0 < v < 1e9 for v in ctx.scales))


class _BellConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16 * 24, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.flatten(1))


@scenario(
    family="change_ringing_bell_strike_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Change-ringing bell-strike classifier (Conv1d over a 48-sample strike envelope, four "
    "bells, cross-entropy with label smoothing 0.1 and 8% noisy labels), SGD momentum, "
    "OneCycleLR, two micro-batches accumulated.",
)
def h484_change_ringing_onecycle_control(ctx) -> None:
    gen = seeded(4853)
    t = torch.linspace(0, 1, 48)

    def batches():
        while True:
            y = torch.randint(0, 4, (32,), generator=gen)
            freq = 3.0 + 2.0 * y.float()
            x = torch.sin(2 * math.pi * freq[:, None] * t) * torch.exp(-3 * t)
            x = x + 0.3 * torch.randn(32, 48, generator=gen)
            noisy = torch.rand(32, generator=gen) < 0.08
            y = torch.where(noisy, torch.randint(0, 4, (32,), generator=gen), y)
            yield x, y

    model = _BellConv(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=2,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell under 0.7x the start", _fell(losses))
