"""Held-out set 655 (``h655_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and bundled digits, and a Hugging Face InternLM3 causal LM built from a
tiny config (``InternLM3Config`` through ``AutoModelForCausalLM.from_config``, which this
transformers maps to its Llama implementation)."""

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
    grad_norm,
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


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64, noise: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the (noisy) readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        score = x @ w + noise * torch.randn(batch, k, generator=gen)
        yield x, score.argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _TwoLayer(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _loop(ctx, model, opt, batches, steps, loss_fn, classifier=False, before=None, alter=None):
    """A plain loop: records the gradient norm in ctx.grad_norms, stops after a NaN loss."""
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- faults -----------------------------------------------------------------------------------------


class _StrikeAttention(nn.Module):
    """A learned query attends over the readings; returns the pooled value and the logits."""

    def __init__(self, dim: int, d_k: int = 16) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(d_k) * 0.1)
        self.key = nn.Linear(dim, d_k)
        self.value = nn.Linear(dim, d_k)
        self.d_k = d_k
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.key(x) @ self.query / math.sqrt(self.d_k)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=-1)
        return (w[..., None] * self.value(x)).sum(1)


class _ComboNet(nn.Module):
    def __init__(self, dim: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.attn = _StrikeAttention(dim)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x))


def _combo_batches(gen: torch.Generator, batch: int = 64, length: int = 12, dim: int = 6):
    """Punch traces: one position is the scored punch (marker feature on); its kind is the label."""
    proto = torch.randn(4, dim - 1, generator=gen)
    while True:
        kinds = torch.randint(0, 4, (batch, length), generator=gen)
        x = torch.zeros(batch, length, dim)
        x[..., 1:] = proto[kinds] + 0.3 * torch.randn(batch, length, dim - 1, generator=gen)
        where = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), where, 0] = 1.0
        yield x, kinds[torch.arange(batch), where]


@scenario(
    family="shadow_boxing_scored_punch_query_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a shadow-boxing punch classifier that pools a punch trace with a learned query over "
    "key projections (no QK-norm, no logit cap); the query and key were put in the no-decay "
    "group and the run uses the sweep's lr 3e-2; the task rewards an ever-sharper pick of the "
    "scored punch, so q.k/sqrt(d) keeps growing (over 20x, past 5) as the attention saturates",
)
def h655_shadow_boxing_attention_growth(ctx: Context) -> None:
    gen = seeded(6551)
    model = _ComboNet()
    qk = [model.attn.query, *model.attn.key.parameters()]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("attn.query", "attn.key"))]
    opt = torch.optim.AdamW(
        [{"params": qk, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.01}], lr=3e-2
    )
    ctx.attach(model, opt)
    peaks: list[float] = []
    batches = _combo_batches(gen)
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(model.attn.last_logits.abs().max()))
    ls = ctx.losses
    ctx.check("attention logit peak grew over 20x", max(peaks[-10:]) > 20 * max(peaks[:3]))
    ctx.check("attention logit peak over 5", max(peaks[-10:]) > 5.0)
    ctx.check("loss finite, no divergence", _finite(ls) and max(ls[-20:]) < 2 * ls[0])


