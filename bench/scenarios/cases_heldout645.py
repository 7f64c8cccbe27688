"""Held-out set 645 (``h645_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded


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
    return float(sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _wnorm(model: nn.Module) -> float:
    return float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)


class Trunk(nn.Module):
    """fc1 -> act -> fc2 -> act -> head, activations as modules."""

    def __init__(self, n_in: int, hidden: int, out: int, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="stone_lift_husafell_grip_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    onset=100,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 100 a new load cell reports the stone's load in "
    "grams instead of kilograms (the unit flag of the reader left at its default), fc1's fp16 "
    "output overflows to inf and the loss is non-finite",
)
def h645_husafell_stone_load_grams(ctx: Context) -> None:
    gen = seeded(6451)
    model = Trunk(8, 32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 100
    for step in range(160):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = (x[:, 2] * 20.0 + 150.0) * 1000.0  # grams, not kilograms
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss finite before onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="tamborim_rim_shot_lambda_group_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="two param groups under LambdaLR with one lambda per group; the first layer's lambda was "
    "written `lambda s: min(1.0, s / 500) * 0` while debugging and left in, so fc1's learning "
    "rate is 0 for the whole run while fc2 and the head train",
)
def h645_tamborim_rim_shot_zero_lambda(ctx: Context) -> None:
    gen = seeded(6452)
    model = Trunk(16, 48, 4, act=nn.ReLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 4e-3},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 4e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, s / 500) * 0, lambda s: min(1.0, (s + 1) / 20)],  # bug: * 0
    )
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4)
    w1 = model.fc1.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    g1: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        g1.append(float(model.fc1.weight.grad.norm()))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    relh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ls = ctx.losses
    ctx.check("fc1 moved under 1e-6 relative", rel1 < 1e-6)
    ctx.check("fc1 receives a nonzero gradient (median)", _median(g1) > 1e-4)
    ctx.check("head moved over 5e-2 relative", relh > 5e-2)
    ctx.check("loss fell, finite", _median(ls[-10:]) < 0.8 * _median(ls[:10]) and _finite(ls))


@scenario(
    family="quoits_pin_ringer_throw_huber_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="one bad shard at step 130: a club's throw distances were logged in millimetres, not "
    "metres (every target of the batch 1000x); Huber loss, clipping at 1.0, the run spikes and "
    "recovers",
)
def h645_quoits_throw_millimetre_shard(ctx: Context) -> None:
    gen = seeded(6453)
    model = Trunk(8, 32, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 130
    for step in range(230):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0 + 5000.0  # millimetres from the pin
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="ostrich_race_stride_phase_accum_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="gradient accumulation over 4 micro-batches; at step 120 a warm restart resets the "
    "accumulation counter after the first micro-batch, so zero_grad is skipped and the loss "
    "divisor is taken from a stale count of 1/64: one gradient burst over 50x, the logged loss "
    "is ordinary, clipping at 1.0 saves the run",
)
def h645_ostrich_stride_accum_counter(ctx: Context) -> None:
    gen = seeded(6454)
    model = Trunk(16, 48, 4, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=32)
    onset, accum = 120, 4
    for step in range(200):
        logged = 0.0
        scale = 64.0 if step == onset else 1.0 / accum  # bug: stale divisor on the restart step
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            (loss * scale).backward()
            logged += float(loss.detach()) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(gs[onset - 10 : onset])
    ctx.check("gradient at onset over 50x the 10 before", gs[onset] > 50 * pre)
    ctx.check("gradient after onset back under 3x", _median(gs[onset + 5 : onset + 25]) < 3 * pre)
    ctx.check(
        "logged loss at onset under 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell, finite", ls[-1] < ls[0] and _finite(ls))


@scenario(
    family="mudflat_sledge_glide_sqrt_variance_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var",),
    diverges=125,
    onset=125,
    heldout=True,
    note="a Gaussian NLL whose variance head is a raw Linear (the softplus dropped when the head "
    "was renamed); the scale is sqrt(var), and once a row's variance goes negative the sqrt of a "
    "negative number makes the loss NaN",
)
def h645_mudflat_sledge_negative_variance(ctx: Context) -> None:
    gen = seeded(6455)

    class SledgeNLL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean = nn.Linear(32, 1)
            self.var = nn.Linear(32, 1)
            nn.init.normal_(self.var.weight, std=0.02)
            nn.init.constant_(self.var.bias, 1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.fc1(x))
            return self.mean(h), self.var(h)  # bug: softplus dropped

    model = SledgeNLL()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    batches = _regression(gen)
    neg_at = None
    for step in range(250):
        x, y = next(batches)
        mu, var = model(x)
        if neg_at is None and bool((var < 0).any()):
            neg_at = step
        sd = torch.sqrt(var)
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    first_bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("a variance output below 0 in the run", neg_at is not None)
    ctx.check("loss first non-finite at step 125", first_bad == 125 and len(ls) == 126)
    ctx.check("negative variance at the NaN step", neg_at == first_bad)
    ctx.check("loss fell before the NaN", _finite(ls[:-1]) and min(ls[:-1]) < ls[0] - 0.5)


@scenario(
    family="alp_cowbell_procession_gain_elman_rnn",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="a hand-written Elman cell reading 48 steps of a cowbell-clank trace; its recurrent "
    "matrix was initialised orthogonal with gain 2.5 (the gain list shifted by one entry), so "
    "the gradient grows backwards through time, the first step's hidden-state gradient over 10x "
    "the last's; clipping keeps the run finite",
)
def h645_cowbell_procession_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6456)

    class CowbellElman(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(2, 24, nonlinearity="tanh")
            self.head = nn.Linear(24, 1)
            nn.init.orthogonal_(self.cell.weight_hh, gain=2.5)  # shifted gain list

        def forward(self, seq: torch.Tensor, keep: list | None = None) -> torch.Tensor:
            h = torch.zeros(seq.shape[0], 24)
            for t in range(seq.shape[1]):
                h = self.cell(seq[:, t], h)
                if keep is not None:
                    h.retain_grad()
                    keep.append(h)
            return self.head(h)

    model = CowbellElman()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    ratios = []
    for _ in range(70):
        pace = 0.2 + 0.3 * torch.rand(32, 1, generator=gen)
        t = torch.arange(48).float()[None, :]
        clank = torch.sin(pace * t) + 0.1 * torch.randn(32, 48, generator=gen)
        seq = torch.stack([clank, torch.cos(pace * t)], -1)
        y = (pace - 0.35) * 5.0
        keep: list = []
        loss = F.mse_loss(model(seq, keep), y)
        loss.backward()
        ratios.append(float(keep[0].grad.norm() / keep[-1].grad.norm().clamp_min(1e-12)))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first hidden-state gradient over 10x the last's (median)", _median(ratios) > 10)
    ctx.check("pre-clip gradient norm over the clip (median)", _median(ctx.grad_norms) > 5.0)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="conker_strike_shatter_dead_bias_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised with constant -4.0 (the forget-gate bias constant of another "
    "model pasted in, and of the wrong sign); most fc1 ReLU units never fire, get no gradient and "
    "stay dead, and the classifier stalls far above what the healthy net reaches",
)
def h645_conker_shatter_negative_bias(ctx: Context) -> None:
    gen = seeded(6457)
    model = Trunk(16, 48, 4, act=nn.ReLU)
    nn.init.constant_(model.fc1.bias, -4.0)  # bug
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 4, batch=64)
    probe_x, _ = next(batches)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(probe_x)))
    ls = ctx.losses
    ctx.check("over 60% of fc1 units dead at the end", dead > 0.6)
    ctx.check("loss of the last 20 over 0.5 (stalled)", _median(ls[-20:]) > 0.5)
    ctx.check("finite", _finite(ls))


@scenario(
    family="tug_of_war_rope_slip_decoupled_decay_sign_tanh_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written decoupled weight decay applied after Adam's step as p *= (1 + lr * wd) "
    "instead of (1 - lr * wd) (a sign lost when the helper was inlined): the weights grow "
    "geometrically, tanh units saturate and the loss climbs slowly after a first fall",
)
def h645_tug_rope_slip_decay_sign(ctx: Context) -> None:
    gen = seeded(6458)
    model = Trunk(8, 48, 1, act=nn.Tanh)
    lr, wd = 3e-3, 4.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = _wnorm(model)
    for _ in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + lr * wd)  # bug: 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = _wnorm(model)
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 6]))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check(
        "loss of the last 20 over 3x its running minimum",
        _median(ls[-20:]) > 3 * _median(ls[max(0, low - 5) : low + 6]),
    )
    ctx.check("minimum reached before step 150", low < 150)
    ctx.check("finite", _finite(ls))


@scenario(
    family="tin_whistle_octave_jump_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature is read from a config that stores it in milli-units "
    "(temperature_m: 1 meant 1.0, read as 0.001): logits are divided by 0.001 and the float32 "
    "softmax rounds the target's probability to exactly 1 on most rows while the rest pay "
    "enormous losses",
)
def h645_tin_whistle_milli_temperature(ctx: Context) -> None:
    gen = seeded(6459)
    model = Trunk(16, 32, 5, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 5, batch=64)
    temperature = 1 / 1000  # bug: milli-units
    fracs, saturated = [], []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        fracs.append(collapsed_fraction(logits.detach(), y))
        saturated.append(float((logits.detach().softmax(-1).max(-1).values == 1.0).float().mean()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "over 90% of rows' top probability exactly 1.0 (last 10)", _median(saturated[-10:]) > 0.9
    )
    ctx.check("over 10% of rows collapsed on the target (last 10)", _median(fracs[-10:]) > 0.1)
    ctx.check(
        "same logits at temperature 1 not collapsed",
        collapsed_fraction((logits * temperature).detach(), y) < 0.05,
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="pancake_race_flip_count_zloss_sign_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a z-loss meant to keep log Z near 0 is added with the wrong sign (ce - 1e-3 * lse^2, a "
    "minus carried over from the entropy-bonus line above it): the head's logits are pushed up "
    "without bound while the cross-entropy itself stays trained",
)
def h645_pancake_flip_zloss_sign(ctx: Context) -> None:
    gen = seeded(64510)
    model = Trunk(16, 48, 6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 6, batch=64)
    peaks = []
    for _ in range(220):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        ce = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, -1).pow(2).mean()
        (ce - 1e-3 * z).backward()  # bug: + 1e-3 * z
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(ce)
        opt.zero_grad(set_to_none=True)
    ctx.check("max |logit| grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:10]))
    ctx.check("max |logit| still rising", _median(peaks[-10:]) > 1.3 * _median(peaks[-60:-50]))
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="coal_carrying_sack_sway_onecycle_huber_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: OneCycleLR (warm-up then anneal) with SGD momentum, Huber loss, clipping at "
    "1.0, noisy sway readings",
)
def h645_coal_sack_sway_onecycle(ctx: Context) -> None:
    gen = seeded(64511)
    model = Trunk(8, 32, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.2)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="rope_glaze_abseil_descent_frozen_embedding_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy but alarming: a pretrained rope-segment embedding is frozen (requires_grad "
    "False) and only the head on top trains, label smoothing 0.1; the embedding never moves and "
    "has no gradient, which is the intent",
)
def h645_rope_glaze_frozen_embedding(ctx: Context) -> None:
    gen = seeded(64512)
    vocab, dim, length, k = 40, 16, 12, 3
    pretrained = torch.randn(vocab, dim, generator=gen)  # stands in for a loaded checkpoint
    proj = torch.randn(dim, k, generator=gen)

    class GlazeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding.from_pretrained(pretrained.clone(), freeze=True)
            self.fc1 = nn.Linear(dim, 32)
            self.act = nn.GELU()
            self.head = nn.Linear(32, k)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.fc1(self.embed(idx).mean(1))))

    model = GlazeNet()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    e0 = model.embed.weight.detach().clone()
    for _ in range(200):
        idx = torch.randint(0, vocab, (64, length), generator=gen)
        y = (pretrained[idx].mean(1) @ proj).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(idx), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("embedding frozen and unchanged", torch.equal(model.embed.weight, e0))
    ctx.check("embedding has no gradient", model.embed.weight.grad is None)
    ctx.check("loss fell over 2x", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="tuk_tuk_engine_knock_plateau_fp16_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: fp16 autocast + GradScaler, 2-micro-batch accumulation, two param groups "
    "(no decay on biases), ReduceLROnPlateau, clipping at 1.0",
)
def h645_tuk_tuk_knock_plateau(ctx: Context) -> None:
    gen = seeded(64513)
    model = Trunk(16, 48, 4, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _classes(gen, 16, 4, batch=32)
    window: list[float] = []
    for step in range(180):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            x = x + 0.3 * torch.randn(x.shape, generator=gen)  # engine vibration
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            scaler.scale(loss / 2).backward()
            logged += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        window.append(logged)
        if step % 10 == 9:
            sched.step(sum(window) / len(window))
            window = []
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))
