"""Held-out set 636 (``h636_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _top_eig(model: nn.Module, loss_fn, iters: int = 30) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, out: int, act=F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _plain_loop(ctx: Context, model, opt, batches, steps, loss_fn, *, classifier=False, clip=None):
    for _ in range(steps):
        x, y = next(batches)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip is not None:
            ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="spoke_tension_truing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD momentum 0.9 with lr typed 3.0 for 0.03 in the wheel-truing config; lr x the "
    "measured top Hessian eigenvalue is far over 2(1+momentum) and the loss blows up",
)
def h636_spoke_truing_lr_typo(ctx: Context) -> None:
    gen = seeded(6361)
    model = Net(8, 32, 1, act=torch.tanh)
    lr, momentum = 3.0, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    lam = _top_eig(model, lambda m: F.mse_loss(m(x0), y0))
    ctx.check("lr x top eigenvalue over 2(1+momentum)", lr * lam > 2 * (1 + momentum))
    ctx.check("intended lr 0.03 under the limit", 0.03 * lam < 2 * (1 + momentum))
    _plain_loop(ctx, model, opt, batches, 120, F.mse_loss)
    ls = ctx.losses
    worst = max((v for v in ls if math.isfinite(v)), default=float("inf"))
    bad = any(not math.isfinite(v) for v in ls)
    ctx.check("loss blew up over 100x its start", bad or worst > 100 * ls[0])


@scenario(
    family="saddle_stitch_awl_pierce_relu_bce_classifier",
    optimizer="RMSprop",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="4-micro-batch gradient accumulation; at step 100 the accumulation divisor is applied "
    "as a multiplier (loss x 4 x 100 from a leftover debug factor) for one step, the gradient "
    "bursts while the logged loss is ordinary",
)
def h636_saddle_stitch_accum_bug(ctx: Context) -> None:
    gen = seeded(6362)
    model = Net(12, 32, 1, act=F.relu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(12, generator=gen)
    onset, accum = 100, 4
    for step in range(180):
        logged = 0.0
        for _ in range(accum):
            x = torch.randn(32, 12, generator=gen)
            y = (x @ w > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            scale = accum * 100.0 if step == onset else 1.0 / accum
            (loss * scale).backward()
            logged += float(loss.detach()) / accum
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check("logged loss at onset ordinary", ls[onset] < 2 * _median(ls[onset - 10 : onset]))
    ctx.check("loss fell", _median(ls[-10:]) < 0.7 * ls[0])


class SyrupNet(nn.Module):
    """Brix from refractometer readings: calib takes sqrt(reading - dark level) without a clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.calib = _SqrtCalib()
        self.fc1 = nn.Linear(6, 32)
        self.mean_head = nn.Linear(32, 1)
        self.var_head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc1(self.calib(x)))
        return self.mean_head(h), F.softplus(self.var_head(h)) + 1e-3


class _SqrtCalib(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sqrt(x[:, :1] - 0.1), x[:, 1:]], 1)


@scenario(
    family="sorghum_syrup_brix_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("calib",),
    diverges=70,
    onset=70,
    heldout=True,
    note="the calibration layer takes sqrt(reading - dark level) with no clamp; at step 70 a "
    "batch holds a reading under the dark level (lamp warming up), sqrt of a negative gives NaN",
)
def h636_sorghum_brix_sqrt_negative(ctx: Context) -> None:
    gen = seeded(6363)
    model = SyrupNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(6, generator=gen) / 2
    seen: dict[str, torch.Tensor] = {}
    model.calib.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o.detach()))
    onset = 70
    for step in range(120):
        x = torch.randn(64, 6, generator=gen)
        x[:, 0] = 0.5 + torch.rand(64, generator=gen)
        if step == onset:
            x[3, 0] = 0.05  # lamp not warm: under the dark level
        y = (x @ w)[:, None] + 0.1 * torch.randn(64, 1, generator=gen)
        mu, var = model(x)
        loss = F.gaussian_nll_loss(mu, y, var)
        if step == onset:
            ctx.check("calib output NaN at onset", bool(seen["o"].isnan().any()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0] - 0.3)
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))


