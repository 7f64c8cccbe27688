"""Held-out set 637 (``h637_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import io
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
    gs = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


class Net(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="cooperage_barrel_stave_bend_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="Adam with beta2 0.9999 (copied from a language-model recipe); after a migration off "
    "manual fp16, the static loss scale 65536 was left on the backward of the step that follows "
    "the periodic checkpoint (step 80): one giant gradient fills the second moment and the "
    "updates stall for the rest of the run",
)
def h637_cooperage_stave_stale_loss_scale(ctx: Context) -> None:
    gen = seeded(6371)
    model = Net(8, 32, act=torch.tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    moves: list[float] = []
    for step in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        scale = 65536.0 if step == onset else 1.0  # stale manual loss scale, one step
        (loss * scale).backward()
        ctx.grad_norms.append(_gnorm(model))
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((after - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 1e4x the 10 before",
        gs[onset] > 1e4 * _median(gs[onset - 10 : onset]),
    )
    ctx.check(
        "updates after onset+20 under 15% of those before",
        _median(moves[onset + 20 :]) < 0.15 * _median(moves[onset - 30 : onset]),
    )
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * ls[0])
    ctx.check(
        "loss stalls: last 20 not under 0.9x the 10 after onset",
        _median(ls[-20:]) > 0.9 * _median(ls[onset + 1 : onset + 11]),
    )


@scenario(
    family="harmonium_reed_bellows_leak_classifier",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one bad shard at step 120: the bellows-pressure logger of one workshop wrote raw "
    "24-bit ADC counts instead of normalised readings (inputs x4000); cross-entropy, clipping "
    "at 1.0, the loss spikes and the run recovers",
)
def h637_harmonium_bellows_adc_shard(ctx: Context) -> None:
    gen = seeded(6372)
    model = Net(16, 48, out=4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen)
    onset = 120
    for step in range(240):
        x, y = next(batches)
        if step == onset:
            x = x * 4000.0  # raw ADC counts
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
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
        "recovers: last 20 under 1.5x pre-onset",
        _median(ls[-20:]) < 1.5 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="snowpack_slab_release_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    onset=60,
    heldout=True,
    note="a warm-restart LambdaLR whose restart factor was typed 20 for 2.0: at step 60 the lr "
    "jumps from 0.3 to 6 for four steps, fc2's ReLUs are pushed to always-negative "
    "pre-activations and never come back; the loss stays stuck near chance afterwards",
)
def h637_snowpack_slab_restart_factor_typo(ctx: Context) -> None:
    gen = seeded(6373)
    model = Net(16, 48, out=4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    onset = 60

    def factor(s: int) -> float:
        return 20.0 if onset <= s < onset + 4 else 1.0  # restart factor typo: 2.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ctx.attach(model, opt)
    batches = _classes(gen)
    xp, _ = next(batches)
    dead_before = 0.0
    for step in range(220):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == onset - 1:
            with torch.no_grad():
                dead_before = dead_fraction(model.fc2(F.relu(model.fc1(xp))))
    with torch.no_grad():
        dead_after = dead_fraction(model.fc2(F.relu(model.fc1(xp))))
    ls = ctx.losses
    ctx.check("under 20% of fc2 units dead before onset", dead_before < 0.2)
    ctx.check("over 70% of fc2 units dead at the end", dead_after > 0.7)
    ctx.check("loss fell before onset", _median(ls[onset - 10 : onset]) < 0.7 * ls[0])
    ctx.check(
        "loss stuck: last 20 over 1.5x pre-onset",
        _median(ls[-20:]) > 1.5 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="jai_alai_cesta_rebound_plain_sgd_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD, linear warm-up over 150 steps to a peak lr typed 0.9 for 0.09, on a tanh "
    "regressor of the ball's rebound speed; once lr x top Hessian eigenvalue passes 2 during the "
    "warm-up the loss oscillates and blows up",
)
def h637_jai_alai_rebound_lr_typo(ctx: Context) -> None:
    gen = seeded(6374)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    peak = 0.9  # typo: 0.09
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.02, total_iters=150)
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    products: list[float] = []
    for step in range(250):
        x, y = next(batches)
        if step % 10 == 0:
            products.append(opt.param_groups[0]["lr"] * _top_eig(model, x0, y0))
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at the first probe", products[0] < 2.0)
    ctx.check("lr x sharpness over 2 at a later probe", max(products) > 2.0)
    ctx.check(
        "loss blew up over 100x its start", max(ls) > 100 * ls[0] or not math.isfinite(ls[-1])
    )
    ctx.check("loss fell first", min(ls[:30]) < ls[0])


class DeepTanh(nn.Module):
    def __init__(self, depth: int = 12, width: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x)


@scenario(
    family="whitewater_hydraulic_hole_deep_tanh_mlp",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="12-layer tanh MLP for a kayak's hold time in a river hydraulic, initialised with std "
    "4.0/sqrt(fan_in) (the gain field read as a std multiplier in the wrong units); the net is "
    "chaotic and the gradient grows layer after layer towards the input; clipped at 1.0",
)
def h637_whitewater_hole_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6375)
    model = DeepTanh(12, 32, gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.layers[0].weight.grad.norm())
        gl = float(model.layers[-1].weight.grad.norm())
        ratios.append(g0 / max(gl, 1e-12))
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0 gradient over 10x the last layer's at start", ratios[0] > 10)
    ctx.check("layer 0 gradient over 10x the last layer's (median)", _median(ratios) > 10)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="tuba_valve_slide_intonation_gelu_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="4-micro-batch gradient accumulation; the consistency-loss weight schedule has a stray "
    "entry {100: 150.0} (typed for 0.15) so one optimizer step's backward is some 100x; the "
    "logged loss is ordinary, the gradient bursts, clipping at 5 keeps the run alive",
)
def h637_tuba_slide_aux_weight_typo(ctx: Context) -> None:
    gen = seeded(6376)
    model = Net(16, 48, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen, batch=16)
    onset = 100
    weights = {100: 150.0}  # typo: 0.15
    accum = 4
    for step in range(200):
        w = weights.get(step, 0.15)
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            ce = F.cross_entropy(model(x), y)
            noisy = model(x + 0.1 * torch.randn(x.shape, generator=gen))
            consist = F.cross_entropy(noisy, y)  # agreement on jittered readings
            ((ce + w * consist) / accum).backward()
            total += float(ce.detach()) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 30x the 10 before", gs[onset] > 30 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset under 1.5x the 10 before",
        ls[onset] < 1.5 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("loss fell, finite", ls[-1] < ls[0] and all(math.isfinite(v) for v in ls))


class GaussNet(nn.Module):
    """Mean and variance heads; the variance head's softplus was dropped in a refactor."""

    def __init__(self, n_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.mean_head(h), self.var_head(h)  # missing softplus on the variance


@scenario(
    family="fumarole_sulfur_flux_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_head",),
    diverges=133,
    heldout=True,
    note="Gaussian NLL with the std taken as sqrt(var_head(h)) after the softplus on the variance "
    "head was dropped in a refactor; as the variance shrinks towards the small noise one "
    "prediction goes negative, sqrt of a negative gives NaN and the loss is non-finite",
)
def h637_fumarole_flux_sqrt_negative_var(ctx: Context) -> None:
    gen = seeded(6377)
    model = GaussNet(8, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    first_neg = None
    for step in range(300):
        x, y = next(batches)
        mu, var = model(x)
        if first_neg is None and bool((var <= 0).any()):
            first_neg = step
        std = torch.sqrt(var)
        loss = (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("a variance prediction went non-positive at the NaN step", first_neg == bad)
    ctx.check("loss fell before the NaN", bad is not None and min(ls[:bad]) < ls[0] - 0.2)


@scenario(
    family="bell_ringing_change_peal_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a calibration temperature of 1.5 read from a config in milli-units (0.0015) divides the "
    "head's logits; the softmax saturates and most rows' target probability rounds to exactly 1",
)
def h637_bell_peal_temperature_units(ctx: Context) -> None:
    gen = seeded(6378)
    model = Net(16, 48, out=4)
    temperature = 1.5e-3  # meant 1.5
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    collapsed: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 (last 20)", _median(collapsed[-20:]) > 0.4
    )
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="bobsled_runner_ice_friction_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("sensor",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 a new track logger writes the runner load in "
    "newtons where the rest is in kilonewtons (x1000 on a channel centred at 250); the sensor "
    "layer's fp16 output overflows to inf and the loss is non-finite",
)
def h637_bobsled_runner_load_newtons(ctx: Context) -> None:
    gen = seeded(6379)
    model = nn.Sequential()
    model.sensor = nn.Linear(8, 32)
    model.act1 = nn.GELU()
    model.mix = nn.Linear(32, 32)
    model.act2 = nn.GELU()
    model.out = nn.Linear(32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.sensor.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o.detach()))
    onset = 90
    for step in range(140):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 5] = (x[:, 5] * 40.0 + 250.0) * 1000.0  # N, not kN
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "sensor fp16 output non-finite at onset", not bool(seen["s"].isfinite().all())
            )
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.sensor(x).isfinite().all()))
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
    family="saddlery_girth_stitch_relu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="layer-wise lr decay lr * 0.75 ** (n_layers - depth) with n_layers typed 120 for 3: "
    "fc1's group gets lr 3e-3 * 0.75**119 (about 4e-18) and never moves while fc2 and the head "
    "train",
)
def h637_saddlery_girth_llrd_typo(ctx: Context) -> None:
    gen = seeded(6380)
    model = Net(16, 48, out=4, act=F.relu)
    n_layers = 120  # typo: 3
    groups = [
        {"params": model.fc1.parameters(), "lr": 3e-3 * 0.75 ** (n_layers - 1)},
        {"params": model.fc2.parameters(), "lr": 3e-3 * 0.75 ** (3 - 2)},
        {"params": model.head.parameters(), "lr": 3e-3},
    ]
    opt = torch.optim.NAdam(groups)
    ctx.attach(model, opt)
    batches = _classes(gen)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rel2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 relative", rel1 < 1e-6)
    ctx.check("fc2 moved over 1e-2 relative", rel2 > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < ctx.losses[0] and math.isfinite(ctx.losses[-1]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="lacemaking_bobbin_twist_resumed_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a preempted job: at step 100 the process dies, the restarted job rebuilds the model, "
    "reloads weights, AdamW state and the warm-up + cosine scheduler from its own checkpoint and "
    "goes on with a reshuffled data order (new seed); the loss trace shows the seam, training "
    "is fine (alarming-looking control)",
)
def h637_lacemaking_bobbin_preempted_resume(ctx: Context) -> None:
    gen = seeded(6381)
    model = Net(16, 48, out=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    total_steps = 220

    def lr_at(s: int) -> float:
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (total_steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    w_task = torch.randn(16, 4, generator=gen)

    def stream(g: torch.Generator):
        while True:
            x = torch.randn(64, 16, generator=g)
            y = (x @ w_task).argmax(1)
            flip = torch.rand(64, generator=g) < 0.05
            y = torch.where(flip, torch.randint(0, 4, (64,), generator=g), y)
            yield x, y

    batches = stream(gen)
    resume_at = 100
    same = False
    for step in range(total_steps):
        if step == resume_at:
            buf = io.BytesIO()
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                buf,
            )
            # the process dies; the restarted job builds fresh objects' state, then reloads
            for m in (model.fc1, model.fc2, model.head):
                m.reset_parameters()
            opt.state.clear()
            buf.seek(0)
            ckpt = torch.load(buf, weights_only=True)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            same = all(
                torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items()
            ) and len(opt.state) == len(list(model.parameters()))
            batches = stream(torch.Generator().manual_seed(96381))  # reshuffled order
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("weights and optimizer state restored exactly", same)
    ctx.check(
        "no setback at resume: 20 after under 1.5x the 20 before",
        _median(ls[resume_at : resume_at + 20]) < 1.5 * _median(ls[resume_at - 20 : resume_at]),
    )
    ctx.check(
        "loss fell under half, finite",
        _median(ls[-20:]) < 0.5 * ls[0] and all(math.isfinite(v) for v in ls),
    )


@scenario(
    family="waterwheel_bucket_fill_tanh_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Huber regression of a waterwheel's bucket fill from noisy flow readings, RAdam with two "
    "param groups (no weight decay on biases), ReduceLROnPlateau, 2-micro-batch accumulation, "
    "clipping at 1.0 (control)",
)
def h637_waterwheel_bucket_fill_plateau(ctx: Context) -> None:
    gen = seeded(6382)
    model = Net(8, 32, act=torch.tanh)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=32, noise=0.15)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under half", _median(ls[-20:]) < 0.5 * _median(ls[:5]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="spinning_wheel_yarn_twist_fp16_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="yarn-twist class from spindle readings: fp16 autocast + GradScaler, RMSprop, OneCycleLR, "
    "label smoothing 0.1, clipping at 1.0 after unscaling, 5% noisy labels (control)",
)
def h637_spinning_wheel_twist_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(6383)
    model = Net(16, 48, out=4)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _classes(gen)
    for _ in range(steps):
        x, y = next(batches)
        flip = torch.rand(len(y), generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.6x", _median(ls[-20:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
