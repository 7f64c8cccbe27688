"""Held-out set 590 (``h590_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: dhol drum-stroke classifier whose temperature is read in seconds from a milliseconds key
(softmax_collapse, Adamax); sled-dog harness-pull BCE classifier whose resumed step sums the
loss over the batch (gradient_spike, SGD Nesterov, accumulation); fumarole steam-flux
Gaussian-NLL net whose in-model sqrt(pressure - ambient) lost its clamp (nonfinite, RAdam);
glass-kiln anneal regressor under fp16 autocast fed kiln temperature in millikelvin
(amp_overflow, AdamW, GradScaler); lacrosse stick-pocket classifier fed one shard of raw ADC
counts (data_outlier, NAdam, clipping); saddle-tree fit regressor with SGD lr typed 4.0 for
0.04 (sharpness_above_limit, plain SGD); mudflat tide-ripple 10-deep ReLU MLP whose kaiming
gain is multiplied by a stray 2 (exploding_gradients, SGD momentum); thatcher reed-bundle
regressor whose fc1 group lr is typed 1e-9 (update_ratio_out_of_range, AdamW, param groups);
kite-surf line-tension regressor whose hand-written weight decay has its sign flipped
(loss_divergence, RMSprop); jai-alai cesta-catch cosine classifier whose learnable log logit
scale has no clamp (output_logit_divergence, Adam, param groups).
Controls: quilting stitch-pattern continual classifier, task switch at step 100 with a replay
buffer (stability gap, alarming-looking, AdamW, warm-up + cosine); dune slip-face avalanche
deep equilibrium regressor (fixed-point iteration, gradient through the last iterations, Adam,
OneCycleLR, clipping); bagpipe chanter-reed Huber regressor (Adagrad, ReduceLROnPlateau,
clipping, heavy-tailed noisy targets).
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
        total = backprop(step, loss, x, y) if backprop is not None else loss
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
        super().__init__(d_in, 48, k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "dhol_drum_stroke_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config stores temperature_ms=2.0 and the model reads it as seconds through a "
    "'/1000' conversion meant for another key, so the logits are divided by 0.002: the float32 "
    "softmax rounds most rows' target probability to exactly 1.0",
)
def h590_dhol_drum_stroke_temperature_classifier(ctx):
    gen = seeded(5901)
    cfg = {"temperature_ms": 2.0}
    model = _TempNet(20, 6, cfg["temperature_ms"] / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 20, 6, 59011)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "sled_dog_harness_pull_accum_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=130,
    note="2-micro-batch gradient accumulation; the step resumed from a checkpoint at 130 builds "
    "its loss with reduction='sum' instead of 'mean' (a leftover from a debugging run), so that "
    "one step's gradient is ~64x; the logged loss is the ordinary mean; clipping keeps it in check",
)
def h590_sled_dog_harness_pull_accum_bce_classifier(ctx):
    gen = seeded(5902)
    g = torch.Generator().manual_seed(59021)
    w = torch.randn(12, generator=g)
    model = _Net(12, 40, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        reduction = "sum" if step == 130 else "mean"
        logged = 0.0
        for _ in range(2):
            x = torch.randn(64, 12, generator=gen)
            y = ((x @ w + 0.5 * torch.randn(64, generator=gen)) > 0).float()
            out = model(x)
            loss = F.binary_cross_entropy_with_logits(out, y)
            F.binary_cross_entropy_with_logits(out, y, reduction=reduction).div(2).backward()
            logged += float(loss.detach()) / 2
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    before = _median(norms[100:130])
    ctx.check("the gradient at step 130 is over 30x the median before", norms[130] > 30 * before)
    ctx.check("the logged loss at 130 is ordinary", losses[130] < 2 * _mean(losses[120:130]))
    ctx.check("the run trains and stays finite", _fell(losses))


class _VentRoot(nn.Module):
    """sqrt(pressure - ambient) of the first reading; the clamp at 0 was dropped."""

    def __init__(self, ambient):
        super().__init__()
        self.ambient = ambient

    def forward(self, x):
        return torch.cat([torch.sqrt(x[:, :1] - self.ambient), x[:, 1:]], 1)


class _FluxNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.vent_root = _VentRoot(1.0)
        self.fc1 = nn.Linear(d_in, 48)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        h = self.act(self.fc2(self.act(self.fc1(self.vent_root(x)))))
        return self.head(h)


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()


@scenario(
    "fumarole_steam_vent_sqrt_flux_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("vent_root",),
    diverges=90,
    heldout=True,
    onset=90,
    note="flux feature sqrt(vent pressure - ambient) with the clamp(min=0) dropped in a "
    "refactor; at step 90 a batch from a cooling vent has pressure below ambient and the sqrt "
    "of a negative gives NaN, so the loss is NaN",
)
def h590_fumarole_steam_vent_sqrt_flux_gaussian_nll_net(ctx):
    gen = seeded(5903)
    model = _FluxNet(8)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 8, 59031, noise=0.1)
    seen = {}

    def alter(step, x, y):
        p = 1.5 + 0.3 * torch.rand(len(x), 1, generator=gen)
        if step == 90:
            p[:8] = 0.6
        return torch.cat([p, x[:, 1:]], 1), y + 0.5 * (p[:, 0] - 1.5)

    def hook(mod, inp, out):
        seen["nan"] = bool(torch.isnan(out).any())

    model.vent_root.register_forward_hook(hook)
    losses, _ = _loop(ctx, model, opt, base, 200, _gauss_nll, alter=alter)
    ctx.check("finite before step 90", _finite(losses[:90]))
    ctx.check("the loss is NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))
    ctx.check("vent_root's output holds NaN", seen.get("nan", False))


@scenario(
    "glass_kiln_anneal_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=80,
    heldout=True,
    onset=80,
    note="fp16 autocast with a GradScaler; from step 80 the kiln logger's new firmware reports "
    "the anneal temperature in millikelvin instead of kelvin/1000 and nobody rescales it: fc1's "
    "fp16 output overflows to inf (it is finite in float32), the loss is NaN",
)
def h590_glass_kiln_anneal_fp16_gelu_regressor(ctx):
    gen = seeded(5904)
    model = _Net(10, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 59041)
    losses, seen = [], {}
    for step in range(160):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = (x[:, 0] * 0.1 + 0.8) * 1e6  # millikelvin
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        if step == 80:
            seen["fp16"] = bool(torch.isfinite(h).all())
            seen["fp32"] = bool(torch.isfinite(model.fc1(x.float())).all())
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
    ctx.check("trained and finite before step 80", _fell(losses[:80]))
    ctx.check("fc1's fp16 output is non-finite at 80", seen.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at 80", seen.get("fp32") is True)
    ctx.check("the loss is non-finite at 80", len(losses) == 81 and not math.isfinite(losses[80]))


@scenario(
    "lacrosse_stick_pocket_shard_gelu_classifier",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=120,
    note="one data shard was written from raw 12-bit ADC counts of the stringing-tension "
    "sensors instead of newtons; its batch at step 120 is 2048 + 400x the reading, the loss and gradient "
    "jump, clipping limits the update and the run recovers",
)
def h590_lacrosse_stick_pocket_shard_gelu_classifier(ctx):
    gen = seeded(5905)
    model = _Net(16, 48, 5, nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 16, 5, 59051)

    def alter(step, x, y):
        return (2048.0 + 400.0 * x, y) if step == 120 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, batches, 220, F.cross_entropy, classifier=True, alter=alter, clip=1.0
    )
    pre = _mean(losses[100:120])
    ctx.check("the loss at 120 is over 20x the steps before", losses[120] > 20 * pre)
    ctx.check(
        "the gradient at 120 is over 10x the median", norms[120] > 10 * _median(norms[100:120])
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 2 * pre + 0.05)


@scenario(
    "saddle_tree_fit_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 4.0 for 0.04; lr x top Hessian eigenvalue is past 2 from "
    "step 0 and the loss blows up",
)
def h590_saddle_tree_fit_lr_typo_tanh_regressor(ctx):
    gen = seeded(5906)
    model = _Net(12, 48, 1, nn.Tanh)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 12, 59061)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x sharpness is past 2 at step 0", lr * eig > 2)
    ctx.check(
        "the loss blows up",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


class _DeepNet(nn.Sequential):
    def __init__(self, d_in, width, depth, gain):
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)


@scenario(
    "mudflat_tide_ripple_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="10-deep ReLU MLP; after kaiming_normal_ (already relu's gain) the init helper "
    "multiplies every weight by a stray gain of 1.6, so signals grow 1.6x per layer: the backward "
    "signal at the first layer is far larger than at the last and SGD with momentum blows up",
)
def h590_mudflat_tide_ripple_deep_relu_mlp(ctx):
    gen = seeded(5907)
    model = _DeepNet(10, 32, 10, 1.6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 10, 59071)
    x0, y0 = next(batches)
    outs = {}
    hooks = [
        model[i].register_forward_hook(lambda m, a, o, i=i: outs.update({i: o})) for i in (0, 18)
    ]
    loss0 = F.mse_loss(model(x0).squeeze(-1), y0)
    for h in hooks:
        h.remove()
    g_first, g_last = torch.autograd.grad(loss0, [outs[0], outs[18]])
    ratio = float(g_first.norm() / (g_last.norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 120, lambda o, y: F.mse_loss(o.squeeze(-1), y))
    ctx.check("backward signal at layer 0 over 20x the tenth layer's at step 0", ratio > 20)
    ctx.check("the loss blows up", not _finite(losses) or max(losses) > 100 * _median(losses[:5]))


@scenario(
    "thatcher_reed_bundle_frozen_group_regressor",
    "AdamW",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: fc1's lr typed 1e-9 for 1e-3 in the fine-tuning config, so fc1 never "
    "moves while fc2 and the head train; the loss still falls, slowly",
)
def h590_thatcher_reed_bundle_frozen_group_regressor(ctx):
    gen = seeded(5908)
    model = _Net(14, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
        weight_decay=0.01,
    )
    batches = _readings(gen, 64, 14, 59081)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.smooth_l1_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc1 moved less than 1e-5 relative", d1 < 1e-5)
    ctx.check("fc2 moved over 1e-2 relative", d2 > 1e-2)
    ctx.check("the loss is finite", _finite(losses))


@scenario(
    "kite_surf_line_tension_decay_sign_regressor",
    "RMSprop",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay p -= -wd * p (the minus sign doubled when it was "
    "moved out of the optimizer): weights grow a little every step and the loss climbs slowly "
    "with no jump",
)
def h590_kite_surf_line_tension_decay_sign_regressor(ctx):
    gen = seeded(5909)
    model = _Net(10, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    wd = 0.01
    batches = _readings(gen, 64, 10, 59091)
    w0 = float(_flat(model).norm())

    def loop_decay():
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(-wd * p)

    class _Sched:
        def step(self):
            loop_decay()

    losses, _ = _loop(ctx, model, opt, batches, 250, F.mse_loss, sched=_Sched())
    best = min(losses)
    jumps = max(b / max(a, 1e-12) for a, b in zip(losses[:-1], losses[1:], strict=True))
    ctx.check("weights' norm over 2x the start", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss ends over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no single step jumps over 3x", jumps < 3)
    ctx.check("the loss is finite", _finite(losses))


class _CosineHead(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, d) * 0.1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos  # the clamp(max=log 100) was dropped


class _CestaNet(nn.Module):
    def __init__(self, d_in, k):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = _CosineHead(48, k)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    "jai_alai_cesta_catch_logit_scale_classifier",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="cosine-similarity head with a learnable log logit scale (own param group, lr 0.1) "
    "whose clamp at log(100) was dropped; on separable catches the scale keeps climbing and the "
    "head's logits grow without bound",
)
def h590_jai_alai_cesta_catch_logit_scale_classifier(ctx):
    gen = seeded(5910)
    model = _CestaNet(16, 4)
    opt = torch.optim.Adam(
        [
            {"params": [p for n, p in model.named_parameters() if n != "head.log_scale"]},
            {"params": [model.head.log_scale], "lr": 0.1},
        ],
        lr=1e-3,
    )
    batches = _classes(gen, 64, 16, 4, 59101, spread=2.5, noise=0.5)
    mags, scales = [], []

    def after(step, out, y):
        mags.append(float(out.abs().max()))
        scales.append(float(model.head.log_scale.detach()))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("head logits over 20x their start", mags[-1] > 20 * mags[0])
    ctx.check(
        "the log scale ends at its highest, never pulled back", scales[-1] >= max(scales) - 1e-3
    )
    ctx.check("the loss is finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "quilting_stitch_pattern_replay_continual_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="continual learning: stitch patterns of task A (classes 0-4) for 100 steps, then task B "
    "(classes 5-9) with a replay buffer of task A making a quarter of each batch; the loss jumps "
    "at the switch and then falls (the stability gap); linear warm-up then cosine",
)
def h590_quilting_stitch_pattern_replay_continual_classifier(ctx):
    gen = seeded(5911)
    model = _Net(16, 64, 10, nn.ReLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total = 220

    def lr_at(s):
        if s < 15:
            return (s + 1) / 15
        return 0.5 * (1 + math.cos(math.pi * (s - 15) / (total - 15))) * 0.9 + 0.1

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(59111)
    protos = 1.5 * torch.randn(10, 16, generator=g)
    buffer_x, buffer_y = [], []

    def draw(lo, n):
        y = torch.randint(lo, lo + 5, (n,), generator=gen)
        return protos[y] + torch.randn(n, 16, generator=gen), y

    def batches():
        step = 0
        while True:
            if step < 100:
                x, y = draw(0, 64)
                if step % 5 == 0:
                    buffer_x.append(x[:16])
                    buffer_y.append(y[:16])
            else:
                xb, yb = torch.cat(buffer_x), torch.cat(buffer_y)
                idx = torch.randint(0, len(yb), (16,), generator=gen)
                xn, yn = draw(5, 48)
                x, y = torch.cat([xn, xb[idx]]), torch.cat([yn, yb[idx]])
            step += 1
            yield x, y

    losses, _ = _loop(
        ctx, model, opt, batches(), total, F.cross_entropy, classifier=True, sched=sched, clip=5.0
    )
    xa, ya = draw(0, 512)
    with torch.no_grad():
        acc_a = float((model(xa).argmax(1) == ya).float().mean())
    pre = _mean(losses[90:100])
    ctx.check("the loss jumps at the task switch", max(losses[100:105]) > 3 * pre)
    ctx.check("then falls back", _mean(losses[-10:]) < 0.3 * max(losses[100:105]))
    ctx.check("task A is kept by the replay (accuracy over 0.8)", acc_a > 0.8)
    ctx.check("the loss is finite", _finite(losses))


class _DEQ(nn.Module):
    """z* = tanh(cell(z) + inject(x)), solved by iteration; the gradient flows through the
    last two iterations only (a phantom gradient)."""

    def __init__(self, d_in, d):
        super().__init__()
        self.inject = nn.Linear(d_in, d)
        self.cell = nn.Linear(d, d, bias=False)
        nn.init.orthogonal_(self.cell.weight, gain=0.5)
        self.head = nn.Linear(d, 1)
        self.residual = 0.0

    def forward(self, x):
        u = self.inject(x)
        z = torch.zeros_like(u)
        with torch.no_grad():
            for _ in range(30):
                z = torch.tanh(self.cell(z) + u)
        for _ in range(2):
            z = torch.tanh(self.cell(z) + u)
        self.residual = float(
            (torch.tanh(self.cell(z) + u) - z).norm().detach() / (z.norm().detach() + 1e-9)
        )
        return self.head(z).squeeze(-1)


@scenario(
    "dune_slipface_avalanche_deq_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="deep equilibrium regressor: a tanh layer iterated to its fixed point, gradient "
    "through the last two iterations; Adam with OneCycleLR and clipping at 1.0",
)
def h590_dune_slipface_avalanche_deq_regressor(ctx):
    gen = seeded(5912)
    model = _DEQ(10, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    batches = _readings(gen, 64, 10, 59121)
    losses, _ = _loop(ctx, model, opt, batches, steps, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("the fixed point is reached (residual < 1e-3)", model.residual < 1e-3)


@scenario(
    "bagpipe_chanter_reed_huber_regressor",
    "Adagrad",
    "healthy",
    heldout=True,
    note="reed-pitch Huber regressor with heavy-tailed (Student-t, 2 dof) target noise; Adagrad, "
    "ReduceLROnPlateau, clipping at 1.0",
)
def h590_bagpipe_chanter_reed_huber_regressor(ctx):
    gen = seeded(5913)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 12, 59131, noise=0.0)
    t = torch.distributions.StudentT(2.0)

    def alter(step, x, y):
        return x, y + 0.2 * t.sample((len(y),))

    losses, _ = _loop(
        ctx, model, opt, base, 200, F.huber_loss, alter=alter, clip=1.0, plateau=plateau
    )
    ctx.check("the loss fell", _fell(losses, k=20, ratio=0.7))
    ctx.check("the loss is finite", _finite(losses))