@scenario(
    family="marimba_mallet_hardness_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config in milli-units, 2 entered as 0.002; "
    "logits / 0.002 saturate the softmax, most rows' target probability rounds to exactly 1.0",
)
def h636_marimba_mallet_temperature(ctx: Context) -> None:
    gen = seeded(6364)
    model = Net(16, 32, 4)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    temperature = 0.002
    fracs: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        p = torch.softmax(logits.detach(), -1).gather(1, y[:, None])
        fracs.append(float((p == 1.0).float().mean()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 25% of rows' target prob exactly 1.0 late", _median(fracs[-20:]) > 0.25)
    with torch.no_grad():
        p2 = torch.softmax(model(x) / 2.0, -1).gather(1, y[:, None])
    ctx.check("at temperature 2 no row would be", float((p2 == 1.0).float().mean()) == 0.0)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="crampon_bite_grip_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised with nn.init.constant_(b, -4.0) where the init helper meant "
    "-0.04; most fc1 ReLUs are never positive, get no gradient and the loss stalls",
)
def h636_crampon_bias_init(ctx: Context) -> None:
    gen = seeded(6365)
    model = Net(16, 32, 4, act=F.relu)
    nn.init.constant_(model.fc1.bias, -4.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        h = F.relu(model.fc1(x))
        dead.append(float((h <= 0).all(0).float().mean()))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 70% of fc1 units dead at the end", dead[-1] > 0.7)
    ctx.check("loss stalls near chance", _median(ls[-10:]) > 0.8 * math.log(4))


@scenario(
    family="gilding_leaf_burnish_gelu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 for 1e-2, fc2 never moves while fc1 and the "
    "head train",
)
def h636_gilding_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6366)
    model = Net(8, 32, 1)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _plain_loop(ctx, model, opt, _regression(gen), 150, F.mse_loss)

    def moved(name: str) -> float:
        p = dict(model.named_parameters())[name]
        return float((p.detach() - w0[name]).norm() / w0[name].norm())

    ctx.check("fc2 weight moved under 1e-6", moved("fc2.weight") < 1e-6)
    ctx.check("fc1 weight moved over 1e-2", moved("fc1.weight") > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.8 * ctx.losses[0])


@scenario(
    family="piton_placement_load_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="12-deep leaky-ReLU MLP initialised with std 2.4/sqrt(fan_in) (gain typed 2.4 for "
    "1.4 in the init helper); the gradient grows through depth, layer 0's over 10x the last "
    "layer's, clipped at 1.0",
)
def h636_piton_init_gain(ctx: Context) -> None:
    gen = seeded(6367)
    model = nn.Module()
    model.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(12))
    model.head = nn.Linear(16, 1)
    for lin in model.layers:
        nn.init.normal_(lin.weight, std=2.4 / math.sqrt(16))
        nn.init.zeros_(lin.bias)

    def fwd(x):
        for lin in model.layers:
            x = F.leaky_relu(lin(x), 0.1)
        return model.head(x)

    model.forward = fwd
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ctx.attach(model, opt)
    batches = _regression(gen, n_in=16)
    ratios = []
    outs: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(m, inp, out):
            out.retain_grad()
            outs[i] = out

        return hook

    model.layers[0].register_forward_hook(keep(0))
    model.layers[-1].register_forward_hook(keep(-1))
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(outs[0].grad.norm())
        gl = float(outs[-1].grad.norm())
        ratios.append(g0 / max(gl, 1e-30))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at layer 0's output over 10x the last layer's at start", ratios[0] > 10)
    ctx.check("still over 10x at the end", ratios[-1] > 10)
    ctx.check("raw gradient norm over 10 at start", ctx.grad_norms[0] > 10)


@scenario(
    family="yo_yo_sleep_time_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one bad shard at step 120: a trick-logger wrote string spin in rpm where the rest is "
    "rev/s (one input column 60x, targets from the same log x60); SGD momentum, Huber loss, "
    "clipping at 1.0, the run spikes and recovers",
)
def h636_yo_yo_rpm_shard(ctx: Context) -> None:
    gen = seeded(6368)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x, y = x.clone(), y * 60.0
            x[:, 0] = x[:, 0] * 60.0
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 10x the 10 before", ls[onset] > 10 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers within 3x of before", _median(ls[-10:]) < 3 * _median(ls[onset - 10 : onset])
    )


