"""Held-out set 620 (``h620_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 5.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed quadratic-ish score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    v = torch.randn(n_in, k, generator=gen) / 3
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w + (x**2) @ v).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


class Net3(nn.Module):
    def __init__(self, n_in: int, hidden: int, out: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of loss_fn(model) by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
        lam = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="saber_parry_riposte_timing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=10,
    heldout=True,
    note="linear warm-up to a peak lr typed 2.0 instead of 0.2 (plain SGD, MSE): once lr passes "
    "2/sharpness (about step 10, measured by Hessian power iteration) the loss oscillates and blows up",
)
def h620_saber_riposte_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6201)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _regression(gen)
    peak, warm = 2.0, 60  # bug: peak should be 0.2
    fixed = next(batches)
    products: list[tuple[int, float]] = []
    for step in range(150):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 5 == 0 and math.isfinite(float(loss.detach())) and float(loss.detach()) < 10:
            sharp = _top_eig(model, lambda m: F.mse_loss(m(fixed[0]), fixed[1]))
            products.append((step, lr * sharp))
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell early", min(ls[:30]) < 0.7 * ls[0])
    ctx.check("lr x sharpness over 2 before the blow-up", any(p > 2 for _, p in products))
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2 if products else False)
    ctx.check(
        "loss blows up (non-finite or over 100x its best)",
        any(not math.isfinite(v) or v > 100 * min(ls) for v in ls),
    )


@scenario(
    family="shoe_last_heel_pitch_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Adagrad lr typed 0.5 for 0.05: Adagrad's first steps move every weight by about lr, "
    "fc2's ReLU units are pushed negative on every input and die; the loss stalls",
)
def h620_shoe_last_adagrad_lr_typo_dead_relu(ctx: Context) -> None:
    gen = seeded(6202)
    model = Net3(12, 64, 5, nn.ReLU())
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)  # bug: 0.05
    ctx.attach(model, opt)
    batches = _classes(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc2.register_forward_hook(lambda m, i, o: seen.__setitem__("fc2", o.detach()))
    dead: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        dead.append(dead_fraction(seen["fc2"]))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    twin_gen = seeded(6202)
    twin = Net3(12, 64, 5, nn.ReLU())
    twin_opt = torch.optim.Adagrad(twin.parameters(), lr=0.05)
    twin_batches = _classes(twin_gen)
    twin_ls: list[float] = []
    for _ in range(200):
        x, y = next(twin_batches)
        twin_loss = F.cross_entropy(twin(x), y)
        twin_loss.backward()
        twin_opt.step()
        twin_opt.zero_grad(set_to_none=True)
        twin_ls.append(float(twin_loss.detach()))
    ctx.check("under 20% of fc2 units dead at start", dead[0] < 0.2)
    ctx.check("over 60% of fc2 units dead at the end", dead[-1] > 0.6)
    ctx.check(
        "loss stalls: last 50 steps' mean over 1.5x the same model's at lr 0.05",
        sum(ls[-50:]) > 1.5 * sum(twin_ls[-50:]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="rowing_oar_blade_catch_angle_leaky_mlp",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's group keeps lr=0.0 left over from a frozen-backbone "
    "fine-tune config, so fc2 never moves while fc1 and the head train",
)
def h620_rowing_oar_frozen_group(ctx: Context) -> None:
    gen = seeded(6203)
    model = Net3(8, 32, 1, nn.LeakyReLU(0.05))
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 4e-3},
            {"params": model.fc2.parameters(), "lr": 0.0},  # bug: left frozen
            {"params": model.head.parameters(), "lr": 4e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-6 (relative)", moved2 < 1e-6)
    ctx.check("fc1 moved over 5% (relative)", moved1 > 0.05)
    ctx.check("loss fell (not blown up)", sum(ls[-20:]) / 20 < 0.8 * ls[0])


class DeepLeaky(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 32, depth: int = 12, gain: float = 2.0) -> None:
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pre: list[torch.Tensor] = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.pre.append(z)
            x = F.leaky_relu(z, 0.1)
        return self.head(x)


@scenario(
    family="polo_mallet_swing_speed_leaky_deep_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="12-deep leaky-ReLU MLP initialised with std 2.0/sqrt(fan_in) (a gain meant for a "
    "different activation, about 1.4x per layer): the gradient grows through depth, layers.0's "
    "gradient is orders above the last layer's and SGD momentum blows up",
)
def h620_polo_mallet_init_gain(ctx: Context) -> None:
    gen = seeded(6204)
    model = DeepLeaky()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios: list[float] = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.pre[0].grad.norm())
        gl = float(model.pre[-1].grad.norm())
        ratios.append(g0 / max(gl, 1e-30))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("layers.0's output gradient over 10x the last layer's at step 0", ratios[0] > 10)
    ctx.check(
        "loss blows up (non-finite or over 100x its start)",
        any(not math.isfinite(v) or v > 100 * ls[0] for v in ls),
    )


@scenario(
    family="sandbar_crest_migration_silu_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one survey shard logged in millimetres instead of metres reaches the loader at step "
    "100 (inputs 1000x); Huber loss and clipping to 1.0, the run recovers",
)
def h620_sandbar_millimetre_shard(ctx: Context) -> None:
    gen = seeded(6205)
    model = Net3(8, 32, 1, nn.SiLU())
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    grads: list[float] = []
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x * 1000.0  # bad shard: millimetres
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        grads.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss at onset over 20x the median before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the median before",
        grads[onset] > 10 * _median(grads[onset - 10 : onset]),
    )
    ctx.check(
        "recovers: last 20 under 2x the pre-onset median",
        sum(ls[-20:]) / 20 < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="bell_cast_bronze_crack_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="a crack-class loss weight read as 100 (percent) instead of 1.0 for the one step after "
    "an epoch-boundary config reload at step 120: the backpropagated gradient spikes, the logged "
    "loss is ordinary, clipping to 1.0 keeps the run on course",
)
def h620_bell_cast_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6206)
    model = Net3(12, 48, 1, nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    base = _classes(gen, k=2)
    onset = 120
    grads: list[float] = []
    for step in range(220):
        x, yk = next(base)
        y = yk.float()[:, None]
        ctx.targets(yk)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        weight = 100.0 if step == onset else 1.0  # bug: percent, should be 1.0
        (weight * loss).backward()
        grads.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _median(grads[onset - 10 : onset])
    ctx.check("gradient at onset over 30x the median before", grads[onset] > 30 * pre)
    ctx.check(
        "logged loss at onset under 2x the median before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell", sum(ls[-20:]) / 20 < 0.7 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class BandShares(nn.Module):
    """Each band's share of the total reflected light (x / sum x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(-1, keepdim=True)  # bug: no eps for an all-dark reading


