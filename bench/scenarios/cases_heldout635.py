"""Held-out set 635 (``h635_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, digit_batches, scenario, seeded


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


def _gnorm(model: nn.Module) -> float:
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def _plain_step(ctx: Context, model: nn.Module, opt, loss: torch.Tensor, clip: float | None = None):
    loss.backward()
    if clip is not None:
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
    else:
        ctx.grad_norms.append(_gnorm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


class Net3(nn.Module):
    """inp -> body -> head with a chosen activation."""

    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.gelu) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(self.act(self.inp(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="mead_ferment_gravity_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("inp",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 a new hydrometer logger writes the sugar "
    "channel in ppm instead of a fraction (x1e6), inp's fp16 output overflows to inf and the "
    "loss is non-finite",
)
def h635_mead_gravity_fp16_ppm(ctx: Context) -> None:
    gen = seeded(6351)
    model = Net3(8, 32, 1, act=F.silu)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.inp.register_forward_hook(lambda m, i, o: seen.__setitem__("inp", o.detach()))
    onset = 90
    for step in range(140):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 4] = x[:, 4] * 1e6 + 5e5  # ppm, not a fraction
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("inp fp16 output non-finite at onset", not bool(seen["inp"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.inp(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
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
    family="sheepdog_outrun_time_gelu_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one bad shard at step 120: a trial's stopwatch export wrote outrun times in "
    "milliseconds where the rest is seconds (targets 1000x); Huber loss, clipping at 1.0, the "
    "run spikes and recovers",
)
def h635_sheepdog_outrun_ms_shard(ctx: Context) -> None:
    gen = seeded(6352)
    model = Net3(8, 32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    for step in range(240):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0  # ms, not s
        _plain_step(ctx, model, opt, F.huber_loss(model(x), y, delta=1.0), clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "loss recovered within 2x of pre-onset level",
        _median(ls[-10:]) < 2 * _median(ls[onset - 10 : onset]),
    )


@scenario(
    family="ropewalk_twist_lay_three_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("body",),
    diverges=None,
    heldout=True,
    note="three param groups; the body group's lr was typed 2e-9 for 2e-3 (an exponent typo), "
    "body's weights never move while inp and head train",
)
def h635_ropewalk_body_lr_typo(ctx: Context) -> None:
    gen = seeded(6353)
    model = Net3(8, 32, 1, act=torch.tanh)
    opt = torch.optim.Adamax(
        [
            {"params": model.inp.parameters(), "lr": 2e-3},
            {"params": model.body.parameters(), "lr": 2e-9},  # typo for 2e-3
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    body0 = model.body.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        _plain_step(ctx, model, opt, F.mse_loss(model(x), y))
    body_rel = float((model.body.weight.detach() - body0).norm() / body0.norm())
    head_rel = float((model.head.weight.detach() - head0).norm() / head0.norm())
    ls = ctx.losses
    ctx.check("body weights moved under 1e-5 relative", body_rel < 1e-5)
    ctx.check("head weights moved over 5% relative", head_rel > 0.05)
    ctx.check("loss still finite", all(math.isfinite(v) for v in ls))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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


@scenario(
    family="pinball_flipper_carom_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 3.0 for 0.03 in the sweep config; lr x the top Hessian "
    "eigenvalue is far over 2 and the loss blows up",
)
def h635_pinball_carom_lr_typo(ctx: Context) -> None:
    gen = seeded(6354)
    model = Net3(8, 32, 1, act=torch.tanh)
    lr = 3.0  # typo for 0.03
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    lam = _top_eig(model, x0, y0)
    ctx.check("lr x top Hessian eigenvalue over 2", lr * lam > 2.0)
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        _plain_step(ctx, model, opt, loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "loss blew up (over 100x the start or non-finite)",
        (not math.isfinite(ls[-1])) or max(ls) > 100 * ls[0],
    )


class DeepLeaky(nn.Module):
    def __init__(self, depth: int = 12, width: int = 32, n_in: int = 16, out: int = 4, gain=2.6):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.net = nn.Sequential()
        for i in range(depth):
            lin = nn.Linear(sizes[i], sizes[i + 1])
            nn.init.normal_(lin.weight, std=gain / math.sqrt(sizes[i]))
            nn.init.zeros_(lin.bias)
            self.net.add_module(str(2 * i), lin)
            self.net.add_module(str(2 * i + 1), nn.LeakyReLU(0.1))
        self.head = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


@scenario(
    family="chainmail_ring_weave_deep_leaky_relu_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="12-deep leaky-ReLU MLP initialised with std 2.6/sqrt(fan_in) (a gain meant for the "
    "variance typed as the std multiplier); gradients grow through depth, layer 0's gradient "
    "over 30x the last hidden layer's; clipping at 1.0 keeps it finite",
)
def h635_chainmail_deep_init_gain(ctx: Context) -> None:
    gen = seeded(6355)
    model = DeepLeaky()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    ratios = []
    for step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step < 5:
            ratios.append(float(model.net[0].bias.grad.norm() / model.net[22].bias.grad.norm()))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0 output gradient over 30x the last hidden layer's", min(ratios) > 30)
    ctx.check("raw gradient norm over 100 at start", ctx.grad_norms[0] > 100)


@scenario(
    family="kettlebell_snatch_lockout_relu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="SGD momentum, 2-micro-batch accumulation; on step 100 the accumulation divisor is "
    "applied as a multiplier of 500 (a config key read as the loss scale) for one step; the "
    "gradient spikes, the logged loss stays ordinary, clipping at 5 keeps the run alive",
)
def h635_kettlebell_accum_scale_bug(ctx: Context) -> None:
    gen = seeded(6356)
    model = Net3(16, 32, 1, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(16, generator=gen)
    onset = 100
    for step in range(200):
        scale = 500.0 if step == onset else 0.5
        total = 0.0
        for _ in range(2):
            x = torch.randn(32, 16, generator=gen)
            y = ((x @ w) > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * scale).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset under 3x the 10 before",
        ls[onset] < 3 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell overall and stayed finite", ls[-1] < ls[0] and math.isfinite(ls[-1]))


class GaussNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Linear(n_in, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        nn.init.constant_(self.var.bias, 1.0)

    def forward(self, x: torch.Tensor):
        h = F.gelu(self.trunk(x))
        return self.mean(h), F.relu(self.var(h))  # no clamp / softplus on the variance


@scenario(
    family="ball_lightning_lifetime_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var",),
    diverges="auto",
    heldout=True,
    note="Gaussian NLL with the variance head through a ReLU and no clamp (the eps was removed "
    "when the loss was hand-written); a predicted variance reaches exactly 0, log(0) and "
    "x/0 make the loss non-finite",
)
def h635_ball_lightning_var_no_clamp(ctx: Context) -> None:
    gen = seeded(6357)
    model = GaussNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    saw_zero = False
    for _ in range(250):
        x, y = next(batches)
        mu, var = model(x)
        saw_zero = saw_zero or bool((var == 0).any())
        loss = (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()
        _plain_step(ctx, model, opt, loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("a predicted variance hit exactly 0", saw_zero)
    ctx.check("loss finite for the first 10 steps", all(math.isfinite(v) for v in ls[:10]))
    ctx.check("loss became non-finite", not math.isfinite(ls[-1]))


class TeaNet(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32, k: int = 4, temperature: float = 1.0):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, k)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    family="tea_tasting_leaf_grade_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config in milli-units: 0.001 where 1.0 was "
    "meant; logits are divided by 0.001 and the softmax saturates, most rows' target "
    "probability rounds to exactly 1.0",
)
def h635_tea_grade_temperature_units(ctx: Context) -> None:
    gen = seeded(6358)
    model = TeaNet(temperature=0.001)  # milli-units: meant 1.0
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        p = torch.softmax(logits.detach().float(), -1)
        fracs.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))
        _plain_step(ctx, model, opt, loss)
    ctx.check("over 40% of rows' target probability exactly 1.0 at the end", fracs[-1] > 0.4)
    ctx.check("max softmax probability 1.0 on most rows", max(fracs[-10:]) > 0.4)


@scenario(
    family="hopscotch_chalk_digit_dead_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="SGD Nesterov; fc1's bias init constant typed -3.0 for -0.03, fc1's ReLUs are dead on "
    "every input, receive no gradient and never come back; the loss stays near chance",
)
def h635_hopscotch_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6359)
    model = nn.Sequential()
    model.fc1 = nn.Linear(64, 64)
    model.act1 = nn.ReLU()
    model.fc2 = nn.Linear(64, 10)
    nn.init.constant_(model.fc1.bias, -3.0)  # typo for -0.03
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        _plain_step(ctx, model, opt, F.cross_entropy(model(x), y))
    x, y = next(batches)
    with torch.no_grad():
        frac = dead_fraction(model.act1(model.fc1(x)))
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead at the end", frac > 0.8)
    ctx.check("loss stuck above 2.0 (chance is 2.30)", _median(ls[-10:]) > 2.0)


@scenario(
    family="cooperage_barrel_hoop_tension_l2_sign_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written L2 penalty is subtracted instead of added (sign bug in a refactor); "
    "the weights grow steadily and the loss climbs slowly to over 3x its best with no jump",
)
def h635_cooperage_l2_sign_bug(ctx: Context) -> None:
    gen = seeded(63510)
    model = Net3(8, 32, 1, act=torch.tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for p in model.parameters())
        total = loss - 0.1 * penalty  # sign bug: should be +
        total.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    ls = ctx.losses
    best = min(ls)
    jumps = max(ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1) if ls[i] > 2 * best)
    ctx.check("weight norm over 2x its start", w1 > 2 * w0)
    ctx.check("loss at the end over 3x its best", _median(ls[-10:]) > 3 * best)
    ctx.check("no single-step jump over 3x once climbing", jumps < 3.0)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="pelota_fronton_rebound_lookahead_gelu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lookahead (k=5, alpha=0.5) wrapped around Adam: every 5 steps the fast weights are "
    "pulled back halfway to the slow weights, the loss sawtooths with that period while the "
    "run trains normally (alarming-looking control)",
)
def h635_pelota_lookahead_sawtooth(ctx: Context) -> None:
    gen = seeded(63511)
    model = Net3(8, 32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    x, y = next(_regression(gen, noise=0.01, batch=256))  # one fixed set of 256 rallies
    slow = [p.detach().clone() for p in model.parameters()]
    k, alpha = 5, 0.5
    ups = []
    for step in range(200):
        _plain_step(ctx, model, opt, F.mse_loss(model(x), y))
        if (step + 1) % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, model.parameters(), strict=True):
                    s.add_(p - s, alpha=alpha)
                    p.copy_(s)
    ls = ctx.losses
    for i in range(k, len(ls) - 1, k):
        ups.append(ls[i] > ls[i - 1])
    ctx.check("loss fell over 5x and finite", _median(ls[-10:]) < 0.2 * _median(ls[:5]))
    ctx.check("loss rose right after most pull-backs (sawtooth)", sum(ups) > 0.6 * len(ups))


class LaceCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="bobbin_lace_pricking_digit_cnn_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SGD Nesterov with OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, "
    "clipping at 1.0 and 5% noisy labels (control)",
)
def h635_bobbin_lace_cnn_control(ctx: Context) -> None:
    gen = seeded(63512)
    model = LaceCNN()
    steps = 150
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite throughout", all(math.isfinite(v) for v in ls))


@scenario(
    family="aurora_corona_brightness_fp16_silu_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler, RMSprop with two param groups (head at half the lr), "
    "ReduceLROnPlateau, Huber loss, clipping at 1.0, noisy readings (control)",
)
def h635_aurora_fp16_control(ctx: Context) -> None:
    gen = seeded(63513)
    model = Net3(8, 32, 1, act=F.silu)
    opt = torch.optim.RMSprop(
        [
            {"params": list(model.inp.parameters()) + list(model.body.parameters())},
            {"params": model.head.parameters(), "lr": 5e-4},
        ],
        lr=1e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.1)
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under half its start", _median(ls[-10:]) < 0.5 * _median(ls[:5]))
    ctx.check("loss finite throughout", all(math.isfinite(v) for v in ls))
