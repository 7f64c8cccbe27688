"""Held-out set 678 (``h678_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face Qwen3-VL vision encoder built from a
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
    grad_norm,
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _params_vec(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _tiny_qwen3_vl_vision():
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    config = Qwen3VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=32,
        num_position_embeddings=64,
        deepstack_visual_indexes=[],
    )
    return Qwen3VLVisionModel(config)


def _qwen_patches(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, 3, 16, 16) frames -> Qwen-VL flattened patches in merge-window order, and grid_thw."""
    b = img.shape[0]
    x = img[:, :, None].expand(-1, -1, 2, -1, -1)  # a still frame repeated over temporal_patch 2
    x = x.reshape(b, 3, 2, 2, 2, 4, 2, 2, 4)  # c, t, gh/2, 2, ph, gw/2, 2, pw
    x = x.permute(0, 3, 6, 4, 7, 1, 2, 5, 8).reshape(b * 16, 3 * 2 * 4 * 4)
    return x, torch.tensor([[1, 4, 4]] * b)


# -- faults -----------------------------------------------------------------------------------------


class _Square(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * h


@scenario(
    family="tsugite_joint_fit_fp16_energy_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=70,
    heldout=True,
    onset=70,
    note="a tsugite (Japanese interlocking joint) fit-gap regressor from 8 raw gauge readings in "
    "micrometres, a squared-energy feature (h*h) followed by a LayerNorm, Adam with a "
    "torch.amp.GradScaler; the first 70 steps ran in fp32 (debug config), the resumed config "
    "turns on fp16 autocast at step 70: fc1's outputs are in the hundreds, their square "
    "overflows fp16's 65504 in the energy layer, the loss is NaN every step and the scaler "
    "skips and halves its scale step after step; the same batch in fp32 is finite",
)
def h678_tsugite_energy_fp16_resume(ctx: Context) -> None:
    gen = seeded(6781)

    class JointNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.energy = _Square()
            self.norm = nn.LayerNorm(16)
            self.fc2 = nn.Linear(16, 32)
            self.act = nn.GELU()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.fc2(self.norm(self.energy(self.fc1(x))))))

    model = JointNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, batch=32)
    energy_max = []
    for step in range(130):
        x, y = next(data)
        x = 400.0 * x  # gauge readings in micrometres
        amp = step >= 70  # resumed config: amp: true
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
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
        if step == 70:
            with torch.no_grad():
                fp32_loss = float(F.mse_loss(model(x), y))
                energy_max.append(float(model.energy(model.fc1(x)).abs().max()))
    ls = ctx.losses
    ctx.check("loss finite for steps 0-69", _finite(ls[:70]))
    ctx.check("loss non-finite at step 70 and after", not any(math.isfinite(v) for v in ls[70:]))
    ctx.check("the same batch at step 70 in fp32 is finite", math.isfinite(fp32_loss))
    ctx.check("energy at step 70 over fp16's max 65504", energy_max[0] > 65504)
    ctx.check("scaler scale fell over 1e6x after step 70", ctx.scales[-1] < 1e-6 * ctx.scales[69])


