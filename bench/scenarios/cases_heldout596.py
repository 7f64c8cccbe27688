"""Held-out set 596 (``h596_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: luge-sled steering-corner classifier whose temperature is read in seconds from a
milliseconds key (softmax_collapse, Adamax); fire-poi spin BCE classifier whose one re-weighted
step reads a loss weight of 100 for 1.0 (gradient_spike, SGD Nesterov, accumulation);
saltworks brine-pan Gaussian-NLL net whose in-model log(salinity) lost its clamp (nonfinite,
RAdam); thermite rail-weld regressor under fp16 autocast fed the pyrometer in millikelvin
(amp_overflow, AdamW, GradScaler); ghillie salmon-pool lie classifier fed one shard of river
gauge in millimetres (data_outlier, NAdam, clipping); roofing-slate split regressor with SGD lr
typed 3.0 for 0.03 (sharpness_above_limit, plain SGD); well-digging water-table 12-deep ReLU MLP
whose init gain is applied twice (exploding_gradients, SGD momentum); glassblower gaffer-gather
Huber regressor whose fc2 group lr falls back to 0.0 on a misspelled key
(update_ratio_out_of_range, Adam, param groups); chalk-figure scour regressor whose hand-written
weight decay has its sign flipped (loss_divergence, RMSprop centered); moon-halo arc cosine
classifier whose learnable log logit scale has no clamp (output_logit_divergence, Adam, groups).
Controls: shogi piece-drop LLaMA-style decoder (RoPE, RMSNorm, SwiGLU, tied embeddings) under
bfloat16 autocast (alarming-looking: noisy last digits, AdamW, warm-up + cosine, clipping);
dogsled runner-wax glide regressor (ASGD, OneCycleLR, clipping); cane-toad chorus call classifier
(Adagrad, ReduceLROnPlateau, 2-step accumulation, label smoothing, noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded, text_batches


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
        y = torch.sin(1.1 * x @ w / math.sqrt(d_in)) + 0.4 * (x @ v / math.sqrt(d_in)) ** 2
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
        super().__init__(d_in, 48, k, nn.SiLU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "luge_sled_steer_corner_temperature_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config key is softmax_temp_ms=1.5 and the model divides it by 1000 as if it were "
    "seconds, so the head's logits are divided by 0.0015: the float32 softmax rounds most rows' "
    "target probability to exactly 1.0",
)
def h596_luge_sled_steer_corner_temperature_classifier(ctx):
    gen = seeded(5961)
    cfg = {"softmax_temp_ms": 1.5}
    model = _TempNet(18, 7, cfg["softmax_temp_ms"] / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 18, 7, 59611)
    last = {}

    def after(step, out, y):
        last["frac"] = collapsed_fraction(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check("over 40% of rows' target probability is exactly 1.0", last.get("frac", 0) > 0.4)
    ctx.check("the loss stays finite", _finite(losses))


@scenario(
    "fire_poi_spin_weave_accum_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=140,
    note="3-micro-batch gradient accumulation with a per-step loss weight table for a curriculum; "
    "the entry for step 140 was typed 100 for 1.00, so that one step's gradient is ~100x; the "
    "logged loss is the unweighted mean; clipping keeps it in check and the run goes on",
)
def h596_fire_poi_spin_weave_accum_bce_classifier(ctx):
    gen = seeded(5962)
    g = torch.Generator().manual_seed(59621)
    w = torch.randn(10, generator=g)
    model = _Net(10, 40, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.04, momentum=0.9, nesterov=True)
    weights = {140: 100.0}
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(220):
        logged = 0.0
        for _ in range(3):
            x = torch.randn(48, 10, generator=gen)
            y = ((x @ w + 0.6 * torch.randn(48, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * weights.get(step, 1.0) / 3).backward()
            logged += float(loss.detach()) / 3
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    before = _median(norms[110:140])
    ctx.check("the gradient at step 140 is over 30x the median before", norms[140] > 30 * before)
    ctx.check("the logged loss at 140 is ordinary", losses[140] < 2 * _mean(losses[130:140]))
    ctx.check("the run trains and stays finite", _fell(losses))


class _LogSalinity(nn.Module):
    """log(salinity) of the first reading; the clamp(min=1e-3) was dropped."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _BrineNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.log_salinity = _LogSalinity()
        self.fc1 = nn.Linear(d_in, 48)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(self.log_salinity(x))))))


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (logvar + (y - mean) ** 2 / logvar.exp())).mean()


