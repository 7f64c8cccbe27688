"""Held-out set 677 (``h677_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data, the digits and standard-library bytes, and a Hugging Face GLM-4V vision
encoder built from a tiny config."""

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


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Regressor(nn.Module):
    def __init__(self, n_in: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class _Classifier(nn.Module):
    def __init__(self, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tiny_glm4v_vision():
    from transformers import Glm4vVisionConfig
    from transformers.models.glm4v.modeling_glm4v import Glm4vVisionModel

    config = Glm4vVisionConfig(
        depth=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        out_hidden_size=16,
        patch_size=4,
        temporal_patch_size=1,
        spatial_merge_size=2,
        image_size=16,
        in_channels=1,
        initializer_range=0.02,
    )
    return Glm4vVisionModel(config)


def _glm_patches(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 16, 16) images to GLM-4V's flattened patches in 2x2 merge order, and grid_thw."""
    b = img.shape[0]
    p, m = 4, 2
    g = 16 // p
    x = img.reshape(b, g // m, m, p, g // m, m, p)  # b, hb, mh, ph, wb, mw, pw
    x = x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b * g * g, p * p)
    grid = torch.tensor([[1, g, g]] * b)
    return x, grid


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sponge_diver_ascent_rate_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a sponge-diver (skandalopetra) safe-ascent-rate regressor, SiLU MLP, Adam with beta2 "
    "0.9999; at step 60 the depth-logger merge reads one batch's loss in grams instead of "
    "kilograms of ballast and the loss is multiplied by 1e4 for that step only: one giant "
    "gradient fills Adam's second moment, the updates afterwards are tens of times smaller and "
    "the loss stalls where it was",
)
def h677_sponge_diver_loss_grams(ctx: Context) -> None:
    gen = seeded(6771)
    model = _Regressor(8, 32, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    data = _readings(gen)
    steps_size = []
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        scale = 1e4 if step == 60 else 1.0  # grams for kilograms, one merge
        (scale * loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        steps_size.append(
            float(
                torch.stack(
                    [
                        (p.detach() - b).norm()
                        for p, b in zip(model.parameters(), before, strict=True)
                    ]
                ).norm()
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, u, ls = ctx.grad_norms, steps_size, ctx.losses
    ctx.check(
        "gradient at step 60 over 1000x the median of steps 40-59", g[60] > 1e3 * _median(g[40:60])
    )
    ctx.check(
        "update size over steps 140-199 over 5x smaller than over steps 40-59",
        _median(u[140:200]) * 5 < _median(u[40:60]),
    )
    ctx.check(
        "loss stalls: median of the last 40 steps above 0.7x that of steps 50-59",
        _median(ls[-40:]) > 0.7 * _median(ls[50:60]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tidepool_salinity_drift_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a tide-pool salinity-drift regressor, SiLU MLP, MSE, RMSprop, clipping at 1; one "
    "shard from a refractometer logging in parts per thousand x 1000 (ppm) arrives as the batch "
    "of step 90, its targets 1000x too large: loss and gradient burst for that step, the clip "
    "holds the update and the run recovers on clean batches",
)
def h677_tidepool_salinity_ppm_shard(ctx: Context) -> None:
    gen = seeded(6772)
    model = _Regressor(8, 32, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0  # ppm shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "loss at step 90 over 100x the median of steps 70-89", ls[90] > 100 * _median(ls[70:90])
    )
    ctx.check(
        "gradient at step 90 over 50x the median of steps 70-89", g[90] > 50 * _median(g[70:90])
    )
    ctx.check(
        "recovers: median loss of the last 30 steps under 2x that of steps 70-89",
        _median(ls[-30:]) < 2 * _median(ls[70:90]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="kendo_men_strike_glm4v_vision_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=(
        "glm.merger",
        "glm.merger.proj",
        "glm.merger.gate_proj",
        "glm.merger.up_proj",
        "glm.merger.down_proj",
    ),
    diverges=None,
    heldout=True,
    note="a kendo strike-target classifier (men, kote, do, tsuki ... as 10 classes of 16x16 "
    "glyph frames, the digits upsampled): a tiny Hugging Face GLM-4V vision encoder "
    "(Glm4vVisionModel from a config) with a mean-pooled linear head, AdamW with param groups; "
    "the patch merger's group lr was read from lr_merger, which a YAML typo set to 0e-4, so the "
    "merger never moves while the patch embedding, the blocks and the head train",
)
def h677_kendo_glm4v_merger_lr_typo(ctx: Context) -> None:
    gen = seeded(6773)

    class StrikeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.glm = _tiny_glm4v_vision()
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 10)

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            b = img.shape[0]
            patches, grid = _glm_patches(img)
            out = self.glm(patches, grid_thw=grid)
            h = out.pooler_output  # the merger's output
            return self.head(self.norm(h.reshape(b, -1, 16).mean(1)))

    model = StrikeNet()
    merger = [p for n, p in model.named_parameters() if n.startswith("glm.merger.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("glm.merger.")]
    lr_merger = float("0e-4")  # typo for 3e-4
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-2}, {"params": merger, "lr": lr_merger}], weight_decay=0.01
    )
    ctx.attach(model, opt)
    start_m = [p.detach().clone() for p in merger]
    start_r = [p.detach().clone() for p in rest]
    data = digit_batches(gen, batch=32)
    for _step in range(60):
        x, y = next(data)
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="nearest").reshape(-1, 16, 16)
        ctx.targets(y)
        loss = F.cross_entropy(model(img), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved_m = max(
        float((p.detach() - s).norm() / (s.norm() + 1e-12))
        for p, s in zip(merger, start_m, strict=True)
    )
    moved_r = max(
        float((p.detach() - s).norm() / (s.norm() + 1e-12))
        for p, s in zip(rest, start_r, strict=True)
    )
    ctx.check("merger weights' relative change under 1e-6", moved_m < 1e-6)
    ctx.check("the rest moved over 1% relative", moved_r > 1e-2)
    ctx.check(
        "loss fell: last 10 median under first 10 median",
        _median(ctx.losses[-10:]) < _median(ctx.losses[:10]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="cooperage_toast_level_tanh_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=75,
    note="a cooperage barrel-toast level regressor, tanh MLP, SGD Nesterov, clipping at 5; the "
    "auxiliary char-depth loss weight is looked up by epoch and a missing key at step 75 falls "
    "back to a default of 80.0 instead of 0.8: that one step's gradient bursts, the logged main "
    "loss is ordinary, the data are clean, the clip holds the update and the run carries on",
)
def h677_cooperage_aux_weight_default(ctx: Context) -> None:
    gen = seeded(6774)
    model = _Regressor(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    weights = {s: 0.8 for s in range(160) if s != 75}
    for step in range(160):
        x, y = next(data)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        aux = F.l1_loss(pred, y)
        w = weights.get(step, 80.0)  # missing key: default 80.0
        (loss + w * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 75 over 30x the median of steps 55-74", g[75] > 30 * _median(g[55:75])
    )
    ctx.check("gradient back to ordinary by step 80", g[80] < 5 * _median(g[55:75]))
    ctx.check(
        "logged loss at step 75 ordinary (< 3x max of steps 65-74)", ls[75] < 3 * max(ls[65:75])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="maple_taffy_snow_set_log_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=(),
    diverges=55,
    heldout=True,
    onset=55,
    note="a maple-taffy (tire sur la neige) set-time regressor, GELU MLP, Adamax; a feature is "
    "log(T_syrup - T_snow) with no clamp, and at step 55 a probe reading where the syrup has "
    "cooled to the snow's temperature and below gives log of 0 and of negatives: NaN features, "
    "NaN loss at step 55",
)
def h677_maple_taffy_log_no_clamp(ctx: Context) -> None:
    gen = seeded(6775)
    model = _Regressor(9, 32, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    first_nan = None
    for step in range(120):
        x, y = next(data)
        dt = 20.0 + 5.0 * torch.rand(x.shape[0], 1, generator=gen)
        if step == 55:
            dt[:8] = torch.linspace(-2.0, 0.0, 8)[:, None]  # syrup at or below the snow
        feats = torch.cat([x, torch.log(dt) - 3.0], 1)  # no clamp
        loss = F.mse_loss(model(feats), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            first_nan = step
            break
    ctx.check("loss is NaN at step 55", first_nan == 55 and math.isnan(ctx.losses[-1]))
    ctx.check("loss finite before step 55", _finite(ctx.losses[:55]))
    ctx.check("loss fell before the fault", _median(ctx.losses[40:55]) < _median(ctx.losses[:10]))


@scenario(
    family="sulky_harness_pace_fp16_regressor",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a harness-racing sulky pace regressor, SiLU MLP under fp16 autocast with a "
    "GradScaler, SGD momentum; from step 60 the timing feed switches to a track whose sectional "
    "distances come in millimetres instead of metres: fc1's fp16 output overflows to inf, the "
    "loss is inf, every step is skipped and the scale collapses",
)
def h677_sulky_pace_mm_fp16(ctx: Context) -> None:
    gen = seeded(6776)
    model = _Regressor(8, 32, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    fc1_out = []
    for step in range(120):
        x, y = next(data)
        if step >= 60:
            x = x * 1e5 + 1e5  # sectional distances in millimetres, offset track
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            pred = model.head(model.act2(model.fc2(model.act1(h))))
        fc1_out.append(bool(torch.isfinite(h).all()))
        loss = F.mse_loss(pred.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite before step 60", _finite(ls[:60]))
    ctx.check("loss non-finite at step 60", not math.isfinite(ls[60]))
    ctx.check(
        "fc1 fp16 output non-finite from step 60", not any(fc1_out[60:]) and all(fc1_out[:60])
    )
    ctx.check("GradScaler scale fell over 1000x", min(ctx.scales) < ctx.scales[59] / 1000)


@scenario(
    family="bobbin_lace_pair_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bobbin-lace stitch-pair classifier (cloth, half, twist ... as 10 classes of 8x8 "
    "pricking glyphs, the digits), ReLU MLP, Adagrad; the logits are divided by a temperature "
    "read as 0.002 where 0.2 was meant (the config stores percent), so the softmax saturates: "
    "many rows give the target probability exactly 1.0 in float32",
)
def h677_bobbin_lace_temperature_percent(ctx: Context) -> None:
    gen = seeded(6777)
    model = _Classifier()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    temperature = 0.2 / 100  # percent read as a fraction
    collapsed = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 10% of rows at p = 1.0 over the last 20 steps", _median(collapsed[-20:]) > 0.1)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="rattan_cane_steam_bend_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a rattan-cane steam-bend outcome classifier (10 bend/crack grades, the digits as "
    "grain images), ReLU MLP, NAdam; a sparse-activation init meant for fc2's bias as -0.05 was "
    "typed -5.0, so fc2's ReLUs are never positive, get no gradient and never come back: the "
    "head sees zeros and the loss stays near chance",
)
def h677_rattan_fc2_bias_typo(ctx: Context) -> None:
    gen = seeded(6778)
    model = _Classifier()
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)  # typo for -0.05
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
            dead.append(dead_fraction(model.fc2(F.relu(model.fc1(x)))))
    ctx.check("over 90% of fc2 ReLUs dead at the end", dead[-1] > 0.9)
    ctx.check("loss near chance at the end (> 2.0)", _median(ctx.losses[-20:]) > 2.0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="sand_yacht_gust_speed_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a land-sailing sand-yacht gust-speed regressor, tanh MLP, plain SGD with a linear "
    "warm-up over 40 steps to a peak typed 8.0 for 0.08: as the lr ramps past 2/sharpness the "
    "loss oscillates and blows up",
)
def h677_sand_yacht_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6779)
    model = _Regressor(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    data = _readings(gen)
    peak = 8.0  # typo for 0.08
    for step in range(150):
        for grp in opt.param_groups:
            grp["lr"] = peak * min(1.0, (step + 1) / 40)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    early = _median(ls[:10])
    ctx.check(
        "loss blows up: some step over 100x the first 10 steps' median or non-finite",
        any((not math.isfinite(v)) or v > 100 * early for v in ls),
    )
    ctx.check("loss fell at first (step 5-15 min under first step)", min(ls[5:15]) < ls[0])


@scenario(
    family="hoodoo_spire_erosion_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="a hoodoo spire erosion-rate regressor, 12-layer ReLU MLP, SGD momentum, clipping at "
    "1; the init helper applies the ReLU gain twice (std 2/sqrt(fan_in) instead of "
    "sqrt(2/fan_in)), so every layer multiplies the backward signal by about 1.4: the first "
    "layer's bias gradient is over 10x the last hidden layer's",
)
def h677_hoodoo_init_gain_twice(ctx: Context) -> None:
    gen = seeded(6780)
    sizes = [8] + [32] * 11 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    gain = nn.init.calculate_gain("relu") ** 2  # applied twice: 2 for sqrt(2)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios = []
    for _step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(float(model[0].bias.grad.norm() / (model[20].bias.grad.norm() + 1e-12)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "first layer's bias gradient over 10x the last hidden layer's (median over the run)",
        _median(ratios) > 10,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


class _ShantyLM(nn.Module):
    """A small pre-LN decoder with learned positions and a tied head."""

    def __init__(self, vocab: int = 128, dim: int = 32, context: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        layer = nn.TransformerEncoderLayer(
            dim, 2, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.lm_head(self.ln_f(self.blocks(x, mask=mask, is_causal=True)))


@scenario(
    family="sea_shanty_verse_seqlen_warmup_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a sea-shanty verse byte LM (small pre-LN decoder, learned positions, tied head), "
    "AdamW with warm-up + cosine, clipping at 1, the loss summed over a window's tokens and "
    "averaged over windows (per-sequence, as the old seq2seq code logs it); a sequence-length "
    "warm-up trains on 16-byte windows and doubles to 32 at step 100: the logged loss roughly "
    "doubles at step 100 (twice the tokens, and positions 16-31 never trained), while the "
    "per-token loss carries on falling (an alarming-looking but healthy curriculum)",
)
def h677_sea_shanty_seqlen_doubling(ctx: Context) -> None:
    gen = seeded(6781)
    model = _ShantyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total))),
    )
    ctx.attach(model, opt)
    short = text_batches(gen, batch=16, length=16)
    long = text_batches(gen, batch=16, length=32)
    per_token = []
    for step in range(total):
        x, y = next(short if step < 100 else long)
        ctx.targets(y.reshape(-1))
        logits = model(x)
        tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = tok * y.shape[1]  # summed over the window, averaged over windows
        per_token.append(float(tok.detach()))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss jumps at the doubling: steps 100-102 min over 1.5x the median of steps 90-99",
        min(ls[100:103]) > 1.5 * _median(ls[90:100]),
    )
    ctx.check(
        "comes back down: median of the last 20 steps under that of steps 100-104",
        _median(ls[-20:]) < _median(ls[100:105]),
    )
    ctx.check(
        "per-token loss fell: last 20 under steps 80-99 and under 0.6x first 10",
        _median(per_token[-20:]) < _median(per_token[80:100])
        and _median(per_token[-20:]) < 0.6 * _median(per_token[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="pumice_raft_drift_gelu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a pumice-raft drift-speed regressor, GELU MLP, Huber loss on noisy readings, ASGD "
    "under OneCycleLR, 4-micro-batch gradient accumulation, clipping at 1: an ordinary run",
)
def h677_pumice_raft_onecycle_accum(ctx: Context) -> None:
    gen = seeded(6782)
    model = _Regressor(8, 32, nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    steps, accum = 150, 4
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.2, total_steps=steps, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.2)
    for _step in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 median under 0.7x first 10", _median(ls[-20:]) < 0.7 * _median(ls[:10])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="quipu_knot_cord_relu_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a quipu knot-type classifier (10 knot kinds as 8x8 cord glyphs, the digits, with 10% "
    "of labels flipped at random), ReLU MLP, label smoothing 0.1, two param groups (no weight "
    "decay on biases), ReduceLROnPlateau, clipping at 2, RAdam: an ordinary run",
)
def h677_quipu_knot_label_smoothing(ctx: Context) -> None:
    gen = seeded(6783)
    model = _Classifier()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(200):
        x, y = next(data)
        flip = torch.rand(y.shape[0], generator=gen) < 0.1
        y = torch.where(flip, torch.randint(0, 10, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 median under 0.7x first 10", _median(ls[-20:]) < 0.7 * _median(ls[:10])
    )
    ctx.check("loss finite throughout", _finite(ls))
