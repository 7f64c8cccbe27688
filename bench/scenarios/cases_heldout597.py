"""Held-out set 597 (``h597_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sabot-carving wood-grain classifier whose temperature is read in seconds from a
milliseconds key (softmax_collapse, Adamax); mist-net bird-catch Gaussian-NLL net whose in-model
log(wind speed) has no clamp and meets a calm night (nonfinite, RAdam); waterwheel bucket-torque
regressor under fp16 autocast fed flow in litres instead of cubic metres (amp_overflow, AdamW,
GradScaler); sea-stack erosion Huber regressor fed one shard of raw millimetre readings
(data_outlier, NAdam, ReduceLROnPlateau, clipping); curling-pebble grip BCE classifier whose
Brier auxiliary weight is read as a percentage for one step (gradient_spike, ASGD, clipping);
mangle-wringer nip-pressure tanh regressor with SGD lr typed 3.0 for 0.03 (sharpness_above_limit,
plain SGD); damselfly emergence-timing 14-deep leaky MLP whose init gain is multiplied by a stray
1.3 (exploding_gradients, SGD momentum); withy-bed osier-length regressor whose trunk group lr is
typed 1e-9 (update_ratio_out_of_range, Adagrad, param groups); kipper smokehouse cure-time
regressor resumed with its RMSprop state not restored (loss_spike, RMSprop); lugworm cast-density
regressor whose hand-written weight decay has its sign flipped (loss_divergence, Adam).
Controls: corncrake call-rasp classifier with a long linear warm-up from 0 to Adam 3e-3 over 100
steps (gradient norm grows through the warm-up, alarming-looking); tern colony dive-trace
SimCLR encoder (two augmented views, NT-Xent at temperature 0.2, AdamW, cosine); barn-owl
quartering-flight conv1d classifier (SGD Nesterov, OneCycleLR, label smoothing, 2-step
accumulation, clipping).
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.4 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.2, noise=1.0):
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
        total = backprop(step, loss, out, y) if backprop is not None else loss
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
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k, nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "sabot_carving_grain_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the clog-maker's config stores softmax temperature as temp_ms=2.5 and the model "
    "divides by temp_ms/1000 (a conversion meant for a timing key), so the logits are divided by "
    "0.0025: the float32 softmax rounds most rows' target probability to exactly 1.0",
)
def h597_sabot_carving_grain_temperature_classifier(ctx):
    gen = seeded(5971)
    cfg = {"temp_ms": 2.5}
    model = _TempNet(16, 5, cfg["temp_ms"] / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 16, 5, 59711)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 140, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


class _LogWind(nn.Module):
    """log(wind speed) of the first reading; the clamp at a small floor was dropped."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _CatchNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_wind = _LogWind()
        self.fc1 = nn.Linear(d_in, 40)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(40, 40)
        self.head = nn.Linear(40, 2)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(self.log_wind(x))))))


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


