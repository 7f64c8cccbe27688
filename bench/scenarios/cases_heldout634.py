"""Held-out set 634 (``h634_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data or scikit-learn's bundled digits, and one Hugging Face Phi causal LM
built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digit_batches, scenario, seeded, text_batches


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


def _grad_norm(model: nn.Module) -> float:
    gs = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 64, out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(self.features(x))))


# -- faults -----------------------------------------------------------------------------------------


class StrokeAttention(nn.Module):
    """Single-head self-attention whose scale is ``scale`` (meant to be 1/sqrt(d))."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.scale = scale
        self.last_logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ self.v(x)


class ChopTagger(nn.Module):
    def __init__(self, n_in: int = 6, dim: int = 32, classes: int = 3, scale: float = 1.0):
        super().__init__()
        self.embed = nn.Linear(n_in, dim)
        self.attn = StrokeAttention(dim, scale)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.norm(h + self.attn(h))
        return self.head(h)


def _chop_batches(gen: torch.Generator, batch: int = 32, length: int = 12, n_in: int = 6):
    """Stroke sequences; each stroke's label depends on the stroke with the largest force."""
    w = torch.randn(n_in, 3, generator=gen)
    while True:
        x = torch.randn(batch, length, n_in, generator=gen)
        key = x[:, :, 0].argmax(1)
        ref = x[torch.arange(batch), key]
        y = ((x + ref[:, None]) @ w).argmax(-1)
        yield x, y


@scenario(
    family="lumberjack_springboard_chop_sqrt_scale_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="attention scale written math.sqrt(d) for 1 / math.sqrt(d) (32x too large), AdamW "
    "with weight_decay 0 and lr 1e-2: q.k logits grow over 20x their start",
)
def h634_springboard_chop_attention_scale_typo(ctx: Context) -> None:
    gen = seeded(6341)
    dim = 32
    model = ChopTagger(dim=dim, scale=math.sqrt(dim))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = _chop_batches(gen)
    peaks = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        out = model(x)
        peaks.append(float(model.attn.last_logits.abs().max()))
        loss = F.cross_entropy(out.reshape(-1, 3), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("attention logits grew over 20x", max(peaks[-10:]) > 20 * peaks[0])


@scenario(
    family="kettle_drum_pedal_tuning_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the z-loss / logit penalty term dropped in a refactor, Adam at lr 1e-2 with no weight "
    "decay on separable pedal readings: the head's weights and logits keep growing, over 20x",
)
def h634_kettle_drum_logit_penalty_dropped(ctx: Context) -> None:
    gen = seeded(6342)

    model = ReluNet(16, 64, 4)
    n0 = float(model.head.weight.norm())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    peaks = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        out = model(x)
        peaks.append(float(out.detach().abs().max()))
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("head logits grew over 20x", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check("head weight norm grew over 2x", float(model.head.weight.norm()) > 2 * n0)


@scenario(
    family="unicycle_hockey_stick_phase_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature read from a config in milliseconds (2 ms) and used as seconds: "
    "logits divided by 0.002 instead of 2.0; over 40% of rows' target probability is exactly 1.0",
)
def h634_unicycle_hockey_temperature_units(ctx: Context) -> None:
    gen = seeded(6343)
    model = ReluNet(16, 64, 4)
    temperature = 2.0 / 1000.0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    frac = 0.0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        p = torch.softmax(logits.detach().float(), -1)
        frac = float((p.gather(1, y[:, None]) == 1.0).float().mean())
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)


def _top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="wave_pool_surge_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD, 150-step linear warm-up to a peak lr typed 2.5 for 0.025; peak lr x top "
    "Hessian eigenvalue is over 2 and the surge-height loss blows up during the warm-up",
)
def h634_wave_pool_lr_typo(ctx: Context) -> None:
    gen = seeded(6344)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    model.append(nn.Linear(32, 1))
    lr = 2.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _regression(gen)
    probe = next(batches)
    eig = _top_eig(model, lambda: F.mse_loss(model(probe[0]), probe[1]))
    ctx.attach(model, opt)
    for step in range(200):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 150)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("peak lr x top Hessian eigenvalue over 2", lr * eig > 2.0)
    ls = [v for v in ctx.losses if math.isfinite(v)]
    blew = not math.isfinite(ctx.losses[-1]) or max(ls) > 100 * ctx.losses[0]
    ctx.check("loss blew up (non-finite or over 100x its start)", blew)


@scenario(
    family="dry_stone_waller_batter_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="16-deep tanh MLP initialised with std 4.0/sqrt(fan_in) (gain typed 4.0 for 1.0); "
    "gradient at layer 0 over 10x the last layer's, clipped at 1.0, SGD momentum",
)
def h634_dry_stone_batter_init_gain(ctx: Context) -> None:
    gen = seeded(6345)
    sizes = [8] + [32] * 15 + [1]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=4.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    last = len(model) - 1
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model[0].weight.grad.norm() / model[last].weight.grad.norm()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0's gradient over 10x the last layer's", _median(ratios) > 10.0)