@scenario(
    family="luthier_varnish_cure_silu_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written L2 term is subtracted from the loss (sign flipped when it was moved "
    "into a helper); the weights grow steadily and the loss climbs slowly to over 3x its best",
)
def h636_luthier_l2_sign(ctx: Context) -> None:
    gen = seeded(6369)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w_start = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        l2 = sum((p * p).sum() for p in model.parameters())
        (loss - 0.2 * l2).backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w_end = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(_median(ls[i : i + 10]) for i in range(len(ls) - 10))
    ctx.check("weights over 2x", w_end > 2 * w_start)
    ctx.check("loss climbs to over 3x its best", _median(ls[-10:]) > 3 * best)
    blocks = [_median(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    jumps = [b - a for a, b in zip(blocks[:-1], blocks[1:], strict=True)]
    ctx.check(
        "no 10-step block jumps over 40% of the climb", max(jumps) < 0.4 * (blocks[-1] - best)
    )


@scenario(
    family="bonsai_wire_bite_relu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="AdamW's weight_decay set to 0.0 (the config key misspelt, default dropped) on a "
    "separable task with a high lr; the head's logits grow without bound",
)
def h636_bonsai_wire_no_decay(ctx: Context) -> None:
    gen = seeded(63610)
    model = Net(16, 32, 4, act=F.relu)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = _classes(gen)
    maxes = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        out = model(x)
        maxes.append(float(out.detach().abs().max()))
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("max logit over 20x its start", maxes[-1] > 20 * maxes[0])
    ctx.check("still growing over the last quarter", maxes[-1] > 1.2 * maxes[150])


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="thermal_updraft_climb_rate_bf16_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="bf16 autocast throughout, the MSE computed in bf16 so the logged loss is quantised "
    "(coarse steps, repeated values); warm-up + cosine, clipping: healthy, alarming-looking",
)
def h636_thermal_updraft_bf16(ctx: Context) -> None:
    gen = seeded(63611)
    model = Net(8, 48, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.1)
    coarse = 0
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = ((out - y.to(torch.bfloat16)) ** 2).mean()
        ls32 = float(F.mse_loss(out.detach().float(), y))
        coarse += float(loss) != ls32
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss is bf16 (differs from float32 on most steps)", coarse > 0.8 * steps)
    ctx.check("loss fell over 2x", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class ShimmerGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.reshape(-1, 8, 8))
        return self.head(out[:, -1])


@scenario(
    family="mirage_shimmer_band_gru_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="GRU over 8x8 digit rows; SGD Nesterov, OneCycleLR, label smoothing 0.1, 2-micro-batch "
    "accumulation, clipping at 1.0, 5% noisy labels: healthy control",
)
def h636_mirage_gru_onecycle(ctx: Context) -> None:
    gen = seeded(63612)
    model = ShimmerGRU()
    steps = 150
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=32)
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 60% of start", _median(ls[-10:]) < 0.6 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="sugar_boiling_thread_stage_silu_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="two param groups (head at half lr), ReduceLROnPlateau, Huber loss, noisy thermometer "
    "readings: healthy control",
)
def h636_sugar_thread_plateau(ctx: Context) -> None:
    gen = seeded(63613)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.Adamax(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 4e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.15)
    for _ in range(200):
        x, y = next(batches)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        opt.step()
        sched.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 60% of start", _median(ls[-10:]) < 0.6 * ls[0])
    ctx.check("finite", all(math.isfinite(v) for v in ls))