@scenario(
    "mist_net_bird_catch_log_wind_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("log_wind",),
    diverges=90,
    onset=90,
    heldout=True,
    note="a bird-ringing station's catch-rate Gaussian-NLL net takes log(wind speed) inside the "
    "model; the clamp to 0.1 m/s was dropped in a refactor, and the calm night at step 90 logs "
    "wind 0.0: log 0 = -inf, the loss is NaN",
)
def h597_mist_net_bird_catch_log_wind_gaussian_nll_net(ctx):
    gen = seeded(5972)
    g = torch.Generator().manual_seed(59721)
    w = torch.randn(6, generator=g)
    model = _CatchNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def batches():
        while True:
            x = torch.randn(48, 6, generator=gen)
            x[:, 0] = 0.5 + 7.5 * torch.rand(48, generator=gen)
            y = -0.4 * torch.log(x[:, 0]) + torch.tanh(x[:, 1:] @ w[1:] / 2)
            yield x, y + 0.1 * torch.randn(48, generator=gen)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 160, _gauss_nll, alter=alter)
    ctx.check("the loss is finite before step 90", _finite(losses[:90]))
    ctx.check("the loss is NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))
    probe = model.log_wind(torch.zeros(1, 6))
    ctx.check("log_wind yields -inf for wind 0", bool(torch.isinf(probe).any()))


@scenario(
    "waterwheel_bucket_torque_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 70 the mill's new flow meter reports flow in "
    "litres per second where the pipeline expects cubic metres per second (x1000, no "
    "re-standardisation): fc1's fp16 output passes 65504 and becomes inf, the loss is inf/NaN",
)
def h597_waterwheel_bucket_torque_fp16_regressor(ctx):
    gen = seeded(5973)
    model = _Net(10, 64, 1, nn.GELU)
    with torch.no_grad():
        model.fc1.weight.mul_(4.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 59731)
    losses, fc1_inf = [], {}
    for step in range(150):
        x, y = next(batches)
        if step >= 70:
            x = x * 1000.0
            x[:, :3] = x[:, :3] * 40.0
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        fc1_inf[step] = bool((~torch.isfinite(h)).any())
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
    ctx.check("the loss is finite and falls before step 70", _fell(losses[:70]))
    ctx.check("fc1's fp16 output is non-finite at step 70", fc1_inf.get(70, False))
    ctx.check("the loss is non-finite at step 70", len(losses) == 71 and not _finite(losses[70:]))
    with torch.no_grad():
        x32 = next(batches)[0] * 1000.0
        x32[:, :3] *= 40.0
        ctx.check("the same input is finite in float32", bool(torch.isfinite(model(x32)).all()))


@scenario(
    "sea_stack_erosion_rate_huber_regressor",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one shard of the cliff-survey export at step 110 holds raw laser-rangefinder "
    "millimetres instead of standardised metres (x1000 on two columns, targets too); clipping "
    "and the Huber loss keep the run, which recovers; ReduceLROnPlateau on the loss",
)
def h597_sea_stack_erosion_rate_huber_regressor(ctx):
    gen = seeded(5974)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    batches = _readings(gen, 64, 8, 59741, noise=0.1)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, :2] = x[:, :2] * 1000.0
            y = y * 1000.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, batches, 220, F.huber_loss, alter=alter, clip=1.0, plateau=plateau
    )
    before = _median(losses[90:110])
    ctx.check("the loss at step 110 is over 20x the median before", losses[110] > 20 * before)
    ctx.check(
        "the gradient at 110 is over 10x the median before",
        norms[110] > 10 * _median(norms[90:110]),
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-10:]) < 2 * before)


@scenario(
    "curling_pebble_grip_aux_weight_bce_classifier",
    "ASGD",
    "gradient_spike",
    heldout=True,
    onset=100,
    note="a BCE grip classifier with a Brier-score auxiliary term of weight 0.5; at step 100 a "
    "config hot-reload reads the weight from the 'aux_weight_pct' key (50.0) for that one step, "
    "so the backpropagated loss is 100x on the auxiliary term; the logged loss is the plain BCE; "
    "clipping keeps the update in check",
)
def h597_curling_pebble_grip_aux_weight_bce_classifier(ctx):
    gen = seeded(5975)
    g = torch.Generator().manual_seed(59751)
    w = torch.randn(10, generator=g)
    model = _Net(10, 40, 1, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1, t0=1e4)

    def batches():
        while True:
            x = torch.randn(64, 10, generator=gen)
            y = ((x @ w + 0.6 * torch.randn(64, generator=gen)) > 0).float()
            yield x, y

    def backprop(step, loss, out, y):
        aux_weight = 50.0 if step == 100 else 0.5
        brier = ((torch.sigmoid(out) - y) ** 2).mean()
        return loss + aux_weight * brier

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    before = _median(norms[80:100])
    ctx.check("the gradient at step 100 is over 15x the median before", norms[100] > 15 * before)
    ctx.check("the logged loss at 100 is ordinary", losses[100] < 2 * _mean(losses[90:100]))
    ctx.check("the run trains and stays finite", _fell(losses))