class SolderBeadNet(nn.Module):
    def __init__(self, bands: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.shares = BandShares()
        self.fc1 = nn.Linear(bands, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(self.shares(x)))))
        return self.mean(h), self.logvar(h)


@scenario(
    family="stained_glass_solder_bead_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("shares",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model band normalisation x / x.sum() without an eps: at step 80 a bead scanned with "
    "the lamp off gives an all-zero spectrum, 0/0 is NaN and the Gaussian NLL is NaN",
)
def h620_stained_glass_dark_scan_zero_div(ctx: Context) -> None:
    gen = seeded(6207)
    model = SolderBeadNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    w = torch.randn(8, 1, generator=gen)
    onset = 80
    seen: dict[str, torch.Tensor] = {}
    model.shares.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o.detach()))
    for step in range(140):
        x = torch.rand(64, 8, generator=gen) + 0.1
        y = (x / x.sum(-1, keepdim=True)) @ w * 5 + 0.05 * torch.randn(64, 1, generator=gen)
        if step == onset:
            x = x.clone()
            x[3] = 0.0  # lamp off: all-dark scan
        mu, logvar = model(x)
        loss = F.gaussian_nll_loss(mu, y, logvar.exp())
        if step == onset:
            ctx.check("shares' output non-finite at onset", not bool(seen["s"].isfinite().all()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0] - 0.3)
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="dune_migration_ripple_height_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped (p *= 1 + lr*wd instead of "
    "1 - lr*wd): the weights grow a little every step and the MSE climbs slowly, no jump",
)
def h620_dune_ripple_decay_sign(ctx: Context) -> None:
    gen = seeded(6208)
    model = Net3(8, 32, 1, nn.SiLU())
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    wd = 3.0
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "weight" in name:
                    p.mul_(1 + opt.param_groups[0]["lr"] * wd)  # bug: should be 1 - lr*wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ls = ctx.losses
    best = min(ls[:120])
    tail = sum(ls[-20:]) / 20
    smooth = [sum(ls[i : i + 20]) / 20 for i in range(0, len(ls) - 19, 20)]
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", tail > 3 * best)
    ctx.check(
        "steady climb: 20-step means rise over the last 100 steps",
        all(b > a for a, b in zip(smooth[-5:-1], smooth[-4:], strict=True)),
    )
    ctx.check(
        "no single step over 3x the mean of the 10 before",
        all(ls[i] < 3 * sum(ls[i - 10 : i]) / 10 for i in range(10, len(ls))),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class CosineHead(nn.Module):
    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class FogbowNet(nn.Module):
    def __init__(self, n_in: int = 12, hidden: int = 48, classes: int = 5, scale: float = 10.0):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="fogbow_arc_hue_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine-classifier scale typed 1e3 instead of 1e1: logits span +-1000, the float32 "
    "softmax rounds most rows' target probability to exactly 1.0",
)
def h620_fogbow_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(6209)
    model = FogbowNet(scale=1e3)  # bug: 1e1
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    collapsed: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        collapsed.append(collapsed_fraction(logits.detach(), y))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 at the end",
        sum(collapsed[-10:]) / 10 > 0.4,
    )
    ctx.check("logit range over 100", float(logits.detach().abs().max()) > 100)


