"""Held-out set 622 (``h622_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 5.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _grades(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64, w=None):
    """Endless (x, y) batches: y is the argmax of a fixed (or given) linear score."""
    w = torch.randn(n_in, k, generator=gen) if w is None else w
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


class Three(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def _median(xs: list[float], k: int, n: int = 10) -> float:
    return float(torch.tensor(xs[max(0, k - n) : k]).median())


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _gnorm(model: nn.Module) -> float:
    gs = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="tonnelier_stave_bend_silu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups from a config; fc2's rate typed 2e-9 for 2e-3, so fc2 never moves "
    "while fc1 and fc3 train; the loss still falls slowly",
)
def h622_tonnelier_stave_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6221)
    model = Three(8, 32)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 2e-9},  # typo: 2e-3
            {"params": model.fc3.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    for _ in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    r1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    r2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc2 relative change under 1e-5", r2 < 1e-5)
    ctx.check("fc1 relative change over 1e-2", r1 > 1e-2)
    ctx.check("loss fell", ctx.losses[-1] < 0.8 * ctx.losses[0])


@scenario(
    family="pelota_fronton_rebound_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written L2 penalty subtracted instead of added (loss - wd*|w|^2): the weights grow "
    "steadily, the tanh units saturate and the MSE climbs slowly to over 3x its best with no jump",
)
def h622_pelota_rebound_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(6222)
    model = Three(8, 32, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    wd = 5e-2
    n0 = float(_flat(model).norm())
    for _ in range(280):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        (loss - wd * penalty).backward()  # bug: should be + wd * penalty
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    best = min(ls)
    k = ls.index(best)
    jumps = [b / max(a, 1e-8) for a, b in zip(ls[k:-1], ls[k + 1 :], strict=False)]
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * n0)
    meds = [_median(ls, j) for j in range(10, len(ls) + 1)]
    ctx.check("last-10 median over 3x its lowest 10-step median", meds[-1] > 3 * min(meds))
    ctx.check("no single-step jump over 3x after the best", max(jumps, default=0.0) < 3.0)
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


def _top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sand_dune_slipface_creep_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with the learning rate typed 0.9 for 0.009; lr x top Hessian eigenvalue is over "
    "2 from the start, the loss oscillates with growing amplitude and blows up",
)
def h622_slipface_creep_lr_typo(ctx: Context) -> None:
    gen = seeded(6223)
    model = Three(8, 64, act=torch.tanh)
    lr = 0.9  # typo: 0.009
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=128)
    x0, y0 = next(batches)
    lam = _top_eig(model, lambda: F.mse_loss(model(x0), y0))
    ctx.check("lr x sharpness over 2 at start", lr * lam > 2.0)
    for _ in range(120):
        x, y = next(batches)
        y = 10.0 * y  # creep in mm
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "loss blew up (non-finite or over 100x start)",
        not math.isfinite(ls[-1]) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="chimney_flue_swirl_deep_tanh_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="16-layer tanh MLP initialised with std 4.0/sqrt(fan_in) (a config's init_gain typed 4.0 "
    "for 1.0); the gradient grows through depth toward the input layer",
)
def h622_chimney_swirl_init_gain(ctx: Context) -> None:
    gen = seeded(6224)
    sizes = [8] + [48] * 15 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=4.0 / math.sqrt(a))  # bug: init_gain 1.0
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model[0].weight.grad.norm() / model[30].weight.grad.norm()))
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0 grad over 10x the last layer's at start", ratios[0] > 10)
    ctx.check(
        "ratio over 10x (median of first 20 steps)", float(torch.tensor(ratios[:20]).median()) > 10
    )


@scenario(
    family="whirlpool_vortex_period_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one shard at step 110 logged its period in seconds instead of minutes (x60 on targets); "
    "Huber loss and clipping at 1.0, the loss spikes for that batch and the run recovers",
)
def h622_whirlpool_period_bad_shard(ctx: Context) -> None:
    gen = seeded(6225)
    model = Three(8, 32)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 110
    raw = []
    for step in range(200):
        x, y = next(batches)
        y = y + 1.0
        if step == onset:
            y = y * 60.0  # bad shard: seconds, not minutes
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        raw.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        ctx.grad_norms.append(raw[-1])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _median(ls, onset)
    ctx.check("loss over 20x pre-onset median at onset", ls[onset] > 20 * pre)
    ctx.check("gradient over 10x pre-onset median at onset", raw[onset] > 10 * _median(raw, onset))
    ctx.check("recovered: last 10 under 2x pre-onset", _median(ls, len(ls)) < 2 * pre)


@scenario(
    family="fencing_epee_touch_relu_bce_classifier",
    optimizer="Adagrad",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="4 micro-batch accumulation; after a resume at step 120 the micro-batch loss is scaled by "
    "accum*batch instead of 1/accum for that one step, the gradient bursts ~1000x while the logged "
    "loss is ordinary; clipping at 1.0 contains it",
)
def h622_epee_touch_accum_scale_bug(ctx: Context) -> None:
    gen = seeded(6226)
    model = Three(12, 32, out=1, act=F.relu)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    w = torch.randn(12, generator=gen)
    accum, onset = 4, 120
    raw = []
    for step in range(200):
        logged = 0.0
        for _ in range(accum):
            x = torch.randn(16, 12, generator=gen)
            y = ((x @ w) > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = accum * 64 if step == onset else 1.0 / accum  # bug on resume
            (loss * scale).backward()
            logged += float(loss.detach()) / accum
        raw.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        ctx.grad_norms.append(raw[-1])
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient over 30x pre-onset median at onset", raw[onset] > 30 * _median(raw, onset))
    ctx.check("logged loss ordinary at onset (under 3x)", ls[onset] < 3 * _median(ls, onset, 30))
    ctx.check("loss fell", _median(ls, len(ls)) < 0.6 * ls[0])


class Dewpoint(nn.Module):
    """Dew-point depression feature: sqrt(T - Td) (no clamp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, 2:], torch.sqrt(x[:, :1] - x[:, 1:2])], 1)  # missing clamp(min=0)


class FogNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dewpoint = Dewpoint()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU())
        self.mean = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor):
        h = self.body(self.dewpoint(x))
        return self.mean(h), self.log_var(h)


@scenario(
    family="ice_fog_visibility_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("dewpoint",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model sqrt(T - Td) dew-point depression without its clamp; at step 80 a station's "
    "hygrometer reports supersaturation (Td > T), sqrt of a negative gives NaN and the loss is NaN",
)
def h622_ice_fog_dewpoint_sqrt(ctx: Context) -> None:
    gen = seeded(6227)
    model = FogNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, n_in=6)
    onset = 80
    seen: dict[str, torch.Tensor] = {}
    model.dewpoint.register_forward_hook(lambda m, i, o: seen.__setitem__("d", o.detach()))
    for step in range(140):
        x, y = next(batches)
        t = 2.0 + torch.rand(len(x), 1, generator=gen)
        td = t - 0.5 - torch.rand(len(x), 1, generator=gen)
        if step == onset:
            td[:5] = t[:5] + 0.3  # supersaturated reading
        mean, log_var = model(torch.cat([t, td, x[:, :5]], 1))
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("dewpoint output non-finite at onset", not bool(seen["d"].isfinite().all()))
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0])
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


@scenario(
    family="saddler_awl_stitch_tension_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 70 a new awl load cell reports in pascal instead of "
    "kilopascal (x1000 plus its raw offset), fc1's fp16 output overflows to inf, the loss is inf",
)
def h622_saddler_stitch_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6228)
    model = Three(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 70
    for step in range(120):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 3] = x[:, 3] * 1e3 + 1.0e6  # Pa, not kPa
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="handbell_change_ringing_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("fc3",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.8 read from a config in ms and divided by 1000: logits divided by "
    "0.0008, most rows' target probability rounds to exactly 1.0 in float32",
)
def h622_handbell_temperature_ms(ctx: Context) -> None:
    gen = seeded(6229)
    model = Three(12, 48, out=6, act=F.gelu)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _grades(gen, k=6)
    temp = 0.8 / 1000.0  # bug: 0.8 was already in the right unit
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 40% rows collapsed (last 20 median)", float(torch.tensor(fracs[-20:]).median()) > 0.4
    )
    ctx.check("max |logit| over 50", float(logits.detach().abs().max()) > 50)