@scenario(
    "saltworks_brine_pan_log_salinity_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("log_salinity",),
    diverges=100,
    heldout=True,
    onset=100,
    note="evaporation-yield Gaussian-NLL net with an in-model log(salinity) feature whose "
    "clamp(min=1e-3) was dropped in a refactor; at step 100 a batch holds readings of a pan that "
    "was just flushed with fresh water, where the conductivity probe's offset reads salinity "
    "-0.02: the log of a negative is NaN and the loss is NaN",
)
def h596_saltworks_brine_pan_log_salinity_gaussian_nll_net(ctx):
    gen = seeded(5963)
    model = _BrineNet(9)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 9, 59631, noise=0.1)
    seen = {}

    def alter(step, x, y):
        s = 0.5 + torch.rand(len(x), 1, generator=gen)
        if step == 100:
            s[:5] = -0.02
        return torch.cat([s, x[:, 1:]], 1), y + 0.5 * torch.log(s[:, 0].clamp(min=1e-3))

    def hook(mod, inp, out):
        seen["nan"] = bool(torch.isnan(out).any())

    model.log_salinity.register_forward_hook(hook)
    losses, _ = _loop(ctx, model, opt, base, 200, _gauss_nll, alter=alter)
    ctx.check("finite before step 100", _finite(losses[:100]))
    ctx.check(
        "the loss is non-finite at step 100", len(losses) == 101 and not math.isfinite(losses[100])
    )
    ctx.check("log_salinity's output holds NaN", seen.get("nan", False))


@scenario(
    "thermite_rail_weld_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="fp16 autocast with a GradScaler; from step 70 the replacement pyrometer on the weld "
    "crucible reports the pour temperature in millikelvin instead of kilokelvin and the loader is "
    "not told: fc1's fp16 output overflows to inf (it is finite in float32), the loss is NaN",
)
def h596_thermite_rail_weld_fp16_gelu_regressor(ctx):
    gen = seeded(5964)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 8, 59641)
    losses, seen = [], {}
    for step in range(150):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = (2.7 + 0.1 * x[:, 0]) * 1e6  # millikelvin, was kilokelvin
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        if step == 70:
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
    ctx.check("trained and finite before step 70", _fell(losses[:70]))
    ctx.check("fc1's fp16 output is non-finite at 70", seen.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at 70", seen.get("fp32") is True)
    ctx.check("the loss is non-finite at 70", len(losses) == 71 and not math.isfinite(losses[70]))


@scenario(
    "ghillie_salmon_pool_lie_shard_classifier",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one data shard of river-gauge features was exported in millimetres instead of "
    "standardised metres; its batch at step 110 holds four gauge features near 800, the loss and gradient jump, "
    "clipping limits the update and the run recovers",
)
def h596_ghillie_salmon_pool_lie_shard_classifier(ctx):
    gen = seeded(5965)
    model = _Net(14, 48, 6, nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 14, 6, 59651)

    def alter(step, x, y):
        if step != 110:
            return x, y
        x = x.clone()
        x[:, :4] = 1000.0 * (0.8 + 0.1 * x[:, :4])  # gauge in mm, was a standardised metre
        return x, y

    losses, norms = _loop(
        ctx, model, opt, batches, 220, F.cross_entropy, classifier=True, alter=alter, clip=1.0
    )
    pre = _mean(losses[90:110])
    ctx.check("the loss at 110 is over 20x the steps before", losses[110] > 20 * pre)
    ctx.check(
        "the gradient at 110 is over 10x the median", norms[110] > 10 * _median(norms[90:110])
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 2 * pre + 0.05)


@scenario(
    "roofing_slate_split_thickness_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 3.0 for 0.03; lr x top Hessian eigenvalue is past 2 from "
    "step 0 and the loss blows up",
)
def h596_roofing_slate_split_thickness_lr_typo_tanh_regressor(ctx):
    gen = seeded(5966)
    model = _Net(11, 48, 1, nn.Tanh)
    lr = 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 11, 59661)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr x sharpness is past 2 at step 0", lr * eig > 2)
    ctx.check("the loss blows up", not _finite(losses) or max(losses) > 100 * losses[0])


class _DeepNet(nn.Sequential):
    def __init__(self, d_in, width, depth, gain):
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)