@scenario(
    family="glassine_calender_gloss_drifting_tare_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="a glassine-paper supercalender gloss regressor, tanh MLP, plain SGD; from step 40 the "
    "gloss meter's drift compensation multiplies the tare by 1.05 every step instead of once "
    "per paper roll, so the targets drift ever faster; the model lags further behind each step and "
    "the loss, after falling, climbs slowly and steadily with no spike and no NaN",
)
def h678_glassine_gloss_tare_accumulates(ctx: Context) -> None:
    gen = seeded(6782)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    data = _readings(gen)
    tare = 0.01
    for step in range(240):
        x, y = next(data)
        if step >= 40:
            tare *= 1.05  # bug: drift compensation compounded every step, not once per roll
        loss = F.mse_loss(model(x), y + (tare if step >= 40 else 0.0))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls[20:80])
    ctx.check(
        "loss of the last 20 steps over 5x its low at steps 20-79", _median(ls[-20:]) > 5 * low
    )
    ctx.check(
        "loss climbs steadily: each 40-step median above the one before after step 120",
        all(_median(ls[a : a + 40]) > _median(ls[a - 40 : a]) for a in (120, 160, 200)),
    )
    ctx.check(
        "no step's loss over 3x the one before (no spike)",
        all(b < 3 * a for a, b in zip(ls[60:-1], ls[61:], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="brushwood_fascine_bundle_deep_tanh_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="a brushwood fascine (river-bank bundle) compaction regressor, a 12-layer tanh MLP, SGD "
    "Nesterov with clipping at 1; the init helper's gain was typed 5.0 instead of tanh's 5/3, "
    "so the net sits deep in the chaotic regime: the gradient grows layer by layer towards the "
    "input, the first layer's over 30x the last hidden layer's; the clip keeps the loss finite",
)
def h678_brushwood_fascine_init_gain(ctx: Context) -> None:
    gen = seeded(6783)
    layers: list[nn.Module] = []
    sizes = [8] + [32] * 11
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(32, 1))

    class Fascine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = Fascine()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=5.0)  # typo for nn.init.calculate_gain("tanh")
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios = []
    for _step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model.net[0].weight.grad.norm() / model.net[20].weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 30x the last hidden layer's at step 0", ratios[0] > 30)
    ctx.check("still over 10x in the last 20 steps", _median(ratios[-20:]) > 10)
    ctx.check("gradient norm over 1 (clipped) on most steps", _median(ctx.grad_norms) > 1)
    ctx.check("loss finite throughout", _finite(ctx.losses))


class _RowStandardize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)  # no eps


@scenario(
    family="matryoshka_lathe_blank_std_norm_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=55,
    heldout=True,
    onset=55,
    note="a matryoshka lathe-blank wall-thickness regressor from 16 chatter-microphone bands, "
    "each row standardized by its own mean and std with no eps, SiLU MLP, RAdam; at step 55 a "
    "batch holds a reading from a muted microphone (all 16 bands equal): std is 0, (x - mean) "
    "/ std is 0/0, the norm layer emits NaN and the loss is NaN",
)
def h678_matryoshka_row_std_no_eps(ctx: Context) -> None:
    gen = seeded(6784)

    class BlankNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = _RowStandardize()
            self.body = _Net(16, 32, 1, nn.SiLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.norm(x))

    model = BlankNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen, n_in=16, batch=32)
    nan_in_norm = None
    for step in range(120):
        x, y = next(data)
        x = x + 3.0
        if step == 55:
            x[7] = 0.25  # muted microphone: every band the same floor value
        out_norm = model.norm(x)
        if step == 55:
            nan_in_norm = bool(torch.isnan(out_norm).any()) and bool(torch.isfinite(x).all())
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite for steps 0-54", _finite(ls[:55]))
    ctx.check("loss NaN at step 55", len(ls) == 56 and math.isnan(ls[55]))
    ctx.check("norm layer output NaN at step 55 from finite input", bool(nan_in_norm))


