"""Held-out set 397 (``h397_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a hurdy-gurdy wheel-rosin tanh regressor whose warm-up lost its clamp (the rate passes
2/sharpness), a cranberry-bog harvest-yield net trained under fp16 autocast on yields exported in
grams (the head's fp16 output passes 65504), a tip-up ice-fishing flag GELU regressor resumed from a
stale checkpoint (a one-off loss spike), a luthier soundboard tap-tone regressor whose validation
hook backpropagates a summed loss into one step (Adam's second moment poisoned), a dog-sled
runner-glide regressor fed one logger's shard with -9999 sentinels (one corrupted batch), a
kite-surf line-tension Huber regressor whose resumed step sums its micro-batches with no division
(one gradient burst), a bellfounder tuning two-group classifier whose body lr is typed 1e-9
(frozen), a mudpot bubble-interval Gaussian-NLL net whose variance head lost its softplus (log of
a negative), a sheepdog-trial outrun 12-layer tanh MLP initialised with gain 3.0 (gradients grow
through depth) and a lacemaker bobbin-pattern classifier whose softmax temperature is typed 1e-3
(softmax saturates).

Controls: a cloisonne enamel-defect ResNet on digits (zero-initialised last BatchNorm gammas, SGD
momentum 0.9, weight decay, cosine schedule), a peat-cutting turf-wetness SiLU BCE classifier
(AdamW, no-decay bias group, ReduceLROnPlateau, clipping) and a stonemason chisel-stroke Conv1d
classifier (fp16 autocast with a GradScaler, SGD Nesterov under OneCycleLR, label smoothing,
clipping).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, grad_norm, scenario, seeded


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
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    watch=None,
):
    """The file's training loop; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
            if watch is not None:
                watch(step, out, x, y)
            loss = loss_fn(out.float(), y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
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
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _top_eig(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- sharpness_above_limit: a warm-up without its clamp --------------------------------------------


@scenario(
    "hurdy_gurdy_wheel_rosin_drag_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=10,
    note="a tanh regressor of the drag of a hurdy-gurdy's rosined wheel, plain SGD at base lr "
    "0.05; the LambdaLR warm-up lambda (s + 1) / 10 lost its min(1, .) clamp in a refactor, so "
    "the rate keeps climbing after step 10 and passes 2 / top Hessian eigenvalue (checked by "
    "power iteration) before the loss blows up",
)
def h397_hurdy_gurdy_warmup_unclamped(ctx: Context) -> None:
    gen = seeded(39701)
    model = _MLP(10, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 10)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 397))
    prod = {}

    def before(step):
        if step in (10, 120):
            prod[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 397), 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 10", prod.get(10, 9.0) < 2.0)
    ctx.check("lr x sharpness past 2 by step 120", prod.get(120, 0.0) > 2.0)
    ctx.check("loss blows up", _first_bad(ls) is not None or max(ls) > 100 * min(ls[:20]))


# -- amp_overflow: a head trained on grams under fp16 autocast ------------------------------------


class _BogNet(nn.Module):
    """Per-reading ReLU encoder, mean-pooled over the window, and a yield head."""

    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.enc(x)).mean(1)).squeeze(-1)


def _bog(gen, batch, length=64, d_in=6, unit=1.0):
    """Bed readings and the bed's harvest yield (about 100 in kilograms)."""
    w = torch.linspace(-1, 1, d_in)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        y = 150.0 * torch.relu(x @ w).mean(1) + 2.0 * torch.randn(batch, generator=gen)
        yield x, unit * y