@scenario(
    family="clockmaker_escapement_beat_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1 bias initialised with nn.init.constant_(bias, -3.0) (a gate-bias init pasted onto "
    "a ReLU layer); over 70% of fc1 units never fire and the loss stalls",
)
def h634_clockmaker_escapement_dead_bias(ctx: Context) -> None:
    gen = seeded(6346)
    model = ReluNet(16, 64, 4)
    nn.init.constant_(model.fc1.bias, -3.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        h = model.features(x)
        acc = float((model(x).argmax(1) == y).float().mean())
    dead = float((h <= 0).all(0).float().mean())
    ctx.check("over 70% of fc1 units dead", dead > 0.7)
    ctx.check("loss stalls above 0.7", _median(ctx.losses[-20:]) > 0.7 and acc < 0.8)


class LogFeature(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@scenario(
    family="snow_pillow_water_equivalent_log_feature_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="pillow-pressure channel log-transformed in the model with no clamp; at step 90 a "
    "snow-free shard reads exactly 0, log(0) = -inf and the loss is non-finite",
)
def h634_snow_pillow_log_zero(ctx: Context) -> None:
    gen = seeded(6347)
    model = nn.Sequential()
    model.logfeat = LogFeature()
    model.fc1 = nn.Linear(6, 32)
    model.act = nn.SiLU()
    model.head = nn.Linear(32, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(6, 1, generator=gen) / 3
    onset = 90
    for step in range(130):
        x = torch.rand(64, 6, generator=gen) * 2.0 + 0.1
        y = torch.log(x) @ w + 0.05 * torch.randn(64, 1, generator=gen)
        if step == onset:
            x[:, 0] = 0.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("loss non-finite at step 90", len(ctx.losses) == onset + 1)
    ctx.check("loss finite before step 90", all(math.isfinite(v) for v in ctx.losses[:onset]))


@scenario(
    family="weir_salmon_leap_height_huber_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one shard at step 110 logs the weir-gauge readings in millimetres instead of metres "
    "(x1000); Huber loss over 10x, gradient over 10x, clipped, the run recovers",
)
def h634_salmon_leap_mm_shard(ctx: Context) -> None:
    gen = seeded(6348)
    model = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU())
    model.append(nn.Linear(32, 1))
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    grads = []
    for step in range(180):
        x, y = next(batches)
        if step == onset:
            x = x * 1000.0
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        grads.append(_grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _median(ctx.losses[onset - 20 : onset])
    ctx.check("loss over 10x at the bad shard", ctx.losses[onset] > 10 * before)
    ctx.check("gradient over 10x at the bad shard", grads[onset] > 10 * _median(grads[:onset]))
    ctx.check("recovers", _median(ctx.losses[-20:]) < 3 * before)


@scenario(
    family="hurling_sliotar_flight_accum_silu_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="4-micro-batch gradient accumulation; on step 100 (a resumed run's first step) the "
    "micro-batch loss is multiplied by 1000 instead of 1/4; gradient over 30x, logged loss "
    "ordinary",
)
def h634_sliotar_accum_scale_bug(ctx: Context) -> None:
    gen = seeded(6349)
    model = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 1))
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=16)
    onset = 100
    grads = []
    for step in range(160):
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss * (1000.0 if step == onset else 0.25)).backward()
            total += float(loss) / 4
        grads.append(_grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient over 30x at step 100", grads[onset] > 30 * _median(grads[:onset]))
    ctx.check(
        "logged loss ordinary at step 100",
        ctx.losses[onset] < 3 * _median(ctx.losses[onset - 10 : onset]),
    )


@scenario(
    family="tent_pegging_lance_pickup_two_group_classifier",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="two param groups; the trunk's lr typed 1e-9 for 1e-3 (exponent slip): fc1 never "
    "moves while the head trains",
)
def h634_tent_pegging_group_lr_typo(ctx: Context) -> None:
    gen = seeded(63410)
    model = ReluNet(16, 64, 4)
    trunk = list(model.fc1.parameters())
    rest = list(model.fc2.parameters()) + list(model.head.parameters())
    opt = torch.optim.Adam([{"params": trunk, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    ctx.attach(model, opt)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    batches = _classes(gen)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved1 = float((model.fc1.weight - w0).norm() / w0.norm())
    moved_h = float((model.head.weight - h0).norm() / h0.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("head moved over 5% of its norm", moved_h > 0.05)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="wood_turning_lathe_catch_distilled_student",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="knowledge distillation from a fixed, pre-trained teacher at temperature 4; the logged "
    "loss is the small, noisy KL term (not scaled by T^2), with SGD Nesterov and cosine decay; "
    "alarming-looking control: the student learns (accuracy over 85%)",
)
def h634_lathe_catch_distillation(ctx: Context) -> None:
    gen = seeded(63411)
    batches = digit_batches(gen)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    t_opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        x, y = next(batches)
        F.cross_entropy(teacher(x), y).backward()
        t_opt.step()
        t_opt.zero_grad(set_to_none=True)
    teacher.eval().requires_grad_(False)
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ctx.attach(student, opt)
    temp = 4.0
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temp, -1)
        logp = F.log_softmax(student(x) / temp, -1)
        loss = F.kl_div(logp, soft, reduction="batchmean")
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    x, y = next(batches)
    with torch.no_grad():
        acc = float((student(x).argmax(1) == y).float().mean())
    ctx.check("student accuracy over 85%", acc > 0.85)
    ctx.check("KL fell", _median(ctx.losses[-20:]) < 0.5 * _median(ctx.losses[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="hop_kiln_drying_log_phi_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hugging Face Phi causal LM from a tiny config on byte text, AdamW, linear warm-up then "
    "cosine decay, gradient clipping at 1.0 (control)",
)
def h634_hop_kiln_phi_lm(ctx: Context) -> None:
    from transformers import PhiConfig, PhiForCausalLM

    gen = seeded(63412)
    config = PhiConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = PhiForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 150, 15

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    batches = text_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("loss fell over 30%", _median(ctx.losses[-10:]) < 0.7 * ctx.losses[0])
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    family="mudpot_bubble_burst_fp16_onecycle_silu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler, SGD momentum, OneCycleLR, clipping after unscale_, noisy "
    "readings, Huber loss (control)",
)
def h634_mudpot_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(63413)
    model = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
    model.append(nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen, noise=0.2)
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("loss fell over 30%", _median(ctx.losses[-20:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
