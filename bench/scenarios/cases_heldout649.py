"""Held-out set 649 (``h649_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the bundled digits, and one Hugging Face OLMo causal LM built from a
tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(params) -> float:
    gs = [p.grad.norm() ** 2 for p in params if p.grad is not None]
    return float(sum(gs) ** 0.5) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class Net(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _sharpness(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Top Hessian eigenvalue of ``loss_fn(model)`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="shinty_caman_strike_zone_nodecay_head_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="strike zones are a linear function of the sensor readings (separable); the config puts "
    "the head in the no-decay group at lr 3e-2 (meant for biases only), so cross-entropy keeps "
    "pushing the head's logits up without bound: max |logit| grows over 20x",
)
def h649_shinty_strike_zone_logits(ctx: Context) -> None:
    gen = seeded(6491)
    model = Net(12, 32, 5)
    decay = [model.fc1.weight, model.fc2.weight]
    no_decay = [model.fc1.bias, model.fc2.bias, *model.head.parameters()]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "lr": 3e-3, "weight_decay": 0.1},
            {"params": no_decay, "lr": 3e-2, "weight_decay": 0.0},
        ]
    )
    ctx.attach(model, opt)
    batches = _labels(gen)
    peaks: list[float] = []
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("max |logit| over 20x its start", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check("logits still rising at the end", _mean(peaks[-10:]) > _mean(peaks[-60:-50]))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="bodhran_tipper_roll_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a 12-layer tanh regressor of tipper-roll loudness initialised with xavier_normal_ gain "
    "4.0 (copied from a note meant for a 4-layer net); gradients grow through depth, layers.0's "
    "gradient is over 10x the last hidden layer's; global-norm clipping keeps it from blowing up",
)
def h649_bodhran_roll_deep_tanh(ctx: Context) -> None:
    gen = seeded(6492)

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else 32, 32) for i in range(12))
            self.head = nn.Linear(32, 1)
            for layer in self.layers:
                nn.init.xavier_normal_(layer.weight, gain=4.0)
                nn.init.zeros_(layer.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return self.head(x)

    model = Deep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[11].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layers.0 gradient over 10x layers.11's at the start", _mean(ratios[:10]) > 10)
    ctx.check("still over 10x at the end", _mean(ratios[-10:]) > 10)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="coppice_hazel_regrowth_relu_var_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=162,
    onset=162,
    heldout=True,
    note="a hand-written Gaussian NLL for hazel regrowth height whose variance head lost its "
    "softplus + floor for a relu ('variance must be non-negative anyway'); once a row's variance "
    "is exactly 0, log(0) + r^2/0 gives a NaN loss at step 162",
)
def h649_coppice_regrowth_relu_var(ctx: Context) -> None:
    gen = seeded(6493)

    class VarNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mu_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 1.0)
            with torch.no_grad():
                self.var_head.weight.mul_(0.1)

        def forward(self, x: torch.Tensor):
            h = F.gelu(self.fc1(x))
            return self.mu_head(h), F.relu(self.var_head(h))  # bug: softplus + 1e-6 dropped

    model = VarNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    zero_at = None
    for step in range(300):
        x, y = next(batches)
        mu, var = model(x)
        if zero_at is None and bool((var == 0).any()):
            zero_at = step
        loss = 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = 162
    ctx.check("a variance exactly 0 in the run", zero_at is not None)
    ctx.check(
        f"loss first non-finite at step {bad}", len(ls) == bad + 1 and not math.isfinite(ls[bad])
    )
    ctx.check("loss finite before", _finite(ls[:bad]))


@scenario(
    family="luge_sled_runner_warmup_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=23,
    heldout=True,
    note="linear warm-up over 150 steps to a peak lr typed 2.0 for 0.2 (runner-temperature to "
    "split-time regressor); once lr x sharpness passes 2 the plain-SGD run oscillates and blows up",
)
def h649_luge_runner_warmup_typo(ctx: Context) -> None:
    gen = seeded(6494)
    model = Net(8, 32, 1, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe = next(batches)
    peak, warm = 2.0, 150  # typo: 0.2
    lrs: list[float] = []
    sharp = 0.0
    for step in range(250):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step == 20:
            sharp = _sharpness(model, lambda m: F.mse_loss(m(probe[0]), probe[1]))
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    low = min(ls[:60])
    cross = next((i for i, lr in enumerate(lrs) if lr * sharp > 2), None)
    ctx.check("loss fell during warm-up", low < 0.5 * ls[0])
    ctx.check("peak lr x sharpness over 2", peak * sharp > 2)
    blew = [i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low]
    ctx.check(
        "loss blows up past 100x its low after the crossing",
        bool(blew) and cross is not None and blew[0] > cross,
    )


@scenario(
    family="kumihimo_braid_tension_three_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups (fc1, fc2, head) for a braid-tension regressor; fc2's lr typed 2e-9 "
    "for 2e-3 in the config, so fc2 never moves while fc1 and the head learn",
)
def h649_kumihimo_tension_group_typo(ctx: Context) -> None:
    gen = seeded(6495)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 2e-9},  # typo: 2e-3
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", d2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", d1 > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="tanner_hide_liming_gelu_mse_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="lime-pit soak-time regressor; one shard at step 110 logged its targets in minutes "
    "instead of hours (x60), the MSE loss jumps over 20x and the gradient over 10x for that "
    "batch; clipping at 1.0 keeps the run alive and it recovers",
)
def h649_tanner_liming_bad_shard(ctx: Context) -> None:
    gen = seeded(6496)
    model = Net(8, 32, 1, act=F.gelu)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 110
    gn: list[float] = []
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            y = y * 60.0 + 30.0  # the bad shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        gn.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    before = _median(ls[onset - 20 : onset])
    ctx.check("loss at the shard over 20x the median before", ls[onset] > 20 * before)
    ctx.check("gradient at the shard over 10x", gn[onset] > 10 * _median(gn[onset - 20 : onset]))
    ctx.check("recovers: last 20 under 2x the median before", _median(ls[-20:]) < 2 * before)


@scenario(
    family="kabaddi_raid_touch_accum_relu_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="4-micro-batch gradient accumulation; after a config reload at step 90 the accumulation "
    "divisor reads 0.01 (a percent) for 4 for one step, so that step's gradient is 400x; the logged "
    "loss is ordinary, clipping at 5.0 keeps the run alive",
)
def h649_kabaddi_accum_divisor(ctx: Context) -> None:
    gen = seeded(6497)
    model = Net(64, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen, batch=16)
    onset, accum = 90, 4
    gn: list[float] = []
    for step in range(180):
        div = 0.01 if step == onset else accum
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / div).backward()
            total += float(loss.detach()) / accum
        gn.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "gradient at onset over 50x the median", gn[onset] > 50 * _median(gn[onset - 20 : onset])
    )
    ctx.check("logged loss at onset ordinary", ls[onset] < 2 * _median(ls[onset - 10 : onset]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="sundial_gnomon_shadow_decay_sign_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written weight decay in a shadow-length regressor written p.add_(p, alpha=lr*wd) "
    "(sign flipped); the weights grow every step, the tanh units saturate and the loss climbs "
    "slowly after an initial fall",
)
def h649_sundial_decay_sign(ctx: Context) -> None:
    gen = seeded(6498)
    model = Net(8, 32, 1, act=torch.tanh)
    lr, wd = 2e-2, 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen)
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # bug: alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(ls[:80])
    ctx.check("weights over 3x their start", n1 > 3 * n0)
    ctx.check("loss climbs over 3x its low", _median(ls[-20:]) > 3 * low)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="tabla_bol_stroke_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=(),
    diverges=None,
    heldout=True,
    note="bol-stroke classifier whose softmax temperature is read as 0.001 for 1.0 (milli-units in "
    "the config); logits / 0.001 saturate the softmax: over half the rows give the target "
    "probability exactly 1.0 in float32",
)
def h649_tabla_bol_temperature(ctx: Context) -> None:
    gen = seeded(6499)
    model = Net(64, 64, 10)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    temp = 0.001  # typo: 1.0
    frac: list[float] = []
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        frac.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows at p_target exactly 1.0", _mean(frac[-10:]) > 0.5)
    ctx.check("under 20% at the start", frac[0] < 0.2)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="bocce_pallino_roll_dead_bias_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="throw-outcome classifier on pixel-grid lane images; fc1's bias initialised with -3.0 for "
    "-3e-2 (a dropped exponent); the non-negative inputs never lift most fc1 units above 0, over "
    "60% of fc1 is dead and the loss stalls near chance",
)
def h649_bocce_dead_bias(ctx: Context) -> None:
    gen = seeded(64910)
    model = Net(64, 64, 10)
    nn.init.constant_(model.fc1.bias, -3.0)  # typo: -3e-2
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    dead: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        dead.append(dead_fraction(model.fc1(x).detach()))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 60% of fc1 units dead at the end", dead[-1] > 0.6)
    ctx.check("loss stalls near chance (over 1.5)", _median(ls[-20:]) > 1.5)
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="curling_stone_delivery_mixup_gelu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="delivery-type classifier on pixel grids trained with mixup alpha 1.0 (lambda ~ Beta(1, 1)), "
    "SGD momentum 0.9 and a cosine schedule: the loss on mixed targets stays high (near 1) and "
    "swings from batch to batch, which looks alarming, while clean accuracy climbs; healthy",
)
def h649_curling_delivery_mixup(ctx: Context) -> None:
    gen = seeded(64911)
    model = Net(64, 64, 10, act=F.gelu)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=250)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    beta = torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0))
    xs, ys = digits()
    acc0 = float((model(xs).argmax(1) == ys).float().mean())
    for _ in range(250):
        x, y = next(batches)
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        xm = lam * x + (1 - lam) * x[perm]
        ctx.targets(y)
        logits = model(xm)
        loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    tail = torch.tensor(ls[-50:])
    ctx.check("clean accuracy over 0.85 (from under 0.3)", acc > 0.85 and acc0 < 0.3)
    ctx.check("mixed loss stays high: last-50 median over 0.5", float(tail.median()) > 0.5)
    ctx.check(
        "mixed loss swings: last-50 max over 2x min", float(tail.max()) > 2 * float(tail.min())
    )
    ctx.check("loss finite and fell", _finite(ls) and _median(ls[-20:]) < _median(ls[:10]))


@scenario(
    family="cordwainer_last_fit_olmo_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a Hugging Face OLMo causal LM (OlmoForCausalLM) from a tiny config over shoemaker's "
    "pattern text (byte stream), AdamW with decay / no-decay param groups, linear warm-up then "
    "cosine decay, clipping at 1.0; healthy",
)
def h649_cordwainer_olmo_lm(ctx: Context) -> None:
    from transformers import OlmoConfig, OlmoForCausalLM

    gen = seeded(64912)
    config = OlmoConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = OlmoForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=3e-3,
    )
    steps, warm = 150, 15

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.7x its start", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="noctilucent_cloud_ripple_fp16_silu_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="ripple-wavelength regressor of noctilucent cloud frames under fp16 autocast with a "
    "torch.amp.GradScaler, OneCycleLR, Huber loss, clipping at 1.0 after unscale_, noisy "
    "readings; healthy",
)
def h649_noctilucent_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(64913)
    model = Net(8, 32, 1, act=F.silu)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, noise=0.2)
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.6x its start", _median(ls[-20:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))