@scenario(
    "mangle_wringer_nip_pressure_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the laundry mangle's roller nip-pressure regressor: lr typed 3.0 for 0.03 in the "
    "config; lr x top Hessian eigenvalue is past 2 from the start and the loss blows up",
)
def h597_mangle_wringer_nip_pressure_tanh_regressor(ctx):
    gen = seeded(5976)
    model = _Net(8, 48, 1, nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 8, 59761)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x top Hessian eigenvalue is over 2 at step 0", lr * eig > 2.0)
    ctx.check(
        "the loss blows up (over 100x its start or non-finite)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


class _DeepLeaky(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = nn.LeakyReLU(0.1)
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, a=0.1, nonlinearity="leaky_relu")
            nn.init.zeros_(lin.bias)
            with torch.no_grad():
                lin.weight.mul_(gain)
        self.hidden = []

    def forward(self, x):
        self.hidden = []
        for lin in self.layers:
            x = self.act(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    "damselfly_emergence_timing_deep_leaky_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="a 14-deep leaky-ReLU emergence-day regressor; a stray 'gain=1.3' multiplies every "
    "layer's weights after kaiming init (left from a width experiment), so the backward signal "
    "grows ~1.3x per layer towards the input and the run blows up under SGD momentum",
)
def h597_damselfly_emergence_timing_deep_leaky_mlp(ctx):
    gen = seeded(5977)
    model = _DeepLeaky(8, 32, 14, 1.3)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    batches = _readings(gen, 64, 8, 59771)
    ratio = {}

    def backprop(step, loss, out, y):
        if step == 0:
            loss.backward(retain_graph=True)
            g0 = float(model.hidden[0].grad.norm())
            gl = float(model.hidden[-1].grad.norm())
            ratio["r"] = g0 / max(gl, 1e-30)
            for p in model.parameters():
                p.grad = None
        return loss

    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, backprop=backprop)
    ctx.check("the backward signal at layer 0 is over 10x the last layer's", ratio.get("r", 0) > 10)
    ctx.check(
        "the loss blows up (over 100x its start or non-finite)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


@scenario(
    "withy_bed_osier_length_group_typo_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="two param groups, the trunk (fc1) meant at lr 1e-1 and the rest at 5e-2; the trunk's "
    "lr was typed 1e-9, so fc1 never moves while the loss still falls a little through fc2/head",
)
def h597_withy_bed_osier_length_group_typo_regressor(ctx):
    gen = seeded(5978)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 5e-2},
        ]
    )
    batches = _readings(gen, 64, 10, 59781)
    w0 = _flat(model.fc1)
    r0 = _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, batches, 160, F.mse_loss)
    moved = float((_flat(model.fc1) - w0).norm() / w0.norm())
    moved_rest = float((_flat(model.fc2) - r0).norm() / r0.norm())
    ctx.check("fc1 moved less than 1e-6 of its norm", moved < 1e-6)
    ctx.check("fc2 moved over 1% of its norm", moved_rest > 0.01)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "kipper_smokehouse_cure_time_resume_regressor",
    "RMSprop",
    "loss_spike",
    heldout=True,
    onset=120,
    note="the smokehouse cure-time regressor is resumed at step 120 from a checkpoint whose "
    "optimizer state failed to load (a key mismatch caught and ignored), so RMSprop's square "
    "averages restart from zero: the first updates are ~10x too big, the loss spikes once and "
    "the run recovers with no data or gradient anomaly",
)
def h597_kipper_smokehouse_cure_time_resume_regressor(ctx):
    gen = seeded(5979)
    model = _Net(8, 64, 1, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99)
    batches = _readings(gen, 64, 8, 59791)

    def before(step):
        if step == 120:
            opt.state.clear()

    losses, norms = _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before)
    base = _median(losses[100:120])
    peak = max(losses[121:126])
    ctx.check("the loss spikes to over 4x the median before", peak > 4 * base)
    ctx.check("the gradient at 120 is ordinary", norms[120] < 2 * _median(norms[100:120]))
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-10:]) < 1.5 * base)