@scenario(
    "well_digging_water_table_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="12-deep ReLU MLP; the init helper draws std = gain / sqrt(fan_in) and the config "
    "gives gain 2.2 (copied from another model's setting) where ReLU's sqrt(2) = 1.41 was "
    "meant: signals grow ~1.55x per layer, the backward signal at the first layer is far larger "
    "than at the last and SGD with momentum blows up",
)
def h596_well_digging_water_table_deep_relu_mlp(ctx):
    gen = seeded(5967)
    model = _DeepNet(9, 32, 12, 2.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _readings(gen, 64, 9, 59671)
    x0, y0 = next(batches)
    outs = {}
    last = 2 * 11
    hooks = [
        model[i].register_forward_hook(lambda m, a, o, i=i: outs.update({i: o})) for i in (0, last)
    ]
    loss0 = F.mse_loss(model(x0).squeeze(-1), y0)
    for h in hooks:
        h.remove()
    g_first, g_last = torch.autograd.grad(loss0, [outs[0], outs[last]])
    ratio = float(g_first.norm() / (g_last.norm() + 1e-30))
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, batches, 120, lambda o, y: F.mse_loss(o.squeeze(-1), y))
    ctx.check("backward signal at layer 0 over 20x the twelfth layer's at step 0", ratio > 20)
    ctx.check("the loss blows up", not _finite(losses) or max(losses) > 100 * _median(losses[:5]))


@scenario(
    "glassblower_gaffer_gather_frozen_group_huber_regressor",
    "Adam",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="param groups built from a config dict: fc2's group reads cfg.get('fc2_lr', 0.0) but "
    "the config spells the key 'fc2_Lr', so fc2's lr is 0 and it never moves while fc1 and the "
    "head train; the loss still falls",
)
def h596_glassblower_gaffer_gather_frozen_group_huber_regressor(ctx):
    gen = seeded(5968)
    model = _Net(12, 48, 1, nn.GELU)
    cfg = {"lr": 2e-3, "fc2_Lr": 2e-3}
    opt = torch.optim.Adam(
        [
            {"params": list(model.fc1.parameters()) + list(model.head.parameters())},
            {"params": model.fc2.parameters(), "lr": cfg.get("fc2_lr", 0.0)},
        ],
        lr=cfg["lr"],
    )
    batches = _readings(gen, 64, 12, 59681)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.huber_loss)
    d1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    d2 = float((_flat(model.fc2) - w2).norm() / w2.norm())
    ctx.check("fc2 did not move at all", d2 == 0.0)
    ctx.check("fc1 moved over 1e-2 relative", d1 > 1e-2)
    ctx.check("the loss fell and is finite", _fell(losses, ratio=0.9))


