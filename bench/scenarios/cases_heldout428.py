"""Held-out set 428 (``h428_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a stonemason keystone-seat ReLU regressor on Adam with lr typed 1e-1 for 1e-3 (ReLUs
die), an axe-throw rebound regressor whose checkpoint reload restores the head from step 0 once
(a one-off loss spike), a dung-beetle ball-roll fp16 regressor whose label is in grams for
kilograms (fp16 overflow under GradScaler), a hang-drum rim-tone BCE net fed tasters' scores in
percent as soft labels (the head's logits grow without bound), a mangle-roller pressure two-group
regressor whose trunk lr is typed 5e-9 for 5e-3 (a frozen trunk), a farrier clinch-grade LoRA
fine-tune fed one forge's shard in tenths of a millimetre (one corrupted batch), a cobbler
welt-stitch classifier whose resumed step reads an unnormalised class-weight table (one gradient
burst), a bellows draw-rate net whose range normalisation divides by max - min with no epsilon (a
stuck sensor gives 0/0), a roof-slate split-line tanh regressor whose warm-up peak lr is typed
3.0 for 0.3 (past 2/sharpness) and a pole-climbing spur-grip cosine classifier whose scale is
typed 3000 for 30 (softmax saturates).

Controls: a ferrule-crimp LoRA fine-tune (rank 8, alpha 16, AdamW, linear decay), a tarp-rigging
gust fp16 classifier (GradScaler, SGD Nesterov under OneCycleLR, label smoothing, clipping) and a
lacquer-coat cure Huber regressor (Adadelta, ReduceLROnPlateau, accumulation, clipping).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


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
    attach=True,
    grads=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
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
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        g = grad_norm(model)
        if grads is not None:
            grads.append(g)
        if attach:
            ctx.grad_norms.append(g)
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Endless standardised readings and a smooth nonlinear target (times ``scale``)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_in, 16, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(16, 1, generator=g) / 4.0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + 0.3 * x[:, :1] + noise * torch.randn(batch, 1, generator=gen)
        yield x, scale * y


def _grades(gen, batch, d_in, classes, seed, noise=0.3):
    """Endless generated readings around one centre per grade."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + noise * 2.0 * torch.randn(batch, d_in, generator=gen)
        yield x, y


class _Net(nn.Module):
    """Two hidden layers with named activation modules (act1, act2) and a head."""

    def __init__(self, d_in, hidden, d_out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


# -- faults ----------------------------------------------------------------------------------------


def _keystone(lr, seed=4281, steps=200, ctx=None):
    gen = seeded(seed)
    model = _Net(12, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 12, seed)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 12, seed))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    losses = _loop(ctx, model, opt, batches, steps, F.mse_loss, after=after, attach=ctx is not None)
    return losses, dead