@scenario(
    family="slackline_whip_mount_log_scale_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a slackline whip-mount trick classifier on 8x8 pressure maps (the digits), a cosine "
    "classifier whose scale is learnt as exp(log_scale), Adagrad; the config's scale 8.0 was "
    "loaded into log_scale itself, so the logits are cos x 2981: the softmax of most rows rounds "
    "to exactly 1.0 for the top class (with the intended scale 8 it cannot)",
)
def h678_slackline_cosine_log_scale(ctx: Context) -> None:
    gen = seeded(6785)

    class CosineHead(nn.Module):
        def __init__(self, dim: int, classes: int, scale: float) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
            self.log_scale = nn.Parameter(torch.tensor(scale))  # bug: should be log(scale)

        def cosine(self, h: torch.Tensor) -> torch.Tensor:
            return F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).T

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.cosine(h) * self.log_scale.exp()

    class TrickNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(64, 32)
            self.head = CosineHead(32, 10, 8.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fc2(self.act1(self.fc1(x))))

    model = TrickNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    collapsed, intended = [], []
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            collapsed.append(collapsed_fraction(logits, y))
            intended.append(
                collapsed_fraction(model.head.cosine(model.fc2(model.act1(model.fc1(x)))) * 8.0, y)
            )
    ctx.check("over 30% of rows at p = 1.0 in the last 20 steps", _median(collapsed[-20:]) > 0.3)
    ctx.check("with the intended scale 8 no row collapses", max(intended) == 0.0)
    ctx.check("effective scale over 100", float(model.head.log_scale.exp()) > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="moulin_ice_meltwater_surge_bce_net",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a glacier-moulin meltwater surge alarm (binary, BCE with logits) from 8 borehole "
    "readings, GELU MLP, RMSprop with clipping at 1; the shard read at step 70 comes from a "
    "logger that writes -9999 for a missing reading: one batch with sentinel values, the loss "
    "and gradient spike at that step, the clip holds the update and the run recovers",
)
def h678_moulin_sentinel_shard(ctx: Context) -> None:
    gen = seeded(6786)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    worst = 0.0
    for step in range(150):
        x, y = next(data)
        y = (y > 0).float()
        if step == 70:
            miss = torch.rand(x.shape, generator=gen) < 0.2
            x = torch.where(miss, torch.full_like(x, -9999.0), x)
            worst = float(x.abs().max())
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("batch at step 70 holds -9999 sentinels", worst == 9999.0)
    ctx.check(
        "loss at step 70 over 20x the median of steps 50-69", ls[70] > 20 * _median(ls[50:70])
    )
    ctx.check(
        "gradient at step 70 over 20x the median of steps 50-69", g[70] > 20 * _median(g[50:70])
    )
    ctx.check(
        "loss back under 2x that median by steps 90-99",
        _median(ls[90:100]) < 2 * _median(ls[50:70]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tamari_soy_press_accum_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a tamari soy-press (moromi pressing) yield regressor, SiLU MLP, Huber loss, 8-micro-batch "
    "accumulation, clipping at 2, SGD momentum; on the first step after the checkpoint at step "
    "90 the resumed accumulation loop multiplies each micro-batch loss by accum instead of "
    "dividing, so that step's gradient is 64x; the data are clean, the logged loss ordinary, "
    "the clip holds the update and the run carries on",
)
def h678_tamari_press_accum_multiply(ctx: Context) -> None:
    gen = seeded(6787)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=8)
    accum = 8
    for step in range(160):
        factor = accum if step == 90 else 1.0 / accum  # resumed loop: loss * accum
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss * factor).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 90 over 30x the median of steps 70-89", g[90] > 30 * _median(g[70:90])
    )
    ctx.check("gradient back to ordinary by step 95", g[95] < 5 * _median(g[70:90]))
    ctx.check("logged loss at step 90 ordinary (< 3x max of 80-89)", ls[90] < 3 * max(ls[80:90]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="risha_oud_plectrum_attack_gaussian_nll_net",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="a risha (oud plectrum) attack-loudness regressor with a Gaussian NLL head (mean and "
    "log-variance), GELU MLP, AdamW (beta2 0.999); at step 40 a leftover manual fp16 loss "
    "scale (x 1e4, never unscaled) is applied for one step from a stale resume flag: one "
    "giant gradient fills Adam's second moment, and for the next hundred steps the updates "
    "are a small fraction of what they were and the loss stalls far above where it was heading",
)
def h678_risha_stale_loss_scale(ctx: Context) -> None:
    gen = seeded(6788)
    model = _Net(8, 32, 2, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
    ctx.attach(model, opt)
    data = _readings(gen)
    moves, vmax = [], []
    for step in range(160):
        x, y = next(data)
        out = model(x)
        loss = F.gaussian_nll_loss(out[:, :1], y, out[:, 1:].exp())
        scale = 1e4 if step == 40 else 1.0  # stale manual loss scale from the fp16 config
        (loss * scale).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = _params_vec(model)
        opt.step()
        moves.append(float((_params_vec(model) - before).norm()))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 40 over 1000x the median of steps 20-39", g[40] > 1000 * _median(g[20:40])
    )
    ctx.check("second moment max over 1e4x after step 40", vmax[40] > 1e4 * vmax[39])
    ctx.check(
        "updates of steps 60-159 under 1/10 of steps 20-39",
        _median(moves[60:]) < 0.1 * _median(moves[20:40]),
    )
    ctx.check(
        "loss was falling before (steps 30-39 under 0.9x steps 0-9)",
        _median(ls[30:40]) < 0.9 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="gusle_bow_stroke_gate_bias_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a gusle (one-string bowed fiddle) bow-stroke classifier on 8x8 spectrogram patches (the "
    "digits), ReLU MLP, NAdam; the init loop applies the gate bias -4 (meant for a gating "
    "layer) to every layer in cfg.gated, where a copy-paste put 'fc2': every fc2 ReLU is dead "
    "from the first step, no gradient reaches fc1 or fc2 and the loss sits at chance",
)
def h678_gusle_gate_bias_copy(ctx: Context) -> None:
    gen = seeded(6789)
    model = _Net(64, 64, 10, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-4.0)  # cfg.gated = ["fc2"]
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    dead = []
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(x))))))
    ls = ctx.losses
    ctx.check("over 95% of fc2's units dead at the end", dead[-1] > 0.95)
    ctx.check("loss of the last 20 steps above 2.0 (chance is 2.30)", _median(ls[-20:]) > 2.0)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="batik_tjanting_wax_flow_onecycle_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a batik tjanting (wax pen) flow-rate regressor, tanh MLP, full-batch SGD under "
    "OneCycleLR; max_lr was typed 1.0 instead of 0.01: the run trains while the rising lr is "
    "under 2/sharpness, then the lr passes the stability limit and the loss blows up",
)
def h678_batik_tjanting_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(67810)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=300, pct_start=0.5, div_factor=100
    )
    ctx.attach(model, opt)
    x, y = next(_readings(gen, batch=256))
    params = list(model.parameters())

    def sharpness() -> float:
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            norm = math.sqrt(sum(float((u * u).sum()) for u in v))
            v = [u / norm for u in v]
            g = torch.autograd.grad(F.mse_loss(model(x), y), params, create_graph=True)
            hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v, strict=True)), params)
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
            v = [h.detach() for h in hv]
        return lam

    products = []
    for step in range(300):
        lr = opt.param_groups[0]["lr"]
        if step % 10 == 0:
            products.append((step, lr * sharpness()))
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e6:
            break
    ls = ctx.losses
    low_at = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("loss fell at first (its low under 0.5x step 0)", min(ls) < 0.5 * ls[0])
    ctx.check(
        "loss blew up past 100x its low, or non-finite",
        not _finite(ls) or max(ls[low_at:]) > 100 * ls[low_at],
    )
    ctx.check("lr x sharpness under 2 at step 0", products[0][1] < 2)
    ctx.check(
        "lr x sharpness over 2 before the blow-up",
        any(p > 2 for s, p in products if s <= len(ls) - 1),
    )


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="mudflat_hover_sled_track_qwen3_vl_vision_unfreeze_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a mudflat hover-sled (mud-horse) track-depth regressor on 16x16 frames: a tiny Hugging "
    "Face Qwen3-VL vision encoder (Qwen3VLVisionModel from a config) with a linear head on the "
    "merged tokens, AdamW with param groups (encoder at a tenth of the head's lr), gradual "
    "unfreezing (ULMFiT): the encoder is frozen for 40 steps and unfrozen at step 40, so the "
    "gradient norm jumps; healthy: the loss keeps falling",
)
def h678_mudflat_qwen3_vl_gradual_unfreeze(ctx: Context) -> None:
    gen = seeded(67811)

    class TrackNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = _tiny_qwen3_vl_vision()
            self.head = nn.Linear(4 * 32, 1)

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            patches, thw = _qwen_patches(img)
            pooled = self.vision(patches, grid_thw=thw).pooler_output
            return self.head(pooled.reshape(img.shape[0], -1))

    grid = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"))

    def batches():
        while True:
            r = 1.5 + 3 * torch.rand(16, generator=gen)
            c = 4 + 8 * torch.rand(16, 2, generator=gen)
            d2 = ((grid[None] - c[:, :, None, None]) ** 2).sum(1)
            blob = torch.exp(-d2 / (2 * r[:, None, None] ** 2))
            img = blob[:, None].expand(-1, 3, -1, -1) + 0.1 * torch.randn(
                16, 3, 16, 16, generator=gen
            )
            yield img, ((r - 3) / 1)[:, None]

    model = TrackNet()
    opt = torch.optim.AdamW(
        [
            {"params": model.vision.parameters(), "lr": 3e-4},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    model.vision.requires_grad_(False)
    ctx.attach(model, opt)
    data = batches()
    for step in range(90):
        if step == 40:
            model.vision.requires_grad_(True)  # gradual unfreezing
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient norm jumps over 3x at the unfreeze", _median(g[40:45]) > 3 * _median(g[30:40])
    )
    ctx.check(
        "loss of the last 10 steps under 0.5x the first 10",
        _median(ls[-10:]) < 0.5 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="diamond_dust_halo_grade_label_smoothing_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a diamond-dust halo (ice-crystal sun pillar) grade classifier on 8x8 sky crops (the "
    "digits) with sensor noise, GELU MLP, label smoothing 0.1, Adamax with param groups (head "
    "at half the lr), ReduceLROnPlateau on the running loss; healthy",
)
def h678_diamond_dust_plateau_smoothing(ctx: Context) -> None:
    gen = seeded(67812)
    model = _Net(64, 64, 10, nn.GELU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [{"params": body, "lr": 4e-3}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    acc, window = [], []
    for step in range(150):
        x, y = next(data)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        acc.append(float((logits.argmax(1) == y).float().mean()))
        window.append(float(loss))
        if step % 10 == 9:
            sched.step(sum(window) / len(window))
            window = []
    ls = ctx.losses
    ctx.check(
        "loss of the last 20 steps under 0.5x the first 10",
        _median(ls[-20:]) < 0.5 * _median(ls[:10]),
    )
    ctx.check("accuracy over 0.8 in the last 20 steps", _median(acc[-20:]) > 0.8)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="duduk_reed_breath_tied_autoencoder",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a duduk (apricot-wood double reed) breath-pressure denoising autoencoder with tied "
    "weights (the decoder is the encoder's transpose), Huber loss, ASGD with a linear warm-up "
    "into cosine decay (LambdaLR), clipping at 1, noisy batches; healthy",
)
def h678_duduk_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(67813)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(24, 8)
            self.act = nn.Tanh()
            self.dec_bias = nn.Parameter(torch.zeros(24))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)

    basis = torch.randn(4, 24, generator=gen) / 2

    def batches():
        while True:
            z = torch.randn(64, 4, generator=gen)
            clean = z @ basis
            yield clean + 0.1 * torch.randn(64, 24, generator=gen), clean

    model = TiedAE()
    opt = torch.optim.ASGD(model.parameters(), lr=0.5)
    total = 200

    def schedule(step: int) -> float:
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / (total - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ctx.attach(model, opt)
    data = batches()
    for _step in range(total):
        x, y = next(data)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss of the last 20 steps under 0.5x the first 10",
        _median(ls[-20:]) < 0.5 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))