@scenario(
    "cranberry_bog_harvest_yield_grams_fp16_net",
    "AdamW",
    "amp_overflow",
    ("head",),
    51,
    heldout=True,
    note="a cranberry-bog harvest-yield net (a per-reading ReLU encoder mean-pooled over 64 "
    "float-boom readings), trained under fp16 autocast with a GradScaler; the yield column was "
    "exported in grams (about 1e5) where kilograms were meant, and as AdamW (lr 1.0, the kilogram-era setting raised to chase the loss) grows the head "
    "towards the targets its fp16 output passes 65504 and overflows to inf while the same "
    "forward in fp32 stays finite; the loss goes non-finite",
)
def h397_cranberry_bog_grams_fp16(ctx: Context) -> None:
    gen = seeded(39702)
    model = _BogNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = {}

    def watch(step, out, x, y):
        if not torch.isfinite(out).all() and "step" not in seen:
            seen["step"] = step
            with torch.no_grad():
                seen["fp32"] = float(model(x).abs().max())

    _loop(
        ctx,
        model,
        opt,
        _bog(gen, 16, unit=1000.0),
        250,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        watch=watch,
    )
    ctx.check("fp16 output overflowed to inf", "step" in seen)
    ctx.check(
        "the same forward in fp32 is finite and past 65504",
        math.isfinite(seen.get("fp32", math.inf)) and seen.get("fp32", 0.0) > 65504,
    )
    ctx.check("loss non-finite", _first_bad(ctx.losses) is not None)
    ctx.check("it had trained first", seen.get("step", 0) > 10)


# -- loss_spike: resumed from a stale checkpoint ---------------------------------------------------


@scenario(
    "tip_up_flag_trip_depth_gelu_regressor",
    "Adamax",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=120,
    note="an ice-fishing tip-up flag-trip depth GELU regressor, Adamax; the job is pre-empted at "
    "step 120 and the restart loads the newest checkpoint by a glob that sorts 'ckpt_9' after "
    "'ckpt_100', i.e. the step-9 weights, while the step counter, data and Adamax state carry "
    "on; the loss jumps for a step with no gradient burst before it and the run recovers",
)
def h397_tip_up_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(39703)
    model = _MLP(12, hidden=48, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    saved = {}

    def after(step):
        if step == 9:
            saved["w"] = copy.deepcopy(model.state_dict())

    def before(step):
        if step == 120:
            model.load_state_dict(saved["w"])

    _loop(
        ctx, model, opt, _readings(gen, 64, 12, 3971), 220, F.mse_loss, before=before, after=after
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss over 3x at step 120", ls[120] > 3 * _mean(ls[110:120]))
    ctx.check("no gradient burst before it", max(gn[100:120]) < 3 * _median(gn[60:120]))
    ctx.check("recovers", _mean(ls[-10:]) < 1.5 * _mean(ls[110:120]))
    ctx.check("finite", _finite(ls))


# -- adam_second_moment_poisoned: a validation hook backpropagates ---------------------------------


@scenario(
    "luthier_soundboard_tap_tone_silu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a luthier's soundboard tap-tone SiLU regressor, Adam; at step 100 a validation hook "
    "computes a summed MSE over 16 passes of 4096 held-out boards outside no_grad and calls backward without "
    "zero_grad, so one step carries a gradient thousands of times the usual; Adam's second "
    "moment fills up and the updates shrink for many steps while the gradients do not",
)
def h397_luthier_validation_backprop(ctx: Context) -> None:
    gen = seeded(39704)
    model = _MLP(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    val = next(_readings(torch.Generator().manual_seed(9), 4096, 10, 3972))
    moves = []
    prev = {}

    def backprop(step, loss, acc):
        if step == 100:
            vx, vy = val
            return loss + F.mse_loss(model(vx), vy, reduction="sum") * 16.0
        return loss

    def before(step):
        prev["p"] = _params(model)

    def after(step):
        moves.append(float((_params(model) - prev["p"]).abs().median()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3972),
        220,
        F.mse_loss,
        before=before,
        backprop=backprop,
        after=after,
    )
    gn = ctx.grad_norms
    ctx.check("gradient over 1000x at step 100", gn[100] > 1000 * _median(gn[50:100]))
    ctx.check(
        "median update 130-190 under a tenth of before",
        _median(moves[130:190]) < 0.1 * _median(moves[50:100]),
    )
    ctx.check("gradients not smaller", _median(gn[130:190]) > 0.5 * _median(gn[80:100]))


# -- data_outlier: a shard with -9999 sentinels ----------------------------------------------------


@scenario(
    "dog_sled_runner_glide_relu_regressor",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a dog-sled runner-glide ReLU regressor, SGD momentum 0.9, clipping at 1.0; the step-110 "
    "batch comes from one trail logger's shard whose missing snow temperatures are -9999 "
    "sentinels in two columns of a quarter of the rows; loss and gradient jump and the run "
    "recovers",
)
def h397_dog_sled_sentinel_shard(ctx: Context) -> None:
    gen = seeded(39705)
    model = _MLP(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:16, 3:5] = -9999.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3973), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at step 110", ls[110] > 20 * _mean(ls[100:110]))
    ctx.check("gradient over 20x at step 110", gn[110] > 20 * _median(gn[80:110]))
    ctx.check("finite and recovers", _finite(ls) and _mean(ls[-10:]) < 3 * _mean(ls[100:110]))


# -- gradient_spike: a resumed accumulation step sums without dividing -----------------------------


@scenario(
    "kite_surf_line_tension_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=130,
    note="a kite-surf line-tension SiLU Huber regressor, SGD Nesterov, accumulation over 4, "
    "clipping at 5; the resumed step 130 goes through an old code path that backpropagates the "
    "micro-batch losses with reduction='sum' and no division by the accumulation count, one "
    "gradient burst on clean data with an ordinary logged loss; the run recovers",
)
def h397_kite_surf_accum_sum(ctx: Context) -> None:
    gen = seeded(39706)
    model = _MLP(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    cache = {}

    def watch(step, out, x, y):
        cache["o"], cache["y"] = out, y

    def backprop(step, loss, acc):
        if step == 130:
            return F.huber_loss(cache["o"], cache["y"], reduction="sum")
        return loss / acc

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3974),
        220,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
        accumulate=4,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at step 130", gn[130] > 30 * _median(gn[100:130]))
    ctx.check("logged loss ordinary at step 130", ls[130] < 2 * _mean(ls[120:130]))
    ctx.check("finite and recovers", _finite(ls) and _mean(ls[-10:]) < 2 * _mean(ls[120:130]))


# -- update_ratio_out_of_range: a param group's lr typo --------------------------------------------


@scenario(
    "bellfounder_tuning_partial_two_group_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a bellfounder's tuning-partial grade classifier with two param groups, Adagrad; the "
    "body group's (fc1, fc2) lr is typed 1e-9 for 1e-1, so the body barely moves while it "
    "receives gradients and only the head learns",
)
def h397_bellfounder_body_lr_typo(ctx: Context) -> None:
    gen = seeded(39707)
    model = _MLP(16, hidden=48, out=6)
    body = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-1}]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    gsum = []

    orig_step = opt.step

    def step_with_grad(*a, **k):
        gsum.append(float(model.fc1.weight.grad.norm()))
        return orig_step(*a, **k)

    opt.step = step_with_grad
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3975, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moves under 1e-6 of its norm", r1 < 1e-6)
    ctx.check("fc1 receives gradients", _median(gsum) > 1e-3)
    ctx.check("head moves over 5%", rh > 0.05)