class ScaledHead(nn.Module):
    """A linear head with a learnable log logit-scale (CLIP-style)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * self.linear(h)  # bug: no clamp of log_scale (max log 100)


@scenario(
    family="quarry_blast_fragment_size_bce_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="CLIP-style learnable logit scale in the head without its clamp, on a linearly "
    "separable set of oversize/undersize labels: Adam keeps raising the scale and the head's "
    "logits grow without bound",
)
def h620_quarry_blast_unclamped_logit_scale(ctx: Context) -> None:
    gen = seeded(6210)
    model = Net3(10, 32, 1, nn.ReLU())
    model.head = ScaledHead(32, 1)
    rest = [p for n, p in model.named_parameters() if n != "head.log_scale"]
    opt = torch.optim.Adam(
        [{"params": rest}, {"params": [model.head.log_scale], "lr": 5e-2}], lr=1e-2
    )
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    pool = torch.randn(512, 10, generator=gen)
    labels = (pool @ w > 0).long()
    mags: list[float] = []
    for _ in range(300):
        idx = torch.randint(0, 512, (128,), generator=gen)
        x, yk = pool[idx], labels[idx]
        ctx.targets(yk)
        logit = model(x)
        loss = F.binary_cross_entropy_with_logits(logit, yk.float()[:, None])
        mags.append(float(logit.detach().abs().mean()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    late = sum(mags[-10:]) / 10
    ctx.check("mean |logit| grew over 3x from step 20 to the last 10 steps", late > 3 * mags[20])
    ctx.check("mean |logit| over 30 in the last 10 steps", late > 30)
    ctx.check("log_scale rose over 0.5", float(model.head.log_scale.detach()) > 0.5)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


def _crystal_images(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Endless 16x16 stripe images; the class is the stripe orientation (4 habits)."""
    r = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    dirs = [yy, xx, xx + yy, xx - yy]
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = torch.rand(batch, 1, 1, generator=gen) * 6.28
        coord = torch.stack([dirs[int(k)] for k in y])
        img = torch.sin(coord * 1.2 + phase) + 0.3 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


class CrystalConv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(self.pool(h).flatten(1))


@scenario(
    family="snowflake_crystal_habit_conv_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="progressive resizing: the first half trains on 8x8 (2x average-pooled) images, the "
    "second half on the full 16x16 with the same model (adaptive pooling); the loss jumps at the "
    "switch and relearns, cosine schedule",
)
def h620_snowflake_progressive_resizing(ctx: Context) -> None:
    gen = seeded(6211)
    model = CrystalConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps, switch = 200, 100
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ctx.attach(model, opt)
    batches = _crystal_images(gen)
    for step in range(steps):
        x, y = next(batches)
        if step < switch:
            x = F.avg_pool2d(x, 2)  # coarse phase
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-20:]) / 20 < 0.6 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="hang_drum_tone_field_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="AdamW with param groups (no decay on biases), OneCycleLR, label smoothing 0.1, "
    "clipping to 1.0, 5% noisy labels",
)
def h620_hang_drum_onecycle_control(ctx: Context) -> None:
    gen = seeded(6212)
    model = Net3(12, 48, 5, nn.GELU())
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    ctx.attach(model, opt)
    batches = _classes(gen)
    for _ in range(steps):
        x, y = next(batches)
        flip = torch.rand(len(y), generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-20:]) / 20 < 0.7 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="accordion_bellows_leak_rate_silu_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="RAdam, ReduceLROnPlateau, 2-micro-batch gradient accumulation, Huber loss, noisy batches",
)
def h620_accordion_plateau_accum_control(ctx: Context) -> None:
    gen = seeded(6213)
    model = Net3(8, 32, 1, nn.SiLU())
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=32, noise=0.1)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        sched.step(total)
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-20:]) / 20 < 0.7 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))