@scenario(
    family="peat_turf_spade_slice_moisture_mse_regressor",
    optimizer="SGD(nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="a turf-spade slice-moisture MSE regressor; one shard (the batch at step 110) came from "
    "a logger exporting the probe readings in per-mille instead of fractions, so its inputs are "
    "x 1000; the loss jumps over 20x for that step, clipping at 1.0 keeps the update bounded, "
    "and the run recovers",
    onset=110,
)
def h655_peat_turf_bad_shard(ctx: Context) -> None:
    gen = seeded(6552)
    model = _TwoLayer(8, 32, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(200):
        x, y = next(batches)
        if step == 110:
            x = x * 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 110 over 20x the prior median", ls[110] > 20 * _median(ls[90:110]))
    ctx.check("gradient at step 110 over 10x the prior median", gs[110] > 10 * _median(gs[90:110]))
    ctx.check(
        "recovered: last losses within 3x of pre-shard", _median(ls[-10:]) < 3 * _median(ls[90:110])
    )
    ctx.check("loss finite", _finite(ls))


class _BatchStandardize(nn.Module):
    """Standardises each column with the batch's own statistics; the eps was left out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0)


class _MoulinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.standardize = _BatchStandardize()
        self.fc1 = nn.Linear(8, 32)
        self.act = nn.Tanh()
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(self.standardize(x))))


@scenario(
    family="ice_cave_drip_rate_batch_standardised_tanh_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("standardize",),
    diverges=70,
    heldout=True,
    note="an ice-cave drip-rate regressor that standardises each input column with its batch "
    "statistics, (x - mean) / std with no eps; at step 70 a batch comes in where one gauge was "
    "frozen and reports the same value for every row, std is 0 and the division gives 0/0 = NaN",
    onset=70,
)
def h655_ice_cave_zero_std(ctx: Context) -> None:
    gen = seeded(6553)
    model = _MoulinNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    nan_at: list[int] = []
    seen: list[bool] = []

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:, 3] = 0.25
        return x, y

    def loss_fn(out, y):
        seen.append(bool(torch.isnan(out).any()))
        return F.mse_loss(out, y)

    _loop(ctx, model, opt, _readings(gen), 150, loss_fn, alter=alter)
    ls = ctx.losses
    nan_at = [i for i, v in enumerate(ls) if not math.isfinite(v)]
    ctx.check("loss first NaN at step 70", bool(nan_at) and nan_at[0] == 70)
    ctx.check("loss finite before 70 and fell", _finite(ls[:70]) and ls[69] < ls[0])
    z = model.standardize(torch.full((4, 8), 0.25))
    ctx.check("standardize gives NaN on a constant column", bool(torch.isnan(z).all()))


class _DeepTanh(nn.Module):
    def __init__(self, depth: int = 14, width: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x)


@scenario(
    family="saddle_tree_gullet_width_deep_tanh_huber_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a saddle-tree gullet-width 14-layer tanh Huber regressor; the init helper squared the "
    "tanh gain (calculate_gain('tanh') ** 2 = 2.78 for 5/3), putting the stack in the chaotic "
    "regime where the gradient grows through depth: the first layer's gradient is over 10x the "
    "last hidden layer's; clipping at 1.0 keeps the run from blowing up",
)
def h655_saddle_tree_squared_gain(ctx: Context) -> None:
    gen = seeded(6554)
    model = _DeepTanh(gain=nn.init.calculate_gain("tanh") ** 2)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    ratios: list[float] = []
    batches = _readings(gen)
    for _step in range(120):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer gradient over 10x last hidden (median)", _median(ratios) > 10.0)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sluice_gate_headwater_linear_flow_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a sluice-gate flow regressor (a linear model on gauge readings) trained with SGD and "
    "StepLR(step_size=50, gamma=10), gamma typed 10 for 0.1; at step 50 the rate goes from 0.02 "
    "to 0.2, lr x sharpness passes 2 and the loss blows up",
    onset=50,
)
def h655_sluice_gate_steplr_gamma(ctx: Context) -> None:
    gen = seeded(6555)
    scale = torch.tensor([3.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.5, 0.25])
    w_true = torch.randn(8, 1, generator=gen)

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen) * scale
            yield x, x @ w_true + 0.05 * torch.randn(64, 1, generator=gen)

    model = nn.Sequential()
    model.add_module("flow", nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=10.0)
    ctx.attach(model, opt)
    lrs: list[float] = []
    it = batches()
    for _step in range(120):
        x, y = next(it)
        lrs.append(opt.param_groups[0]["lr"])
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    x, _ = next(it)
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    sharp = float(torch.linalg.eigvalsh(2 * xb.T @ xb / len(xb)).max())
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 before 50", lrs[10] * sharp < 2.0)
    ctx.check("lr x sharpness over 2 from 50", lrs[50] * sharp > 2.0)
    ctx.check("loss fell before 50", ls[49] < 0.1 * ls[0])
    ctx.check(
        "loss blew up after 50 (over 1e3x start or non-finite)",
        not _finite(ls) or max(ls[50:]) > 1e3 * ls[0],
    )


class _GaussHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.GELU()
        self.mean = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.fc2(self.act(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-8, 8)], 1)


def _gauss_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mean, log_var = out[:, :1], out[:, 1:]
    return F.gaussian_nll_loss(mean, y, log_var.exp())


@scenario(
    family="bell_rope_sally_catch_height_gaussian_nll_gelu_net",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a bell-ringer's sally catch-height Gaussian NLL net with per-layer param groups from a "
    "YAML file; the fc2 rate was typed 1e-9 for 1e-3, so fc2's updates are some 1e-9 of its "
    "weights and it stays at its init while the other layers train",
)
def h655_bell_rope_group_typo(ctx: Context) -> None:
    gen = seeded(6556)
    model = _GaussHead()
    fc2 = list(model.fc2.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc2.")]
    opt = torch.optim.NAdam([{"params": rest, "lr": 1e-3}, {"params": fc2, "lr": 1e-9}])
    ctx.attach(model, opt)
    w0 = model.fc2.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen), 150, _gauss_nll)
    rel = float((model.fc2.weight.detach() - w0).norm() / w0.norm())
    ls = ctx.losses
    ctx.check("fc2 moved under 1e-5 of its norm", rel < 1e-5)
    ctx.check("the rest trained: loss fell", _median(ls[-10:]) < _median(ls[:5]) - 0.3)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="fell_pony_gait_transition_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a fell-pony gait classifier trained with Adam at lr 0.3 (a sweep's SGD rate pasted "
    "into the Adam config); the first few huge updates drive fc2's ReLU pre-activations "
    "negative for every input, over half the fc2 units are dead for good, and the loss sits "
    "near chance",
)
def h655_fell_pony_dead_relu(ctx: Context) -> None:
    gen = seeded(6557)
    model = _TwoLayer(12, 64, 5)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    ctx.attach(model, opt)
    _loop(ctx, model, opt, _labels(gen), 150, F.cross_entropy, classifier=True)
    x, _ = next(_labels(seeded(65571), batch=512))
    with torch.no_grad():
        dead = dead_fraction(model.act2(model.fc2(model.act(model.fc1(x)))))
    ls = ctx.losses
    ctx.check("over half of fc2 units dead", dead > 0.5)
    ctx.check("loss near chance at the end", _median(ls[-20:]) > 0.8 * math.log(5))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="stone_skimming_bounce_count_accum_relu_classifier",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a stone-skimming bounce-count classifier trained over 8 micro-batches per step; the "
    "epoch-end branch that handles the last step (step 90) multiplies the loss by the "
    "accumulation count instead of dividing, so that one step's gradient is 64x; the logged "
    "loss is ordinary and clipping at 1.0 bounds the update",
    onset=90,
)
def h655_stone_skimming_accum_bug(ctx: Context) -> None:
    gen = seeded(6558)
    model = _TwoLayer(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=16, noise=0.5)
    accum = 8
    for step in range(160):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss * accum if step == 90 else loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 90 over 30x the prior median", gs[90] > 30 * _median(gs[70:90]))
    ctx.check("logged loss at 90 ordinary (under 2x)", ls[90] < 2 * _median(ls[70:90]))
    ctx.check("trained: loss fell", _median(ls[-10:]) < 0.7 * _median(ls[:5]))


class _GrainClassifier(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(x))) / self.temperature


@scenario(
    family="marquetry_veneer_grain_figure_temperature_classifier",
    optimizer="Adadelta",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a marquetry veneer grain-figure classifier (on the 8x8 digits as figure patches) with "
    "a softmax temperature read from a config that stores it in thousandths (1000 for 1.0); "
    "it was written as 1, read as T = 0.001, logits are divided by 0.001 and over half the rows' target probabilities "
    "round to exactly 1.0 in float32",
)
def h655_marquetry_temperature_milli(ctx: Context) -> None:
    gen = seeded(6559)
    cfg = {"temperature_milli": 1}  # meant 1000
    model = _GrainClassifier(temperature=cfg["temperature_milli"] / 1000)
    opt = torch.optim.Adadelta(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    _loop(ctx, model, opt, digit_batches(gen), 120, F.cross_entropy, classifier=True)
    x, y = digits()
    with torch.no_grad():
        frac = collapsed_fraction(model(x[:512]), y[:512])
    ctx.check("over half the rows at p = 1.0", frac > 0.5)
    ctx.check("temperature is 0.001", model.temperature == 0.001)
    ctx.check("loss finite", _finite(ctx.losses))


class _KilnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act(self.fc1(x)))))


@scenario(
    family="pottery_anagama_kiln_draught_fp16_silu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    note="an anagama-kiln draught regressor trained under fp16 autocast with a GradScaler; from "
    "step 60 the chimney-pressure feed sends pascals where the model expects bar (x 1e5), "
    "readings past 65504 overflow to inf in fc1 under fp16, fc1's output is non-finite, the loss "
    "is NaN and the scaler skips every step, halving its scale; the same batch is finite in float32",
    onset=60,
)
def h655_anagama_kiln_fp16_overflow(ctx: Context) -> None:
    gen = seeded(65510)
    model = _KilnNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    bad_x = None
    for step in range(100):
        x, y = next(batches)
        if step >= 60:
            x = x * 1e5  # the feed now sends pascals; the model expects bar
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    first_bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 60", first_bad == 60)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.float16):
            h16 = model.fc1(bad_x)
        f32 = model(bad_x)
    ctx.check("fc1 fp16 output non-finite", not bool(torch.isfinite(h16).all()))
    ctx.check("same batch finite in float32", bool(torch.isfinite(f32).all()))
    ctx.check("scale collapsed over 1000x", ctx.scales[-1] < ctx.scales[59] / 1000)
    ctx.check("trained before 60", _finite(ls[:60]) and _median(ls[50:60]) < _median(ls[:5]))


# -- healthy controls ------------------------------------------------------------------------------


def _tiny_internlm3(vocab: int = 128):
    from transformers import AutoModelForCausalLM, InternLM3Config

    config = InternLM3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(config)


@scenario(
    family="internlm3_bagad_march_score_causal_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny InternLM3 causal LM (InternLM3Config through AutoModelForCausalLM, the Llama "
    "implementation) on bagad march-score bytes: AdamW with weight decay on matrices only, "
    "linear warm-up then cosine decay, gradient clipping at 1.0; trains normally",
)
def h655_internlm3_bagad_control(ctx: Context) -> None:
    gen = seeded(65511)
    model = _tiny_internlm3()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 100, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="beekeeper_smoker_puff_pattern_entropy_min_classifier",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="semi-supervised: a beekeeper's smoker-puff pattern classifier (digits as puff "
    "patterns) trained on a small labelled batch plus entropy minimisation on unlabelled "
    "batches (weight 0.5, OneCycleLR, SGD Nesterov); the entropy term deliberately sharpens "
    "the predictions, so unlabelled entropy collapses toward 0 and the logits grow, which "
    "looks alarming, but held-out accuracy is high: a healthy, standard practice",
)
def h655_beekeeper_entropy_min_control(ctx: Context) -> None:
    gen = seeded(65512)
    x_all, y_all = digits()
    order = torch.randperm(len(y_all), generator=gen)
    lab, unl, test = order[:300], order[300:1400], order[1400:]
    model = _TwoLayer(64, 64, 10)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    ents: list[float] = []
    for _step in range(steps):
        li = lab[torch.randint(0, len(lab), (32,), generator=gen)]
        ui = unl[torch.randint(0, len(unl), (128,), generator=gen)]
        ctx.targets(y_all[li])
        ce = F.cross_entropy(model(x_all[li]), y_all[li])
        logp = F.log_softmax(model(x_all[ui]), dim=-1)
        ent = -(logp.exp() * logp).sum(1).mean()
        loss = ce + 0.5 * ent
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ents.append(float(ent.detach()))
    with torch.no_grad():
        acc = float((model(x_all[test]).argmax(1) == y_all[test]).float().mean())
    ls = ctx.losses
    ctx.check(
        "unlabelled entropy fell over 5x (the sharpening)",
        _median(ents[-10:]) < _median(ents[:5]) / 5,
    )
    ctx.check("held-out accuracy over 85%", acc > 0.85)
    ctx.check("loss fell and finite", _finite(ls) and _median(ls[-10:]) < 0.3 * _median(ls[:5]))


@scenario(
    family="lacrosse_cradle_drop_risk_bce_relu_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a lacrosse cradle drop-risk BCE classifier on noisy readings: smoothed binary targets "
    "(0.05 / 0.95), 2-micro-batch accumulation, clipping at 1.0, a head param group at half "
    "the rate, ReduceLROnPlateau on the running loss, Adamax; trains normally",
)
def h655_lacrosse_cradle_control(ctx: Context) -> None:
    gen = seeded(65513)
    model = _TwoLayer(12, 48, 1)
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adamax([{"params": rest, "lr": 4e-3}, {"params": head, "lr": 2e-3}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _labels(gen, k=2, batch=32, noise=0.5)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            target = y.float()[:, None] * 0.9 + 0.05
            loss = F.binary_cross_entropy_with_logits(model(x), target)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))