# -- nonfinite: a variance head without its softplus -----------------------------------------------


class _NLLNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h) + 1.0], 1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    "mudpot_bubble_burst_interval_gaussian_nll_net",
    "RMSprop",
    "nonfinite",
    ("var_head",),
    124,
    heldout=True,
    note="a mudpot bubble-burst interval net with mean and variance heads and a hand-written "
    "Gaussian NLL, RMSprop; the variance head's softplus was dropped in a refactor (only + 1.0 "
    "left), the nearly noise-free target drives a variance negative and log(var) is NaN",
)
def h397_mudpot_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(39708)
    model = _NLLNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    seen = {}

    def watch(step, out, x, y):
        if "neg" not in seen and (out[:, 1] <= 0).any():
            seen["neg"] = step

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3976, noise=0.001), 300, _gauss_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("a variance went non-positive", "neg" in seen)
    ctx.check("loss NaN at that step", bad is not None and bad == seen.get("neg"))
    ctx.check("trained first", bad is not None and bad > 20)


# -- exploding_gradients: a deep tanh MLP with init gain typo --------------------------------------


class _Deep(nn.Module):
    def __init__(self, d_in=10, width=32, depth=12, gain=1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for lin in self.layers:
            x = torch.tanh(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    "sheepdog_trial_outrun_arc_deep_tanh_mlp",
    "NAdam",
    "exploding_gradients",
    ("layers.0",),
    None,
    heldout=True,
    note="a 12-layer tanh MLP scoring a sheepdog trial's outrun arc, NAdam, clipping at 1.0; the "
    "init std is typed 3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in) (a gain meant for a "
    "different layer type), so the gradient grows through depth from the head to layers.0",
)
def h397_sheepdog_init_gain(ctx: Context) -> None:
    gen = seeded(39709)
    model = _Deep(gain=3.0)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ratios = []

    def inspect_grads(step):
        a = model.acts
        if a and a[0].grad is not None:
            ratios.append(float(a[0].grad.norm() / a[-1].grad.norm().clamp_min(1e-12)))

    orig_step = opt.step

    def step_with(*args, **kw):
        inspect_grads(len(ratios))
        return orig_step(*args, **kw)

    opt.step = step_with
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3977), 150, F.mse_loss, clip=1.0)
    torch.manual_seed(1)
    ref = _Deep(gain=1.0)
    x, y = next(_readings(torch.Generator().manual_seed(2), 64, 10, 3977))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.acts[0].grad.norm() / ref.acts[-1].grad.norm())
    ctx.check("layers.0's gradient over 20x the last's at the start", ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended gain", ref_ratio < 5)
    ctx.check("finite", _finite(ctx.losses))


# -- softmax_collapse: a temperature typo ----------------------------------------------------------


class _TempClassifier(_MLP):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    "lacemaker_bobbin_pattern_temperature_classifier",
    "RAdam",
    "softmax_collapse",
    ("head",),
    None,
    heldout=True,
    note="a bobbin-lace pattern classifier whose logits are divided by a temperature typed 1e-3 "
    "for 1.0, RAdam; the softmax saturates and most rows' target probability rounds to exactly "
    "1.0",
)
def h397_lacemaker_temperature_typo(ctx: Context) -> None:
    gen = seeded(39710)
    model = _TempClassifier(16, hidden=48, out=8, temperature=1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    sat, ref = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            p = F.softmax(out.float(), -1).gather(1, y[:, None]).squeeze(1)
            sat.append(float((p == 1.0).float().mean()))
            q = F.softmax(out.float() * 1e-3, -1).gather(1, y[:, None]).squeeze(1)
            ref.append(float((q == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 3978, spread=1.5),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows saturated over the last 30 steps", _mean(sat[-30:]) > 0.5)
    ctx.check("none at temperature 1 on the same logits", _mean(ref[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class _ResNet(nn.Module):
    def __init__(self, c=16, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c)
        self.block1 = _ResBlock(c)
        self.block2 = _ResBlock(c)
        self.head = nn.Linear(c * 16, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x.reshape(-1, 1, 8, 8))))
        x = self.block2(self.block1(x))
        return self.head(F.avg_pool2d(x, 2).flatten(1))


@scenario(
    "cloisonne_enamel_cell_defect_resnet_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="a ResNet-style classifier (stem, two residual blocks with BatchNorm, the last gamma of "
    "each block zero-initialised) of cloisonne enamel-cell defects stood in by scikit-learn "
    "digits, SGD momentum 0.9 with weight decay 5e-4 under a cosine schedule; control",
)
def h397_cloisonne_resnet_control(ctx: Context) -> None:
    gen = seeded(39711)
    model = _ResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150)
    _loop(
        ctx, model, opt, digit_batches(gen, 64), 150, F.cross_entropy, classifier=True, sched=sched
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.3))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "peat_cutting_turf_wetness_silu_bce_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="a peat-cutting 'turf too wet to cut' SiLU BCE classifier on noisy readings, AdamW with "
    "a no-decay bias group, ReduceLROnPlateau on a held-out batch, clipping at 1.0; control",
)
def h397_peat_cutting_control(ctx: Context) -> None:
    gen = seeded(39712)
    model = _MLP(10, hidden=48, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    vx, vy = next(_readings(torch.Generator().manual_seed(3), 256, 10, 3979, noise=0.2))

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, (y > 0.3).float())

    def plateau():
        with torch.no_grad():
            return float(loss_fn(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3979, noise=0.2),
        200,
        loss_fn,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell", _fell(ctx.losses))


class _ChiselNet(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    "stonemason_chisel_stroke_relu_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="a stonemason chisel-stroke ReLU Conv1d classifier under fp16 autocast with a "
    "GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, clipping at 1.0; control",
)
def h397_stonemason_control(ctx: Context) -> None:
    gen = seeded(39713)
    model = _ChiselNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 3980),
        160,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