@scenario(
    "stonemason_keystone_seat_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    where=("act2",),
    heldout=True,
    note="Adam lr typed 1e-1 for 1e-3: the keystone-seat regressor's ReLUs in act2 die and stop "
    "learning.",
)
def h428_keystone_dead_relu(ctx):
    _, dead = _keystone(1e-1, ctx=ctx)
    _, dead_ref = _keystone(1e-3)
    ctx.check("over 40% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.4)
    ctx.check("under 20% dead at the intended lr 1e-3", _mean(dead_ref[-50:]) < 0.2)


@scenario(
    "axe_throw_rebound_relu_regressor",
    "SGD momentum",
    "loss_spike",
    where=("head",),
    heldout=True,
    onset=120,
    note="a checkpoint-reload hook left enabled restores the head from its step-0 snapshot once at "
    "step 120: a one-off loss spike the run recovers from.",
)
def h428_axe_head_reload_spike(ctx):
    gen = seeded(4282)
    model = _Net(10, 48, 1)
    snapshot = copy.deepcopy(model.head.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = _readings(gen, 64, 10, 4282, scale=3.0)

    def before(step):
        if step == 120:
            model.head.load_state_dict(snapshot)

    losses = _loop(ctx, model, opt, batches, 240, F.mse_loss, before=before)
    pre = _mean(losses[110:120])
    ctx.check("loss at step 120 over 5x the 10 steps before", losses[120] > 5 * pre)
    ctx.check(
        "recovers: last 20 steps under 1.5x the pre-onset mean", _mean(losses[-20:]) < 1.5 * pre
    )
    ctx.check("finite throughout", _finite(losses))


class _BeetleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "dung_beetle_ball_roll_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("head",),
    diverges=91,
    heldout=True,
    note="fp16 autocast with GradScaler; the ball-mass label is logged in grams, not kilograms, so "
    "the head's fp16 output is driven past 65504 and overflows to inf.",
)
def h428_beetle_fp16_overflow(ctx):
    gen = seeded(4283)
    model = _BeetleNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu")
    base = _readings(gen, 64, 8, 4283)

    def grams(step, x, y):
        return x, (y.abs() + 1.0) * 1e5

    seen = {}

    def hook(mod, inp, out):
        if out.dtype == torch.float16 and not torch.isfinite(out).all() and "step" not in seen:
            seen["step"] = len(ctx.losses)
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                full = F.linear(inp[0].float(), mod.weight.float(), mod.bias.float())
                seen["fp32"] = float(full.abs().max())

    model.head.register_forward_hook(hook)
    losses = _loop(ctx, model, opt, base, 300, F.mse_loss, alter=grams, scaler=scaler, amp=True)
    bad = _first_bad(losses)
    ctx.check("the head's fp16 output overflowed to inf", "step" in seen)
    ctx.check(
        "the same output in fp32 is finite and over 65504",
        math.isfinite(seen.get("fp32", math.inf)) and seen.get("fp32", 0.0) > 65504,
    )
    ctx.check("the loss is non-finite", bad is not None)


@scenario(
    "hang_drum_rim_tone_soft_label_bce_net",
    "RAdam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="the listeners' rim-tone scores are passed to BCEWithLogits in percent (0-100) instead of "
    "fractions: soft targets over 1 make the loss unbounded below and the head's logits grow.",
)
def h428_hang_drum_percent_targets(ctx):
    gen = seeded(4284)
    model = _Net(16, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 16, 4284)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 16, 4284))[0]
    peaks = []

    def percent(step, x, y):
        return x, 100.0 * torch.sigmoid(3.0 * y)

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    losses = _loop(
        ctx, model, opt, base, 200, F.binary_cross_entropy_with_logits, alter=percent, after=after
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.2 * peaks[-50])
    ctx.check("the 'loss' is below -10 at the end", losses[-1] < -10)


class _Trunk(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.trunk(x)))