@scenario(
    "lugworm_cast_density_decay_sign_regressor",
    "Adam",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay written as p.mul_(1 + lr * wd) instead of "
    "(1 - lr * wd), wd 2.0: the weights inflate a little every step and the loss climbs "
    "slowly with no jump",
)
def h597_lugworm_cast_density_decay_sign_regressor(ctx):
    gen = seeded(5980)
    model = _Net(8, 48, 1, nn.Tanh)
    lr, wd = 1e-2, 2.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 8, 59801)
    n0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(ctx, model, opt, batches, 260, F.mse_loss, before=before)
    best = min(losses)
    windows = [_mean(losses[i : i + 20]) for i in range(120, 260, 20)]
    rises = sum(b > a for a, b in zip(windows[:-1], windows[1:], strict=True))
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * n0)
    ctx.check("the loss climbs to over 5x its best", _mean(losses[-10:]) > 5 * best)
    ctx.check("the 20-step mean loss rises in most windows after 120", rises >= 4)
    ctx.check("the loss stays finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "corncrake_call_rasp_warmup_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="alarming-looking: a long linear warm-up from 0 to Adam's peak 3e-3 over 100 steps, "
    "then cosine decay; the gradient norm grows through the warm-up as the logits sharpen, "
    "which is the ordinary course of a warm-up and not a fault",
)
def h597_corncrake_call_rasp_warmup_classifier(ctx):
    gen = seeded(5981)
    model = _Net(24, 64, 8, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 240

    def factor(step):
        if step < 100:
            return step / 100
        return 0.5 * (1 + math.cos(math.pi * (step - 100) / (steps - 100)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    batches = _classes(gen, 64, 24, 8, 59811, spread=0.5)
    losses, norms = _loop(
        ctx, model, opt, batches, steps, F.cross_entropy, classifier=True, sched=sched
    )
    ctx.check(
        "the gradient norm grows through the warm-up",
        _mean(norms[85:100]) > 1.5 * _mean(norms[:15]),
    )
    ctx.check("the loss falls and stays finite", _fell(losses))


class _DiveEncoder(nn.Module):
    def __init__(self, length=48, dim=32):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.proj1 = nn.Linear(32, 64)
        self.proj2 = nn.Linear(64, dim)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h)).mean(-1)
        return self.proj2(F.relu(self.proj1(h)))


def _nt_xent(z1, z2, temperature):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


@scenario(
    "tern_colony_dive_trace_simclr_encoder",
    "AdamW",
    "healthy",
    heldout=True,
    note="SimCLR-style contrastive encoder of generated tern dive-depth traces: two augmented "
    "views (jitter, amplitude scaling, time shift), NT-Xent at temperature 0.2, AdamW with a "
    "short warm-up and cosine decay",
)
def h597_tern_colony_dive_trace_simclr_encoder(ctx):
    gen = seeded(5982)
    model = _DiveEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    t = torch.linspace(0, 1, 48)

    def traces(n):
        depth = 0.5 + torch.rand(n, 1, generator=gen)
        start = 0.2 + 0.5 * torch.rand(n, 1, generator=gen)
        width = 0.05 + 0.15 * torch.rand(n, 1, generator=gen)
        wobble = torch.rand(n, 1, generator=gen) * 6
        return -depth * torch.exp(-(((t - start) / width) ** 2)) + 0.2 * torch.sin(wobble * 6 * t)

    def augment(x):
        n = x.shape[0]
        scale = 0.8 + 0.4 * torch.rand(n, 1, generator=gen)
        shift = int(torch.randint(-3, 4, (1,), generator=gen))
        return torch.roll(x * scale, shift, 1) + 0.05 * torch.randn(x.shape, generator=gen)

    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        x = traces(64)
        loss = _nt_xent(model(augment(x)), model(augment(x)), 0.2)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the NT-Xent loss falls and stays finite", _fell(losses, ratio=0.8))


class _FlightNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        return self.head(F.relu(self.conv2(h)).mean(-1))


@scenario(
    "barn_owl_quarter_flight_onecycle_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="barn-owl quartering-flight altitude traces classified into four hunting phases: "
    "SGD Nesterov with OneCycleLR, label smoothing 0.1, two-micro-batch gradient accumulation, "
    "clipping at 1.0",
)
def h597_barn_owl_quarter_flight_onecycle_conv1d_classifier(ctx):
    gen = seeded(5983)
    model = _FlightNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    t = torch.linspace(0, 1, 40)
    freqs = torch.tensor([2.0, 4.0, 7.0, 11.0])

    def batch(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        phase = 6.28 * torch.rand(n, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * 6.28 * t + phase)
        return x + 0.4 * torch.randn(n, 40, generator=gen), y

    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = batch(32)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss falls and stays finite", _fell(losses, ratio=0.6))
