"""Held-out set 646 (``h646_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, scenario, seeded


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


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class GeluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="wicker_basket_weave_strand_count_poisson_relu_rate_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=35,
    onset=35,
    heldout=True,
    note="a hand-written Poisson NLL (rate - y log rate) for strand counts whose rate head lost its "
    "softplus for a relu in a 'speed-up' commit; once a rate is exactly 0 on a row with count "
    "0, 0 * log(0) = 0 * -inf gives a NaN loss at step 35",
)
def h646_wicker_strand_poisson_relu_rate(ctx: Context) -> None:
    gen = seeded(6461)

    class PoissonNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.rate = nn.Linear(32, 1)
            nn.init.constant_(self.rate.bias, 2.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.rate(F.gelu(self.fc1(x))))  # bug: softplus swapped for relu

    model = PoissonNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    w = torch.randn(8, generator=gen) / math.sqrt(8)
    zero_at = None
    for step in range(200):
        x = torch.randn(64, 8, generator=gen)
        lam = torch.exp(x @ w - 1.0)
        y = torch.poisson(lam, generator=gen)[:, None]
        rate = model(x)
        if zero_at is None and bool(((rate == 0) & (y == 0)).any()):
            zero_at = step
        loss = (rate - y * torch.log(rate)).mean()  # Poisson NLL by hand
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = 35
    ctx.check("a rate exactly 0 on a zero count in the run", zero_at is not None)
    ctx.check(
        f"loss first non-finite at step {bad}", len(ls) == bad + 1 and not math.isfinite(ls[bad])
    )
    ctx.check("zero rate at or before the NaN", zero_at is not None and zero_at <= bad)
    ctx.check("loss finite before", _finite(ls[:bad]))


@scenario(
    family="saffron_harvest_stigma_yield_unscaled_resume_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=50,
    heldout=True,
    note="a hand-rolled static loss scale (x 2**20) is applied before backward; on the first step "
    "after a checkpoint resume (step 50) the unscale of the gradients is skipped, one gradient "
    "1e6x too large fills Adam's second moment (beta2 0.999) and every update afterwards is "
    "tiny: the loss stops falling",
)
def h646_saffron_yield_unscaled_resume(ctx: Context) -> None:
    gen = seeded(6462)
    model = GeluNet(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset, scale = 50, 2.0**20
    moves: list[float] = []
    v_max: list[float] = []
    for step in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * scale).backward()
        if step != onset:  # bug: the resume path skips the unscale
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(_gnorm(model.parameters()))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        v_max.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.parameters()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 1e5x the 10 before",
        gs[onset] > 1e5 * _median(gs[onset - 10 : onset]),
    )
    ctx.check("second moment max over 1e6x after onset", v_max[onset] > 1e6 * v_max[onset - 1])
    ctx.check(
        "updates 20-80 after onset under 1/30 of the 20 before",
        _median(moves[onset + 20 : onset + 80]) < _median(moves[onset - 20 : onset]) / 30,
    )
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * _median(ls[:10]))
    ctx.check(
        "loss stalls: last 20 over 0.8x the 10 before onset",
        _median(ls[-20:]) > 0.8 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="lava_flow_front_speed_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one bad shard at step 110: a thermal camera's frame was logged in centi-kelvin, so one "
    "reading column of that batch is 100x too large and offset; Huber loss, clipping at 1.0, "
    "the loss spikes and the run recovers",
)
def h646_lava_front_centikelvin_shard(ctx: Context) -> None:
    gen = seeded(6463)
    model = GeluNet(8, 32)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 110
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 100.0 + 120000.0 / 100.0  # centi-kelvin column
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
    family="snare_drum_head_tension_aux_weight_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="an auxiliary smoothness loss whose weight is re-read from the config at the epoch "
    "boundary (step 90) as 50 (a percent) instead of 0.5 for that one step; the total gradient "
    "spikes over 30x while the logged classification loss is ordinary; clipped at 2.0",
)
def h646_snare_tension_aux_weight_percent(ctx: Context) -> None:
    gen = seeded(6464)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen)
    onset = 90
    for step in range(180):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        aux_w = 50.0 * 100.0 if step == onset else 0.5  # bug: percent read as a weight
        aux = (logits.logsumexp(1) ** 2).mean() * 1e-2
        (loss + aux_w * aux).backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 2.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 30x the 10 before", gs[onset] > 30 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset within 2x the 10 before",
        ls[onset] < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell", _median(ls[-20:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="bassoon_crook_bore_deep_tanh_gain_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("trunk.0",),
    diverges=None,
    heldout=True,
    note="a 16-layer tanh net initialised with xavier gain 3.0 (the gain meant for a single "
    "output layer applied to every layer in an init loop): the net is in the chaotic regime and "
    "the gradient grows through depth, the first layer's over 10x the last hidden layer's; "
    "clipping at 5.0 keeps the run finite",
)
def h646_bassoon_crook_tanh_gain(ctx: Context) -> None:
    gen = seeded(6465)
    layers: list[nn.Module] = []
    for i in range(16):
        layers += [nn.Linear(8 if i == 0 else 48, 48), nn.Tanh()]
    model = nn.Sequential()
    model.add_module("trunk", nn.Sequential(*layers))
    model.add_module("head", nn.Linear(48, 1))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=3.0)  # meant only for the head
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = model.trunk[0].weight.grad.norm()
        last = model.trunk[30].weight.grad.norm()
        ratios.append(float(first / last.clamp_min(1e-12)))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 10x the last hidden's (median)", _median(ratios) > 10)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="boules_jack_distance_frozen_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="param groups built from a fine-tuning config: fc1's group lr is base_lr * "
    "freeze_factor and freeze_factor was left at 0.0 from a linear-probe run, so fc1 never "
    "moves while fc2 and the head train",
)
def h646_boules_jack_freeze_factor(ctx: Context) -> None:
    gen = seeded(6466)
    model = GeluNet(8, 32)
    base, freeze_factor = 4e-3, 0.0  # bug: left over from a linear-probe config
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": base * freeze_factor},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": base},
        ]
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    for _ in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rel2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 relative", rel1 < 1e-6)
    ctx.check("fc2 moved over 1e-2 relative", rel2 > 1e-2)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="ukulele_fret_buzz_linear_scaling_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="the linear lr-scaling rule applied with the batch counted in samples x accumulation "
    "steps twice (lr 0.05 x 2048/64 = 1.6 instead of 0.2), reached by a 60-step linear warm-up: "
    "lr x sharpness passes 2 and the loss blows up",
)
def h646_ukulele_buzz_linear_scaling(ctx: Context) -> None:
    gen = seeded(6467)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    peak = 0.05 * 2048 / 64  # bug: batch counted twice
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe = next(batches)
    params = list(model.parameters())
    products = []

    def sharpness() -> float:
        loss = F.mse_loss(model(probe[0]), probe[1])
        g = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            n = float(sum((u**2).sum() for u in v) ** 0.5)
            v = [u / n for u in v]
            hv = torch.autograd.grad(g, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    for step in range(150):
        lr = peak * min(1.0, (step + 1) / 60)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0:
            products.append(lr * sharpness())
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness over 2 during the run", max(products) > 2)
    ctx.check("loss fell first", min(ls[:40]) < 0.7 * ls[0])
    ctx.check("loss blows up over 100x its minimum", max(ls) > 100 * min(ls) or not _finite(ls))


@scenario(
    family="parkour_wall_run_step_count_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="the input standardisation was dropped when the loader moved to raw IMU readings "
    "(offsets of +40 in every column); Adam at 2e-2 with no warm-up pushes fc1's units negative "
    "on the first steps, most never fire again and the loss stalls near chance",
)
def h646_parkour_wall_run_dead_fc1(ctx: Context) -> None:
    gen = seeded(6468)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    fracs = []
    for _ in range(160):
        x, y = next(batches)
        x = x + 40.0  # raw readings, not standardised
        ctx.targets(y)
        h1 = F.relu(model.fc1(x))
        fracs.append(dead_fraction(h1.detach()))
        loss = F.cross_entropy(model.head(F.relu(model.fc2(h1))), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead at the end", fracs[-1] > 0.8)
    ctx.check("dead share rose by over 0.25 from the start", fracs[-1] > fracs[0] + 0.25)
    ctx.check("loss stalls above 0.8 (chance 1.61)", _median(ls[-20:]) > 0.8)
    ctx.check("finite", _finite(ls))


@scenario(
    family="biathlon_prone_shot_group_logit_scale_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a CLIP-style learnable logit scale exp(s) in the head whose clamp at log(100) was "
    "dropped and which sits in the no-decay group; on separable shot groups cross-entropy keeps "
    "raising s (the cosine head cannot grow its logits any other way) and the head's logits grow over 20x without bound",
)
def h646_biathlon_shot_logit_scale_unclamped(ctx: Context) -> None:
    gen = seeded(6469)

    class ScaledHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(32, 5, bias=False)
            self.log_scale = nn.Parameter(torch.zeros(()))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            w = F.normalize(self.proj.weight, dim=1)
            cos = F.linear(F.normalize(h, dim=1), w)
            return cos * self.log_scale.exp()  # bug: clamp(max=log 100) dropped

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.head = ScaledHead()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.fc1(x)))

    model = Net()
    opt = torch.optim.AdamW(
        [
            {"params": [model.fc1.weight, model.head.proj.weight], "weight_decay": 1e-2},
            {"params": [model.fc1.bias, model.head.log_scale], "weight_decay": 0.0},
        ],
        lr=1e-1,
    )
    ctx.attach(model, opt)
    w_true = torch.randn(12, 5, generator=gen)
    peaks = []
    for _ in range(300):
        x = torch.randn(64, 12, generator=gen)
        top = (x @ w_true).topk(2, dim=1)
        x = x[(top.values[:, 0] - top.values[:, 1]) > 1.0]  # clear shot groups only
        y = (x @ w_true).argmax(1)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits over 20x their start", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("logit scale over 20x", float(model.head.log_scale.detach().exp()) > 20)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hot_spring_terrace_sinter_type_temperature_classifier",
    optimizer="SGD (Nesterov)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a softmax temperature read from a config in milliseconds-style units (0.002 for 2.0): the "
    "logits are divided by 0.002, the float32 softmax rounds to exactly 0/1 on most rows; "
    "clipping at 1.0 keeps the run finite",
)
def h646_hot_spring_sinter_temperature_typo(ctx: Context) -> None:
    gen = seeded(64610)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen)
    temperature = 0.002  # bug: meant 2.0
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows collapsed to p=1.0 (last 20, median)", _median(fracs[-20:]) > 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="salt_flat_polygon_crack_spacing_adamw_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="alarming-looking control: AdamW with beta2 0.95 and eps 1e-6 at lr 1e-2 (a high rate, "
    "the LLM-style recipe), small noisy batches of 8: the loss jumps around step to step but "
    "falls; nothing is wrong",
)
def h646_salt_flat_polygon_high_lr_beta2(ctx: Context) -> None:
    gen = seeded(64611)
    model = GeluNet(8, 48)
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1
    )
    ctx.attach(model, opt)
    batches = _readings(gen, batch=8, noise=0.15)
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 30 under 0.5x the first 10", _median(ls[-30:]) < 0.5 * _median(ls[:10])
    )
    ctx.check(
        "noisy: max of the last half over 3x its median", max(ls[125:]) > 3 * _median(ls[125:])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="corn_maze_path_length_onecycle_huber_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: SGD momentum with OneCycleLR (peak 0.05), Huber loss, clipping at 1.0, noisy "
    "readings",
)
def h646_corn_maze_path_onecycle(ctx: Context) -> None:
    gen = seeded(64612)
    model = ReluNet(8, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.2)
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.7x the first 10", _median(ls[-20:]) < 0.7 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="quicksand_sink_depth_tied_autoencoder_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: a tied autoencoder (decoder uses the encoder's weight transposed) with a "
    "classifier head, label smoothing 0.1, fp16 autocast + GradScaler, param groups, "
    "2-micro-batch accumulation, ReduceLROnPlateau, clipping at 1.0",
)
def h646_quicksand_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(64613)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(12, 24)
            self.dec_bias = nn.Parameter(torch.zeros(12))
            self.head = nn.Linear(24, 5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.enc(x))
            return self.head(h), F.linear(h, self.enc.weight.t(), self.dec_bias)

    model = TiedAE()
    opt = torch.optim.RAdam(
        [
            {"params": list(model.enc.parameters()) + [model.dec_bias], "lr": 1e-2},
            {"params": model.head.parameters(), "lr": 2e-2},
        ]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _labels(gen, batch=32)
    for _ in range(150):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                logits, recon = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1) + 0.5 * F.mse_loss(
                recon.float(), x
            )
            scaler.scale(loss / 2).backward()
            total += float(loss.detach()) / 2
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.7x the first 10", _median(ls[-20:]) < 0.7 * _median(ls[:10])
    )
    ctx.check("finite", _finite(ls))