@scenario(
    family="sheepdog_trial_outrun_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="fc2's bias initialised to -4.0 (an init helper meant for a gating layer applied to every "
    "Linear named fc2): nearly all fc2 ReLU units never fire, the loss stalls far above a healthy run",
)
def h622_sheepdog_outrun_dead_fc2(ctx: Context) -> None:
    gen = seeded(62210)
    model = Three(12, 48, out=5, act=F.relu)
    nn.init.constant_(model.fc2.bias, -4.0)  # bug: gate init applied to fc2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _grades(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc2.register_forward_hook(lambda m, i, o: seen.__setitem__("fc2", o.detach()))
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        dead.append(dead_fraction(seen["fc2"]))
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 80% of fc2 units dead at start", dead[0] > 0.8)
    ctx.check("over 80% of fc2 units dead at end", dead[-1] > 0.8)
    ctx.check("loss stalled (last 10 over 0.8x start)", _median(ls, len(ls)) > 0.8 * ls[0])


# -- healthy controls --------------------------------------------------------------------------------


@scenario(
    family="pipe_organ_voicing_trunk_finetune_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="discriminative fine-tune: a trunk pretrained on a related voicing task gets lr 1e-5 and "
    "the new head 1e-3 (100x), so the trunk barely moves; looks frozen, is the intended practice",
)
def h622_pipe_organ_discriminative_finetune(ctx: Context) -> None:
    gen = seeded(62211)
    trunk = nn.Sequential(nn.Linear(12, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
    w_src = torch.randn(12, 8, generator=gen)
    src_head = nn.Linear(64, 8)
    pre = torch.optim.Adam([*trunk.parameters(), *src_head.parameters()], lr=2e-3)
    src = _grades(gen, k=8, w=w_src)
    for _ in range(200):  # pretraining, before this run
        x, y = next(src)
        F.cross_entropy(src_head(trunk(x)), y).backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    model = nn.Sequential(trunk, nn.Linear(64, 4))
    opt = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-5},
            {"params": model[1].parameters(), "lr": 1e-3},
        ],
        weight_decay=1e-2,
    )
    ctx.attach(model, opt)
    w_tgt = w_src[:, :4] + 0.3 * torch.randn(12, 4, generator=gen)
    batches = _grades(gen, k=4, w=w_tgt)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.6x start)", _median(ls, len(ls)) < 0.6 * ls[0])
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="kitesurf_jump_grade_onecycle_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SGD momentum with OneCycleLR, label smoothing 0.1, clipping at 1.0 and 5% noisy labels",
)
def h622_kitesurf_onecycle_control(ctx: Context) -> None:
    gen = seeded(62212)
    model = Three(12, 48, out=5, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=180)
    ctx.attach(model, opt)
    batches = _grades(gen)
    for _ in range(180):
        x, y = next(batches)
        flip = torch.rand(len(y), generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.6x start)", _median(ls, len(ls)) < 0.6 * ls[0])
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="lighthouse_lens_beam_range_mse_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adam with 2-micro-batch accumulation, ReduceLROnPlateau on the logged loss and noisy "
    "small batches; an ordinary run",
)
def h622_lighthouse_plateau_control(ctx: Context) -> None:
    gen = seeded(62213)
    model = Three(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16, noise=0.1)
    for _ in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        sched.step(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.6x start)", _median(ls, len(ls)) < 0.6 * ls[0])
    ctx.check("all finite", all(math.isfinite(v) for v in ls))