@scenario(
    "mangle_roller_pressure_two_group_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("trunk.0",),
    heldout=True,
    note="two param groups; the trunk group's lr is typed 5e-9 for 5e-3, so the trunk's updates "
    "are far too small for its weights while the head learns.",
)
def h428_mangle_frozen_trunk(ctx):
    gen = seeded(4285)
    model = _Trunk(10, 48)
    opt = torch.optim.RMSprop(
        [
            {"params": model.trunk.parameters(), "lr": 5e-9},
            {"params": model.head.parameters(), "lr": 5e-3},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    got = []

    def after(step):
        got.append(
            model.trunk[0].weight.grad is not None and float(model.trunk[0].weight.grad.norm()) > 0
        )

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4285), 200, F.mse_loss, after=after)
    moved = float((model.trunk[0].weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("trunk.0 moved under 1e-5 of its norm", moved < 1e-5)
    ctx.check("trunk.0 received gradients every step", all(got))
    ctx.check("the head moved over 10%", head_moved > 0.1)
    ctx.check("finite", _finite(losses))


class _LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update B @ A scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


class _LoRAMLP(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def adapt(self, r, alpha):
        """Freeze the pretrained base and wrap fc1 and fc2 with LoRA adapters."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.fc1 = _LoRALinear(self.fc1, r, alpha)
        self.fc2 = _LoRALinear(self.fc2, r, alpha)
        return [p for p in self.parameters() if p.requires_grad]


def _pretrained_base(seed, classes):
    """Pretrain the base MLP on the first half of the digit classes (outside any monitor)."""
    gen = seeded(seed)
    model = _LoRAMLP(64, 64, classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    for _ in range(80):
        x, y = next(batches)
        keep = y < 5
        loss = F.cross_entropy(model(x[keep]), y[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, gen


@scenario(
    "farrier_clinch_lora_classifier",
    "Adamax",
    "data_outlier",
    heldout=True,
    onset=100,
    note="LoRA fine-tune (frozen base MLP, rank 4, alpha 8, B zero-initialised); one forge's shard "
    "at step 100 logs the clinch readings in tenths of a millimetre (x10 ... x40): one corrupted "
    "batch, clipped, the run recovers.",
)
def h428_farrier_lora_bad_shard(ctx):
    model, gen = _pretrained_base(4286, 10)
    params = model.adapt(4, 8.0)
    opt = torch.optim.Adamax(params + list(model.head.parameters()), lr=4e-3)
    for p in model.head.parameters():
        p.requires_grad_(True)
    grads = []

    def shard(step, x, y):
        if step == 100:
            return x * 40.0, y
        return x, y

    losses = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        alter=shard,
        clip=1.0,
        grads=grads,
    )
    pre = _mean(losses[90:100])
    ctx.check("loss at step 100 over 5x the 10 steps before", losses[100] > 5 * pre)
    ctx.check("gradient at step 100 over 20x the median", grads[100] > 20 * _median(grads[:100]))
    ctx.check(
        "recovers: last 20 steps under 1.5x the pre-onset mean", _mean(losses[-20:]) < 1.5 * pre
    )
    ctx.check("the zero-initialised B was trained", float(model.fc1.lora_B.detach().norm()) > 0)


@scenario(
    "cobbler_welt_stitch_asgd_classifier",
    "ASGD",
    "gradient_spike",
    heldout=True,
    onset=130,
    note="the resumed step 130 reloads the class-weight table as raw counts (about 300 per class) "
    "instead of normalised weights: one step's gradient bursts on an ordinary logged loss; "
    "clipped, the run recovers.",
)
def h428_cobbler_weight_burst(ctx):
    gen = seeded(4287)
    model = _Net(64, 64, 10)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    grads = []

    def backprop(step, loss):
        return loss * 300.0 if step == 130 else loss

    losses = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        240,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=2.0,
        grads=grads,
    )
    ctx.check(
        "gradient at step 130 over 50x the median before", grads[130] > 50 * _median(grads[:130])
    )
    ctx.check(
        "the logged loss at step 130 is ordinary (under 2x the 10 before)",
        losses[130] < 2 * _mean(losses[120:130]),
    )
    ctx.check("trained and finite", _fell(losses))


class _RangeNorm(nn.Module):
    """Per-batch min-max normalisation of each sensor channel (no epsilon: the bug)."""

    def forward(self, x):
        lo = x.min(0, keepdim=True).values
        hi = x.max(0, keepdim=True).values
        return (x - lo) / (hi - lo)


class _BellowsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(6, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.norm(x))))


@scenario(
    "bellows_draw_range_norm_net",
    "NAdam",
    "nonfinite",
    where=("norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="the min-max sensor normalisation divides by max - min with no epsilon; at step 70 the "
    "forge's draught sensor sticks at one value for a whole batch: 0/0 gives NaN.",
)
def h428_bellows_zero_range(ctx):
    gen = seeded(4288)
    model = _BellowsNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def stuck(step, x, y):
        if step >= 70:
            x = x.clone()
            x[:, 2] = 0.73
        return x, y

    losses = _loop(ctx, model, opt, _readings(gen, 32, 6, 4288), 150, F.mse_loss, alter=stuck)
    ctx.check("the loss is NaN at step 70", len(losses) > 70 and math.isnan(losses[70]))
    ctx.check("finite before step 70", _finite(losses[:70]))
    with torch.no_grad():
        x = torch.randn(8, 6)
        x[:, 2] = 0.73
        ctx.check("norm gives NaN on a constant channel", bool(torch.isnan(model.norm(x)).any()))


def _sharpness(model, x, y, iters=12):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return abs(lam)


@scenario(
    "roof_slate_split_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="a 100-step linear warm-up whose peak lr is typed 3.0 for 0.3: the lr passes "
    "2/sharpness during the warm-up and the loss blows up.",
)
def h428_slate_warmup_typo(ctx):
    gen = seeded(4289)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 3.0
    probe = next(_readings(torch.Generator().manual_seed(11), 256, 10, 4289))
    products = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0:
            products.append(lr * _sharpness(model, *probe))

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4289), 200, F.mse_loss, before=before)
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2)
    ctx.check("lr x sharpness past 2 later", max(p for p in products if math.isfinite(p)) > 2)
    ctx.check(
        "the loss blows up (over 100x its lowest, or non-finite)",
        _first_bad(losses) is not None or max(losses) > 100 * min(losses),
    )


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _SpurNet(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, 10, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    "pole_climb_spur_cosine_classifier",
    "Adagrad",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the cosine classifier's scale is typed 3000 for 30: the softmax saturates and the "
    "target probabilities round to exactly 1.0.",
)
def h428_spur_cosine_scale_typo(ctx):
    gen = seeded(4290)
    model = _SpurNet(3000.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    collapsed, intended = [], []
    held = next(digit_batches(torch.Generator().manual_seed(12), 256))

    def after(step):
        if step >= 120:
            with torch.no_grad():
                logits = model(held[0])
                collapsed.append(collapsed_fraction(logits, held[1]))
                intended.append(collapsed_fraction(logits / 100.0, held[1]))

    _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows' target probability exactly 1.0", _mean(collapsed) > 0.5)
    ctx.check("under 5% at the intended scale 30 on the same logits", _mean(intended) < 0.05)


# -- controls --------------------------------------------------------------------------------------


@scenario(
    "ferrule_crimp_lora_r8_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="LoRA fine-tune of a pretrained frozen base MLP (rank 8, alpha 16, B zero-initialised) "
    "with AdamW and a linear lr decay, onto the unseen crimp grades.",
)
def h428_ferrule_lora_healthy(ctx):
    model, gen = _pretrained_base(4291, 10)
    params = model.adapt(8, 16.0)
    for p in model.head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params + list(model.head.parameters()), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, total_iters=200)
    base_w = model.fc1.base.weight.detach().clone()
    losses = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.6))
    ctx.check("the base stayed frozen", torch.equal(base_w, model.fc1.base.weight))
    ctx.check("the adapters trained", float(model.fc2.lora_B.detach().norm()) > 0)


@scenario(
    "tarp_rigging_gust_fp16_mlp_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="fp16 autocast with GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, "
    "clipping on noisy generated gust readings.",
)
def h428_tarp_fp16_healthy(ctx):
    gen = seeded(4292)
    model = _Net(20, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 6, 4292),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.6))


@scenario(
    "lacquer_coat_cure_huber_regressor",
    "Adadelta",
    "healthy",
    heldout=True,
    note="noisy cure-time targets, Huber loss, Adadelta, ReduceLROnPlateau on a held-out batch, "
    "accumulation over 2, clipping.",
)
def h428_lacquer_huber_healthy(ctx):
    gen = seeded(4293)
    model = _Net(12, 48, 1, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(13), 256, 12, 4293, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 4293, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.7))
