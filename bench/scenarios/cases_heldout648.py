"""Held-out set 648 (``h648_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and one Hugging Face StableLM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, scenario, seeded, text_batches


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


class Net(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="bellfounder_tuning_fork_lathe_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one bad shard at step 100: the lathe's tachometer logged rpm instead of revolutions per "
    "second for that batch, so two reading columns are 60x too large; Huber loss, clipping at "
    "1.0, the loss spikes at that batch and the run recovers",
)
def h648_bellfounder_rpm_shard(ctx: Context) -> None:
    gen = seeded(6481)
    model = Net(8, 32)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 100
    xmax: list[float] = []
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, :2] *= 60.0  # bug: rpm, not rev/s, in this shard
        xmax.append(float(x.abs().max()))
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("batch at onset over 20x larger inputs", xmax[onset] > 20 * _median(xmax[:onset]))
    ctx.check(
        "loss at onset over 10x the 10 before", ls[onset] > 10 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 5x the 10 before", gs[onset] > 5 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x the 10 before onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="farrier_shoe_nail_gauge_decay_sign_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-written decoupled weight decay applied after each SGD step with the sign "
    "flipped (p += lr * wd * p instead of -=): the weights grow a little every step and the "
    "loss, after falling, climbs slowly for the rest of the run",
)
def h648_farrier_decay_sign(ctx: Context) -> None:
    gen = seeded(6482)
    model = Net(8, 32)
    lr, wd = 0.02, 0.6
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    wnorm: list[float] = []
    for _step in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # bug: sign of the decay flipped
        wnorm.append(float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(_median(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("loss fell first: best 10 under 0.7x the first 10", low < 0.7 * _median(ls[:10]))
    ctx.check("loss climbs: last 10 over 3x the best 10", _median(ls[-10:]) > 3 * low)
    ctx.check("weight norm grew over 3x", wnorm[-1] > 3 * wnorm[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="geyser_cone_sinter_sqrt_variance_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_head",),
    diverges=62,
    heldout=True,
    note="a Gaussian NLL for sinter growth whose std is computed as sqrt(var_head(h)) with the "
    "softplus/clamp left out; once a predicted variance goes negative, sqrt gives NaN and the "
    "loss is NaN (step 62)",
)
def h648_geyser_sqrt_variance(ctx: Context) -> None:
    gen = seeded(6483)

    class NllNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 4.0)

        def forward(self, x: torch.Tensor):
            h = F.gelu(self.fc1(x))
            return self.mean_head(h), torch.sqrt(self.var_head(h))  # bug: no softplus / clamp

    model = NllNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    neg_at = None
    for step in range(200):
        x, y = next(batches)
        with torch.no_grad():
            raw = model.var_head(F.gelu(model.fc1(x)))
        if neg_at is None and bool((raw < 0).any()):
            neg_at = step
        mu, sd = model(x)
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("a negative variance in the run", neg_at is not None)
    ctx.check("loss first non-finite at step 62", bad == 62 and len(ls) == 63)
    ctx.check("negative variance at the NaN step", bad is not None and neg_at == bad)
    ctx.check("loss finite before", bad is not None and _finite(ls[:bad]))


@scenario(
    family="coracle_paddle_stroke_group_typo_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="param groups for a backbone/head split: the backbone group's lr was typed 3e-9 for "
    "3e-3, so fc1's updates are ~1e-7 of its weights and it never moves; the run trains "
    "slowly through the other layers and nothing blows up",
)
def h648_coracle_group_typo(ctx: Context) -> None:
    gen = seeded(6484)
    model = Net(8, 32)
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},  # bug: typed 3e-9 for 3e-3
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.fc2.weight.detach().clone()
    ratios: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        before = model.fc1.weight.detach().clone()
        opt.step()
        ratios.append(float((model.fc1.weight.detach() - before).norm() / before.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fc1 update/weight ratio under 1e-6 every step", max(ratios) < 1e-6)
    ctx.check(
        "fc1 moved under 1e-5 relative",
        float((model.fc1.weight.detach() - w0).norm() / w0.norm()) < 1e-5,
    )
    ctx.check(
        "fc2 moved over 5% relative",
        float((model.fc2.weight.detach() - h0).norm() / h0.norm()) > 0.05,
    )
    ctx.check("finite and loss did not blow up", _finite(ls) and max(ls) < 3 * ls[0])


@scenario(
    family="kite_line_ice_load_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="a 12-layer ReLU regressor whose init helper applies kaiming_normal_ and then multiplies "
    "by a leftover gain 1.45: activations and gradients grow ~1.45x per layer, the first layer's "
    "gradient is ~30x the last hidden's; plain SGD at a tiny lr keeps it from blowing up but the loss starts 1e4x too high",
)
def h648_kite_line_deep_gain(ctx: Context) -> None:
    gen = seeded(6485)
    layers: list[nn.Module] = []
    sizes = [8] + [32] * 11 + [1]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(1.45)  # bug: a leftover gain from a tanh config
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    ctx.attach(model, opt)
    batches = _readings(gen)
    first_last: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        outs = []
        h = x
        for m in model:
            h = m(h)
            if isinstance(m, nn.Linear):
                h.retain_grad()
                outs.append(h)
        loss = F.mse_loss(h, y)
        loss.backward()
        g0 = float(outs[0].grad.norm())
        gl = float(outs[-2].grad.norm())
        first_last.append(g0 / max(gl, 1e-30))
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "gradient at the first layer's output over 20x the last hidden's at step 0",
        first_last[0] > 20,
    )
    ctx.check("ratio over 10x through the first 10 steps", _median(first_last[:10]) > 10)
    ctx.check("first loss over 1e3x the target variance", ls[0] > 1e3 * float(y.var()))
    ctx.check("finite", _finite(ls))


@scenario(
    family="curling_broom_sweep_accum_bug_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="4-micro-batch gradient accumulation; at step 90 a resume path forgets both the "
    "divide-by-accum and the zero_grad of the stale buffer and multiplies by the global batch "
    "instead: one backward 256x too large, the logged loss is ordinary, the run recovers",
)
def h648_curling_accum_bug(ctx: Context) -> None:
    gen = seeded(6487)
    model = Net(12, 32, 5, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=16)
    onset, accum = 90, 4
    for step in range(180):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            weight = 64.0 if step == onset else 1.0 / accum  # bug on the resume step
            (loss * weight).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset under 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * _median(ls[:10]))
    ctx.check(
        "recovers: last 20 under 1.5x the 10 before onset",
        _median(ls[-20:]) < 1.5 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="foundry_ingot_pyrometer_pascal_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    onset=60,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 60 a new shard logs the furnace pressure in Pa "
    "instead of kPa (x1000, no standardisation), the fp16 cast of fc1's input and output "
    "overflows to inf, every step is skipped and the scale collapses",
)
def h648_foundry_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6488)
    model = Net(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    onset = 60
    for step in range(110):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 0] = 1000.0 * (x[:, 0] + 101.3)  # bug: Pa, not kPa, in the new shard
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model.parameters()))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, sc = ctx.losses, ctx.scales
    ctx.check("loss finite before onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at onset", not math.isfinite(ls[onset]))
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * _median(ls[:10]))
    ctx.check("scale fell over 1e6x after onset", sc[-1] < sc[onset - 1] / 1e6)


@scenario(
    family="sheepdog_whistle_command_negsmooth_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="hand-rolled label smoothing whose epsilon was entered as -0.1 (a sign typo in the "
    "config): the wrong classes get negative target mass, the loss has no lower bound and the "
    "head's logits grow without bound while the loss keeps falling below zero",
)
def h648_sheepdog_negative_smoothing(ctx: Context) -> None:
    gen = seeded(6489)
    model = Net(12, 32, 5, act=F.relu)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    eps, k = -0.1, 5  # bug: sign typo
    top: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        target = (1 - eps) * F.one_hot(y, k).float() + eps / k
        loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
        loss.backward()
        opt.step()
        top.append(float(logits.detach().abs().max()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("logits grew over 20x", _median(top[-10:]) > 20 * _median(top[:10]))
    ctx.check("logits still growing at the end", top[-1] > 1.2 * top[-50])
    ctx.check("loss fell below zero", ls[-1] < 0)
    ctx.check("finite", _finite(ls))


@scenario(
    family="marimba_resonator_millisecond_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config in milliseconds (0.5 ms -> 0.0005 for a "
    "meant 0.5 s); logits / 0.002 push the softmax to exact "
    "0/1 for most rows in float32",
)
def h648_marimba_ms_temperature(ctx: Context) -> None:
    gen = seeded(64810)
    model = Net(12, 32, 5, act=F.relu)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    temp = 0.0005  # bug: ms read as s
    frac: list[float] = []
    sat: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        loss = F.cross_entropy(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        frac.append(collapsed_fraction(logits.detach(), y))
        sat.append(float((torch.softmax(logits.detach(), -1).max(-1).values == 1.0).float().mean()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over half the rows saturate to p = 1.0 over the run", _median(sat) > 0.5)
    ctx.check("some rows at exactly p = 1.0 on their target", max(frac) > 0.1)
    ctx.check("loss stays over 3x chance (last 20)", _median(ls[-20:]) > 3 * math.log(5))
    ctx.check("finite", _finite(ls))


@scenario(
    family="solar_prominence_loop_onecycle_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="OneCycleLR with max_lr typed 3.0 for 0.3: the warm-up takes the lr past 2/sharpness "
    "about a third into the warm-up (lr ~0.6) and the loss oscillates and blows up",
)
def h648_solar_onecycle_typo(ctx: Context) -> None:
    gen = seeded(64811)
    model = Net(8, 32, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3.0, total_steps=200, pct_start=0.5, cycle_momentum=False
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    lrs: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model.parameters()))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    low = min(ls[:60])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss fell while the lr was small", low < 0.5 * ls[0])
    ctx.check("loss blew up over 100x its best", blow is not None)
    ctx.check("blow-up at an lr over 3x the start", blow is not None and lrs[blow] > 3 * lrs[0])


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="sea_shanty_verse_stablelm_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="a Hugging Face StableLmForCausalLM from a tiny config on byte windows: AdamW with a "
    "no-decay group for norms and biases, linear warm-up then cosine decay, clipping at 1.0",
)
def h648_sea_shanty_stablelm(ctx: Context) -> None:
    from transformers import StableLmConfig, StableLmForCausalLM

    gen = seeded(64812)
    config = StableLmConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = StableLmForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 120, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _step in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 10 under 0.75x the first 10", _median(ls[-10:]) < 0.75 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="chimney_sweep_brush_stochastic_depth_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="a residual classifier with stochastic depth (each block dropped with p 0.5 in training) "
    "and dropout 0.5: the training loss stays noisy and high, which looks alarming, yet the "
    "eval-mode loss is far lower and falls: a healthy, heavily regularised run",
)
def h648_chimney_sweep_stochastic_depth(ctx: Context) -> None:
    gen = seeded(64813)

    class Res(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.fc = nn.Linear(dim, dim)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and torch.rand(()) < 0.5:  # stochastic depth, p = 0.5
                return x
            scale = 2.0 if self.training else 1.0  # keep the expectation
            return x + scale * self.drop(F.relu(self.fc(x)))

    class Sd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(12, 48)
            self.blocks = nn.ModuleList(Res(48) for _ in range(4))
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            for b in self.blocks:
                h = b(h)
            return self.head(self.drop(h))

    model = Sd()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    xe, ye = next(_labels(seeded(64813), batch=512))
    evals: list[float] = []
    for step in range(240):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 40 == 0 or step == 239:
            model.eval()
            with torch.no_grad():
                evals.append(float(F.cross_entropy(model(xe), ye)))
            model.train()
    ls = ctx.losses
    tail = torch.tensor(ls[-60:])
    ctx.check(
        "train loss fell: last 30 under 0.9x the first 10",
        _median(ls[-30:]) < 0.9 * _median(ls[:10]),
    )
    ctx.check("eval loss fell under 0.6x its first", evals[-1] < 0.6 * evals[0])
    ctx.check("train loss noisy: std of last 60 over 0.1", float(tail.std()) > 0.1)
    ctx.check(
        "train loss high: last 60 over 1.5x the eval loss", float(tail.mean()) > 1.5 * evals[-1]
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="aurora_corona_ripple_gru_accum_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="a GRU regressor over noisy magnetometer-like sequences: 2-micro-batch gradient "
    "accumulation, Huber loss, clipping at 1.0, ReduceLROnPlateau on the loss",
)
def h648_aurora_gru_accum(ctx: Context) -> None:
    gen = seeded(64814)

    class Gru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(2, 24, batch_first=True)
            self.head = nn.Linear(24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    model = Gru()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    for _step in range(120):
        total = 0.0
        for _ in range(2):
            t = torch.linspace(0, 6, 20)
            f = 0.5 + torch.rand(32, 1, generator=gen)
            ph = 6.28 * torch.rand(32, 1, generator=gen)
            s = torch.sin(f * t + ph) + 0.3 * torch.randn(32, 20, generator=gen)
            x = torch.stack([s, t.expand(32, 20) / 6], -1)
            y = f
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 10 under 0.5x the first 10", _median(ls[-10:]) < 0.5 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))
