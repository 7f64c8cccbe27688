"""Held-out set 674 (``h674_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face SAM-HQ vision encoder built from a
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


def _tiny_sam_hq_vision():
    from transformers import SamHQVisionConfig, SamHQVisionModel

    config = SamHQVisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        mlp_dim=64,
        window_size=0,
        global_attn_indexes=[1],
        num_pos_feats=8,
        initializer_range=0.02,
    )
    return SamHQVisionModel(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="hurdy_gurdy_trompette_dog_accum_tanh_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a hurdy-gurdy trompette (buzzing-bridge dog) onset regressor, tanh MLP, 4-micro-batch "
    "accumulation, clipping at 5, SGD momentum; after the resume at step 80 the first step's "
    "loss weight was read from the old config in percent (100 instead of 1.0), so that one "
    "step's accumulated gradient is 100x; the logged loss is ordinary, the data are clean, the "
    "clip holds the update and the run carries on",
)
def h674_hurdy_gurdy_resume_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6741)
    model = _Regressor(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    accum = 4
    for step in range(160):
        weight = 100.0 if step == 80 else 1.0  # resumed config: loss_weight in percent
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            (weight * loss / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 80 over 50x the median of steps 60-79", g[80] > 50 * _median(g[60:80])
    )
    ctx.check("gradient back to ordinary by step 85", g[85] < 5 * _median(g[60:80]))
    ctx.check(
        "logged loss at step 80 ordinary (< 3x steps 70-79)",
        ctx.losses[80] < 3 * max(ctx.losses[70:80]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="cider_keeving_pectin_gel_decay_sign_silu_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a cider-keeving pectin-gel (chapeau brun) firmness regressor, SiLU MLP, Adam; the "
    "hand-written decoupled weight decay switched on after a 50-step warm-up is applied as "
    "p *= (1 + lr*wd) instead of (1 - lr*wd): the weights grow a little every step and the "
    "loss, after falling, climbs slowly and keeps climbing with no spike and no NaN",
)
def h674_cider_keeving_decay_sign(ctx: Context) -> None:
    gen = seeded(6742)
    model = _Regressor(8, 32, nn.SiLU)
    lr, wd = 3e-3, 4.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms = []
    for step in range(260):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if step >= 50:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.mul_(1 + lr * wd)  # sign bug: should be 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm()))
    ls = ctx.losses
    low = min(ls[30:80])
    ctx.check(
        "loss of the last 20 steps over 5x its low at steps 30-79", _median(ls[-20:]) > 5 * low
    )
    ctx.check(
        "loss climbs steadily: each 50-step median above the one before after step 100",
        all(_median(ls[a : a + 50]) > _median(ls[a - 50 : a]) for a in (150, 200)),
    )
    ctx.check("weight norm grew over 2x since step 50", norms[-1] > 2 * norms[50])
    ctx.check(
        "no step's loss over 3x the one before (no spike)",
        all(b < 3 * a for a, b in zip(ls[60:-1], ls[61:], strict=False)),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="kiln_shelf_bloating_sam_hq_vision_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=(
        "sam.vision_encoder.neck",
        "sam.vision_encoder.neck.conv1",
        "sam.vision_encoder.neck.conv2",
    ),
    diverges=None,
    heldout=True,
    note="a kiln-shelf bloating-blister size regressor on 32x32 shelf photos: a tiny Hugging Face "
    "SAM-HQ vision encoder (SamHQVisionModel from a config) with a pooled linear head, AdamW "
    "with param groups; the neck group's lr was read from lr_neck, which a YAML typo set to "
    "0e-3, so the neck (conv1, conv2 and their norms) never moves while the patch embedding, "
    "the blocks and the head train and the loss falls",
)
def h674_kiln_shelf_sam_hq_neck_lr_typo(ctx: Context) -> None:
    gen = seeded(6743)

    class BloatNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sam = _tiny_sam_hq_vision()
            self.head = nn.Linear(16 * 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feat = self.sam(pixel_values=x).last_hidden_state
            return self.head(feat.flatten(1))

    grid = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij"))

    def batches():
        while True:
            r = 2 + 6 * torch.rand(12, generator=gen)
            c = 8 + 16 * torch.rand(12, 2, generator=gen)
            d2 = ((grid[None] - c[:, :, None, None]) ** 2).sum(1)
            blob = torch.exp(-d2 / (2 * r[:, None, None] ** 2))
            img = blob[:, None].expand(-1, 3, -1, -1) + 0.1 * torch.randn(
                12, 3, 32, 32, generator=gen
            )
            yield img, ((r - 5) / 2)[:, None]

    model = BloatNet()
    neck = [p for n, p in model.named_parameters() if ".neck." in n]
    rest = [p for n, p in model.named_parameters() if ".neck." not in n]
    lr_neck = 0e-3  # typo for 1e-3
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": neck, "lr": lr_neck}], weight_decay=0.01
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in neck]
    rest_before = [p.detach().clone() for p in rest]
    data = batches()
    neck_grads = []
    for _step in range(70):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        neck_grads.append(sum(float(p.grad.norm()) for p in neck if p.grad is not None))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "neck weights exactly unchanged",
        all(torch.equal(a, b) for a, b in zip(before, neck, strict=True)),
    )
    ctx.check("neck gets non-zero gradients every step", min(neck_grads) > 0)
    moved = sum(float((a - b.detach()).norm()) for a, b in zip(rest_before, rest, strict=True))
    ctx.check("the rest of the model moved", moved > 0.1)
    ctx.check(
        "loss fell (last 10 median under 0.7x first 10)", _median(ls[-10:]) < 0.7 * _median(ls[:10])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="didgeridoo_cheek_pump_gain_elman_rnn_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a didgeridoo cheek-pump pattern classifier: a ReLU Elman RNN over 30 mouth-pressure "
    "readings; the recurrent weights are initialised to the identity times 1.3 (the IRNN recipe "
    "with the gain meant for the input weights), so the gradient grows back through time: the "
    "gradient at the first reading is over 100x the last's; clipping at 1 keeps it finite, "
    "plain SGD",
)
def h674_didgeridoo_irnn_gain(ctx: Context) -> None:
    gen = seeded(6744)

    class PumpNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(2, 24, batch_first=True, nonlinearity="relu")
            self.head = nn.Linear(24, 3)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.3 * torch.eye(24))
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    def batches():
        while True:
            y = torch.randint(0, 3, (32,), generator=gen)
            t = torch.arange(30.0)
            phase = torch.rand(32, 1, generator=gen) * 6.28
            freq = (0.3 + 0.3 * y.float())[:, None]
            x = torch.stack([torch.sin(freq * t + phase), torch.randn(32, 30, generator=gen)], -1)
            yield 0.1 * x, y

    model = PumpNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = batches()
    ratios = []
    for _step in range(100):
        x, y = next(data)
        x.requires_grad_(True)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        gx = x.grad.norm(dim=(0, 2))
        ratios.append(float(gx[0] / gx[-1].clamp_min(1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at the first reading over 100x the last's (step 0)", ratios[0] > 100)
    ctx.check("still over 100x at the end", ratios[-1] > 100)
    ctx.check(
        "recurrent weight gain above 1 (spectral norm)",
        float(torch.linalg.matrix_norm(model.rnn.weight_hh_l0.detach(), 2)) > 1.1,
    )
    ctx.check("gradient norm over 10 at some step (before clipping)", max(ctx.grad_norms) > 10)


@scenario(
    family="maple_evaporator_pan_depth_shard_units_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a maple-syrup evaporator pan-depth regressor, SiLU MLP, RMSprop, clipping at 1; the "
    "shard read at step 70 came from a sugarhouse logging depth in millimetres instead of "
    "metres (targets 1000x): that one batch's loss is over 1e4x the rest, its gradient over "
    "50x; the clip holds the update and the run recovers",
)
def h674_maple_evaporator_mm_shard(ctx: Context) -> None:
    gen = seeded(6745)
    model = _Regressor(8, 32, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(150):
        x, y = next(data)
        if step == 70:
            y = y * 1000.0  # the shard in millimetres
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 70 over 1e4x the median of steps 50-69", ls[70] > 1e4 * _median(ls[50:70])
    )
    ctx.check(
        "gradient at step 70 over 50x the median of steps 50-69", g[70] > 50 * _median(g[50:70])
    )
    ctx.check(
        "recovers: last 20 median under 3x steps 50-69", _median(ls[-20:]) < 3 * _median(ls[50:70])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="glassblower_glory_hole_vft_log_viscosity_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("vft",),
    diverges=45,
    heldout=True,
    onset=45,
    note="a glassblower glory-hole working-time regressor with a Vogel-Fulcher-Tammann feature "
    "module: vft computes log(T - T0) with T0 = 500 C and no clamp; the batch at step 45 holds "
    "readings from a thermocouple that dropped below T0 while the gather cooled, the log of a "
    "negative number is NaN and the loss is NaN at step 45",
)
def h674_glassblower_vft_log_negative(ctx: Context) -> None:
    gen = seeded(6746)

    class VFT(nn.Module):
        def __init__(self, t0: float = 500.0) -> None:
            super().__init__()
            self.t0 = t0

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.log(t - self.t0)  # missing: .clamp_min(1.0)

    class GatherNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vft = VFT()
            self.fc1 = nn.Linear(4, 32)
            self.act = nn.GELU()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feat = torch.cat([self.vft(x[:, :1]) - 5.0, x[:, 1:]], 1)
            return self.head(self.act(self.fc1(feat)))

    def batches(step_bad: int):
        step = 0
        while True:
            t = 700 + 300 * torch.rand(32, 1, generator=gen)
            if step == step_bad:
                t[:4] = 480 - 10 * torch.rand(4, 1, generator=gen)
            other = torch.randn(32, 3, generator=gen)
            y = 2.0 / torch.log(t.clamp_min(501) - 500) + 0.1 * other[:, :1]
            step += 1
            yield torch.cat([t, other], 1), y

    model = GatherNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = batches(45)
    for _step in range(120):
        x, y = next(data)
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss finite for steps 0-44", _finite(ls[:45]))
    ctx.check("loss NaN at step 45", len(ls) == 46 and math.isnan(ls[45]))
    ctx.check(
        "vft gives NaN on a temperature below T0",
        bool(torch.isnan(model.vft(torch.tensor([480.0]))).all()),
    )


@scenario(
    family="snowmaking_lance_plume_count_fp16_poisson_net",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="a snowmaking-lance ice-nucleus count model (Poisson NLL, log-rate head), fp16 autocast "
    "with a GradScaler, NAdam; the rate exp(log_rate) is taken inside the autocast region, and "
    "as the log-rate learns the night-time counts (up to e^12) it passes 11.09, exp overflows "
    "fp16 to inf, the loss is inf, every step is skipped and the scale collapses",
)
def h674_snowmaking_fp16_exp_overflow(ctx: Context) -> None:
    gen = seeded(6747)
    w = torch.randn(6, 1, generator=gen)

    class PlumeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 32)
            self.act = nn.ReLU()
            self.head = nn.Linear(32, 1)
            with torch.no_grad():
                self.head.bias.fill_(6.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.head(self.act(self.fc1(x))))  # inside autocast: fp16

    model = PlumeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=4e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    dtypes = set()
    for _step in range(150):
        x = torch.randn(64, 6, generator=gen)
        log_mu = 8.0 + 4.0 * torch.sigmoid(x @ w)
        y = torch.poisson(log_mu.exp(), generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            rate = model(x)
        dtypes.add(str(rate.dtype))
        r = rate.float()
        loss = (r - y * torch.log(r)).mean() / 1e4
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    first = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check("the rate is computed in fp16", dtypes == {"torch.float16"})
    ctx.check("loss finite at first, non-finite later", first is not None and first > 10)
    ctx.check("loss non-finite for the last 20 steps", not any(math.isfinite(v) for v in ls[-20:]))
    ctx.check("GradScaler scale fell over 1000x", min(ctx.scales) < ctx.scales[0] / 1000)


@scenario(
    family="taxidermy_glass_eye_iris_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a taxidermy glass-eye iris-pattern classifier on 8x8 scans (the digits), ReLU MLP, "
    "cosine head (normalised features and weights), plain SGD; the temperature was meant to be "
    "0.1 but the config's '10' (percent) was read as per mille, so the cosines are divided by "
    "0.001 and the head's logits span +-1000: the softmax saturates and over 10% of rows give the target a float32 "
    "probability of exactly 1.0",
)
def h674_taxidermy_eye_temperature_percent(ctx: Context) -> None:
    gen = seeded(6748)

    class EyeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.act = nn.ReLU()
            self.head = nn.Linear(64, 10, bias=False)
            self.temperature = 0.001  # meant 0.1: the config gave "10" (percent) read as per mille

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = F.normalize(self.act(self.fc1(x)), dim=1)
            w = F.normalize(self.head.weight, dim=1)
            return (f @ w.T) / self.temperature

    model = EyeNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    frac = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 10% of rows at p = 1.0 in the last 20 steps", _median(frac[-20:]) > 0.1)
    spread = (logits.detach().max(1).values - logits.detach().min(1).values).mean()
    ctx.check("logit range per row over 100 at the end", float(spread) > 100)


@scenario(
    family="ropewalk_tar_kettle_dead_bias_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a ropewalk tar-kettle batch-grade classifier on 8x8 readings (the digits), ReLU MLP, "
    "RAdam; fc2's bias was initialised to -5 (a sparse-activation init copied from another "
    "model, meant for the output prior), every fc2 ReLU is dead from the start, gets no "
    "gradient and never recovers: the loss sits near chance",
)
def h674_ropewalk_dead_fc2_bias(ctx: Context) -> None:
    gen = seeded(6749)

    class TarNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 48)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(48, 48)
            self.act2 = nn.ReLU()
            self.head = nn.Linear(48, 10)
            with torch.no_grad():
                self.fc2.bias.fill_(-5.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.h2 = self.fc2(self.act1(self.fc1(x)))
            return self.head(self.act2(self.h2))

    model = TarNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        fc2_grad = float(model.fc2.weight.grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 95% of fc2 units dead at the end", dead_fraction(model.h2.detach()) > 0.95)
    ctx.check("fc2 gets no gradient at the end", fc2_grad == 0.0)
    ctx.check(
        "loss near chance at the end (> 0.9 ln 10)", _median(ctx.losses[-10:]) > 0.9 * math.log(10)
    )


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 15) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="bagpipe_drone_reed_warmup_peak_typo_silu_regressor",
    optimizer="SGD Nesterov",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="a bagpipe drone-reed pitch-drift regressor, SiLU MLP, SGD Nesterov (momentum 0.9) with "
    "a linear LambdaLR warm-up over 60 steps whose peak was typed 1.0 instead of 0.1; the loss "
    "falls while the lr is small, then around step 20 lr x sharpness passes Nesterov's "
    "stability limit 2(1+b)/(1+2b) and the loss oscillates and blows up",
)
def h674_bagpipe_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(67410)
    model = _Regressor(8, 32, nn.SiLU)
    beta = 0.9
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=beta, nesterov=True)  # meant 0.1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    ctx.attach(model, opt)
    data = _readings(gen, batch=128)
    probe_x, probe_y = next(data)
    limit = 2 * (1 + beta) / (1 + 2 * beta)
    products: dict[int, float] = {}
    for step in range(120):
        if step % 5 == 0 and step <= 40:
            eig = _top_hessian_eig(model, lambda: F.mse_loss(model(probe_x), probe_y))
            products[step] = opt.param_groups[0]["lr"] * eig
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    low = min(ls[:30])
    rise = next((i for i, v in enumerate(ls) if i > 10 and not (v < 10 * low)), None)
    ctx.check("loss fell at first (min of steps 0-29 under 0.5x step 0)", low < 0.5 * ls[0])
    ctx.check("lr x sharpness under the limit at step 5", products[5] < limit)
    ctx.check("loss blows up over 100x its low (or NaN)", not (max(ls) < 100 * low))
    ctx.check(
        "lr x sharpness above the limit before the loss rises",
        rise is not None and any(v > limit for s, v in products.items() if s <= rise),
    )


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    family="fireworks_chrysanthemum_burst_gan_discriminator",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a fireworks chrysanthemum-burst GAN: a GELU generator learns the ring of star positions "
    "of a burst, a discriminator (BCE) is trained alongside it (Adam, betas 0.5/0.999, one "
    "optimizer with a group per network); the discriminator's loss falls to about 0.8 while the "
    "generator's stars sit off the burst, then climbs towards 2 ln 2 and stays as they land on the ring: alarming to look at, healthy",
)
def h674_fireworks_gan_discriminator_loss_climbs(ctx: Context) -> None:
    gen = seeded(67411)

    class BurstGAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = nn.Sequential(nn.Linear(4, 64), nn.GELU(), nn.Linear(64, 2))
            self.discriminator = nn.Sequential(
                nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)
            )

    def real(n: int) -> torch.Tensor:
        a = 2 * math.pi * torch.rand(n, generator=gen)
        r = 2.0 + 0.05 * torch.randn(n, generator=gen)
        return torch.stack([3.0 + r * a.cos(), 3.0 + r * a.sin()], 1)  # the shell bursts at (3, 3)

    gan = BurstGAN()
    g_params = list(gan.generator.parameters())
    d_params = list(gan.discriminator.parameters())
    opt = torch.optim.Adam(
        [{"params": g_params, "lr": 1e-3}, {"params": d_params, "lr": 2e-3}], betas=(0.5, 0.999)
    )
    ctx.attach(gan, opt)
    radius_err = []
    for _step in range(400):
        z = torch.randn(128, 4, generator=gen)
        fake = gan.generator(z)
        xr = real(128)
        d_real = gan.discriminator(xr)
        d_fake = gan.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            d_real, torch.ones_like(d_real)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        d_grads = torch.autograd.grad(d_loss, d_params)
        g_out = gan.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
        g_grads = torch.autograd.grad(g_loss, g_params)
        for p, g in zip(d_params + g_params, list(d_grads) + list(g_grads), strict=True):
            p.grad = g
        ctx.grad_norms.append(grad_norm(gan))
        opt.step()
        ctx.step(d_loss)
        opt.zero_grad(set_to_none=True)
        radius_err.append(float(((fake.detach() - 3.0).norm(dim=1) - 2.0).abs().mean()))
    ls = ctx.losses
    low = min(sum(ls[i : i + 10]) / 10 for i in range(0, 100, 10))
    ctx.check(
        "discriminator loss climbs: last 50 mean over 1.5x its low (10-step means, 0-99)",
        sum(ls[-50:]) / 50 > 1.5 * low,
    )
    ctx.check(
        "generator improves: radius error of the last 20 under 0.3x the first 20",
        _median(radius_err[-20:]) < 0.3 * _median(radius_err[:20]),
    )
    ctx.check("losses finite", _finite(ls))


@scenario(
    family="sheepdog_crook_drive_gate_onecycle_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a sheepdog-trial drive-gate approach-time regressor, GELU MLP, Huber loss on noisy "
    "batches, ASGD with OneCycleLR (no momentum cycling), 4-micro-batch gradient accumulation "
    "and clipping at 1: an ordinary run",
)
def h674_sheepdog_drive_gate_healthy(ctx: Context) -> None:
    gen = seeded(67412)
    model = _Regressor(8, 48, nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=200, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, batch=16, noise=0.2)
    for _step in range(200):
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 4).backward()
            total += float(loss.detach()) / 4
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 median under 0.5x first 10", _median(ls[-20:]) < 0.5 * _median(ls[:10])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="knife_grinder_swarf_colour_plateau_smoothed_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a knife-grinder swarf-colour (temper) classifier on 8x8 spark images (the digits), "
    "SiLU MLP, label smoothing 0.1, Adagrad with two param groups (no decay on biases) and "
    "ReduceLROnPlateau on the running loss: an ordinary run",
)
def h674_knife_grinder_swarf_healthy(ctx: Context) -> None:
    gen = seeded(67413)

    class SwarfNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.act1 = nn.SiLU()
            self.fc2 = nn.Linear(64, 32)
            self.act2 = nn.SiLU()
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    model = SwarfNet()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() == 1]
    opt = torch.optim.Adagrad(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            sched.step(sum(ctx.losses[-10:]) / 10)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 median under 0.4x first 10", _median(ls[-20:]) < 0.4 * _median(ls[:10])
    )
    ctx.check("loss finite throughout", _finite(ls))