@scenario(
    "chalk_figure_scour_depth_decay_sign_regressor",
    "RMSprop",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay p.add_(wd * p) after the step (it should be "
    "p.sub_): every weight grows a little every step and the loss climbs slowly with no jump; "
    "RMSprop centered",
)
def h596_chalk_figure_scour_depth_decay_sign_regressor(ctx):
    gen = seeded(5969)
    model = _Net(10, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4, centered=True)
    wd = 0.008
    batches = _readings(gen, 128, 10, 59691)
    w0 = float(_flat(model).norm())

    class _Decay:
        def step(self):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(wd * p)

    losses, _ = _loop(ctx, model, opt, batches, 250, F.mse_loss, sched=_Decay())
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
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos  # the clamp(max=log 100) was dropped


class _HaloNet(nn.Module):
    def __init__(self, d_in, k):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = _CosineHead(48, k)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


@scenario(
    "moon_halo_arc_type_logit_scale_classifier",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="cosine-similarity head with a learnable log logit scale (own param group, lr 0.15) "
    "whose clamp at log(100) was dropped; the halo arcs are separable, the scale keeps climbing "
    "and the head's logits grow without bound",
)
def h596_moon_halo_arc_type_logit_scale_classifier(ctx):
    gen = seeded(5970)
    model = _HaloNet(15, 5)
    opt = torch.optim.Adam(
        [
            {"params": [p for n, p in model.named_parameters() if n != "head.log_scale"]},
            {"params": [model.head.log_scale], "lr": 0.15},
        ],
        lr=1e-3,
    )
    batches = _classes(gen, 64, 15, 5, 59701, spread=2.5, noise=0.5)
    mags, scales = [], []

    def after(step, out, y):
        mags.append(float(out.abs().max()))
        scales.append(float(model.head.log_scale.detach()))

    losses, _ = _loop(ctx, model, opt, batches, 250, F.cross_entropy, classifier=True, after=after)
    ctx.check("head logits over 20x their start", mags[-1] > 20 * mags[0])
    ctx.check(
        "the log scale ends at its highest, never pulled back", scales[-1] >= max(scales) - 1e-3
    )
    ctx.check("the loss is finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


class _RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * (
            self.weight
        )


def _rope(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class _RopeAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = (
            p(x).reshape(b, t, self.heads, -1).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class _SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.input_norm = _RMSNorm(d)
        self.self_attn = _RopeAttention(d, heads)
        self.post_attn_norm = _RMSNorm(d)
        self.mlp = _SwiGLU(d, 96)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_norm(x), cos, sin)
        return x + self.mlp(self.post_attn_norm(x))


class _ShogiLlama(nn.Module):
    """LLaMA-style decoder: rotary positions, RMSNorm, SwiGLU, head tied to the embedding."""

    def __init__(self, vocab=128, d=48, heads=4, layers=2, context=32):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_LlamaBlock(d, heads) for _ in range(layers))
        self.norm = _RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(context).float()[:, None] * inv[None]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, self.cos[:t], self.sin[:t])
        return self.lm_head(self.norm(x))


@scenario(
    "shogi_piece_drop_rotary_bf16_decoder",
    "AdamW",
    "healthy",
    heldout=True,
    note="LLaMA-style decoder (rotary embeddings, RMSNorm, SwiGLU, tied embedding/head) on "
    "game-record bytes under bfloat16 autocast (no GradScaler needed); the loss is noisier in "
    "its last digits than in float32, which looks alarming but is healthy; AdamW with linear "
    "warm-up then cosine, clipping at 1.0",
)
def h596_shogi_piece_drop_rotary_bf16_decoder(ctx):
    gen = seeded(5971)
    model = _ShogiLlama()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    total = 160

    def lr_at(s):
        if s < 20:
            return (s + 1) / 20
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 20) / (total - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = text_batches(gen, batch=16, length=32)
    ctx.attach(model, opt)
    losses, gaps = [], []
    for step in range(total):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, 128), y.reshape(-1))
        if step % 40 == 0:
            with torch.no_grad():
                ref = F.cross_entropy(model(x).reshape(-1, 128), y.reshape(-1))
            gaps.append(abs(float(loss.detach()) - float(ref)))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _fell(losses, ratio=0.75))
    ctx.check("bf16 loss differs from float32 in its last digits", max(gaps) > 1e-5)
    ctx.check(
        "the head is tied to the embedding", model.lm_head.weight is model.embed_tokens.weight
    )


@scenario(
    "dogsled_wax_runner_glide_onecycle_regressor",
    "ASGD",
    "healthy",
    heldout=True,
    note="runner-wax glide regressor (SiLU MLP, MSE); ASGD with OneCycleLR (no momentum "
    "cycling) and clipping at 1.0",
)
def h596_dogsled_wax_runner_glide_onecycle_regressor(ctx):
    gen = seeded(5972)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02, t0=100)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.08, total_steps=steps, cycle_momentum=False
    )
    batches = _readings(gen, 64, 10, 59721)
    losses, _ = _loop(ctx, model, opt, batches, steps, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("the loss fell", _fell(losses, ratio=0.6))


@scenario(
    "cane_toad_chorus_call_label_smoothing_classifier",
    "Adagrad",
    "healthy",
    heldout=True,
    note="call-type classifier on noisy night recordings (a tenth of each batch's labels "
    "flipped at random); 2-step gradient accumulation, label smoothing 0.1, Adagrad, "
    "ReduceLROnPlateau",
)
def h596_cane_toad_chorus_call_label_smoothing_classifier(ctx):
    gen = seeded(5973)
    model = _Net(16, 64, 8, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    batches = _classes(gen, 32, 16, 8, 59731, spread=1.2)
    ctx.attach(model, opt)
    losses = []
    for _step in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 8, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        plateau.step(logged)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("the loss fell", _fell(losses, ratio=0.7))
    ctx.check("accuracy over 0.6", acc > 0.6)
