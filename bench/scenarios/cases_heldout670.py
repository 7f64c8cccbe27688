"""Held-out set 670 (``h670_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Idefics2 vision transformer encoder built from a
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


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm().clamp_min(1e-12))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="kite_fighting_manja_cut_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="a kite-fighting (patang) manja line-cut regressor: a 12-layer tanh MLP whose init "
    "helper was given the tanh gain 5/3 typed as 5; the net sits in the chaotic regime: activations stay bounded but the "
    "backpropagated gradient grows layer by layer, the first layer's gradient over 20x the "
    "last hidden layer's, and plain SGD trains erratically",
)
def h670_manja_cut_chaotic_tanh_init(ctx: Context) -> None:
    gen = seeded(6701)
    sizes = [8] + [32] * 12 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=5.0 / math.sqrt(a))  # meant: 5/3, calculate_gain("tanh")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratios: list[float] = []
    for _step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model[0].weight.grad.norm())
        last = float(model[22].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ctx.check("first layer's gradient over 20x the last hidden layer's", _median(ratios) > 20)
    ctx.check("forward activations stay bounded (loss finite)", _finite(ctx.losses))


@scenario(
    family="cormorant_fishing_dive_resume_adam_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="a cormorant-fishing (ukai) dive-depth regressor trained with Adam; the job is "
    "preempted at step 150 and the resume script reloads the model but builds a fresh Adam "
    "(optimizer state not saved) and a fresh cosine schedule, so the lr is back at its 3e-2 "
    "peak: the first updates are sign-like at the full learning rate, the loss spikes over 3x and the run recovers within a few dozen steps",
)
def h670_cormorant_dive_resume_fresh_adam(ctx: Context) -> None:
    gen = seeded(6702)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=1e-4)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.01)
    for step in range(260):
        if step == 150:  # resume: a fresh Adam and a fresh schedule, state and step lost
            fresh = torch.optim.Adam(model.parameters(), lr=3e-2)
            opt.state.clear()
            opt.load_state_dict(fresh.state_dict())
            for g in opt.param_groups:
                g["lr"] = 3e-2
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=1e-4)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    before = _median(ls[130:150])
    ctx.check("loss spikes over 3x after the resume", max(ls[150:165]) > 3 * before)
    ctx.check(
        "the run recovers (last 20 steps under 2x the pre-resume loss)",
        _median(ls[-20:]) < 2 * before,
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="sugar_maple_sap_run_relu_variance_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=199,
    heldout=True,
    note="a sugar-maple sap-run volume net with a Gaussian NLL head; the variance head ends in "
    "a ReLU (the softplus and the 1e-6 floor were dropped as 'unnecessary since the bias starts "
    "at 2'); as RMSprop shrinks the predicted variance towards the small noise, one sample's "
    "variance reaches exactly 0, log(0) and 0-division give a NaN loss",
)
def h670_maple_sap_relu_variance(ctx: Context) -> None:
    gen = seeded(6703)

    class SapNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(8, 32), nn.SiLU())
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 2.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.trunk(x)
            return self.mean_head(h), F.relu(self.var_head(h))  # missing: softplus + 1e-6

    model = SapNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.05)
    zero_var = False
    for _step in range(300):
        x, y = next(data)
        mu, var = model(x)
        loss = 0.5 * (var.log() + (y - mu) ** 2 / var).mean()
        if not math.isfinite(float(loss)):
            zero_var = bool((var == 0).any())
            ctx.step(loss)
            break
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss becomes NaN/inf", not math.isfinite(ls[-1]))
    ctx.check("a predicted variance is exactly 0 at that step", zero_var)
    ctx.check("finite for over 20 steps before", len(ls) > 21 and _finite(ls[:-1]))


@scenario(
    family="hailstone_impact_energy_fp16_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("speed",),
    diverges=69,
    heldout=True,
    note="a hailstone impact-energy regressor (for hail-pad calibration) trained under fp16 "
    "autocast with a GradScaler; the model predicts a terminal speed in cm/s (as the radar reports it) and computes the energy "
    "0.5*m*(v*v)/1e4 inside the autocast region, with targets in millijoules; once the speed "
    "passes 256 cm/s the fp16 square v*v passes 65504 and overflows to inf, the loss is inf from then on and "
    "the scaler skips every step, its scale collapsing (the same batch is finite in fp32)",
)
def h670_hailstone_energy_fp16_square(ctx: Context) -> None:
    gen = seeded(6704)

    class HailNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(4, 32), nn.SiLU())
            self.speed = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = self.speed(self.trunk(x[:, :4]))
            mass = x[:, 4:]
            return 0.5 * mass * (v * v) / 1e4  # v in cm/s; v * v is fp16 under autocast

    def batches():
        while True:
            x = torch.rand(64, 4, generator=gen)
            mass = 5 + 75 * x[:, :1]  # grams (pea to baseball size)
            v = 20 + 25 * x[:, :1] + 5 * x[:, 1:2]  # terminal speed, m/s
            yield torch.cat([x, mass], 1), 0.5 * mass * v * v  # millijoules (g * m^2/s^2)

    model = HailNet()
    opt = torch.optim.Adamax(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = batches()
    first_bad = None
    fp32_finite = False
    for step in range(200):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y) / 1e8
        if first_bad is None and not math.isfinite(float(loss)):
            first_bad = step
            with torch.no_grad():
                fp32_finite = bool(torch.isfinite(model(x)).all())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if first_bad is not None and step >= first_bad + 30:
            break
    ctx.check(
        "loss overflows to inf after 10+ finite steps", first_bad is not None and first_bad > 10
    )
    ctx.check("the same batch is finite in fp32", fp32_finite)
    ctx.check("the scaler's scale collapses over 2^10", ctx.scales[-1] < 2.0**10 / 2**10)


def _tiny_idefics2_vision():
    from transformers import Idefics2VisionConfig
    from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

    config = Idefics2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=1,
        image_size=8,
        patch_size=2,
        attention_dropout=0.0,
    )
    return Idefics2VisionTransformer(config)


@scenario(
    family="haboob_dust_front_idefics2_vit_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("vit.embeddings.patch_embedding", "vit.embeddings.position_embedding"),
    diverges=None,
    heldout=True,
    note="a haboob dust-front shape classifier on 8x8 radar frames (scikit-learn digits stand "
    "in for the frames): a tiny Hugging Face Idefics2 vision transformer encoder with a linear "
    "head, AdamW with param groups; the embeddings group's lr was typed 3e-8 for 3e-4, so the "
    "patch and position embeddings barely move (relative change under 1e-4) while the encoder "
    "and head train and the loss falls",
)
def h670_haboob_vit_embedding_lr_typo(ctx: Context) -> None:
    gen = seeded(6705)

    class DustFrontNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = _tiny_idefics2_vision()
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.vit(pixel_values=x.reshape(-1, 1, 8, 8)).last_hidden_state
            return self.head(h.mean(1))

    model = DustFrontNet()
    emb = [p for n, p in model.named_parameters() if n.startswith("vit.embeddings.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("vit.embeddings.")]
    opt = torch.optim.AdamW(
        [{"params": emb, "lr": 3e-8}, {"params": rest, "lr": 3e-3}], weight_decay=0.01
    )
    patch0 = model.vit.embeddings.patch_embedding.weight.detach().clone()
    enc0 = model.vit.encoder.layers[0].mlp.fc1.weight.detach().clone()
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=64)
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    patch_move = _rel_change(patch0, model.vit.embeddings.patch_embedding.weight.detach())
    enc_move = _rel_change(enc0, model.vit.encoder.layers[0].mlp.fc1.weight.detach())
    ctx.check("patch embedding relative change under 1e-4", patch_move < 1e-4)
    ctx.check("encoder relative change over 1e-2", enc_move > 1e-2)
    ctx.check("loss fell by a third", _median(ls[-10:]) < 0.67 * _median(ls[:10]))


@scenario(
    family="salt_pan_harvest_shard_silu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a solar salt-pan harvest-yield SiLU regressor, Adagrad with gradient clipping; one "
    "shard from a new brine-density logger arrives at step 90 with the density column in kg/m3 "
    "instead of g/cm3 (x1000): that batch's loss is over 100x the median and its gradient over "
    "50x; clipping holds the update and the run recovers",
)
def h670_salt_pan_density_unit_shard(ctx: Context) -> None:
    gen = seeded(6706)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        if step == 90:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0  # the bad shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 100x the median before", ls[90] > 100 * _median(ls[60:90]))
    ctx.check("gradient at step 90 over 50x the median before", gs[90] > 50 * _median(gs[60:90]))
    ctx.check(
        "recovers (last 20 under 2x the pre-shard median)",
        _median(ls[-20:]) < 2 * _median(ls[60:90]),
    )


@scenario(
    family="sumo_shikiri_aux_weight_typo_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="a sumo shikiri (pre-bout crouch) charge-timing Huber regressor with an auxiliary "
    "stance-reconstruction loss; the auxiliary weight comes from a per-step schedule table in "
    "which the entry for step 120 was written in per-cent (50) instead of 0.5; for that one step "
    "the backpropagated gradient is over 30x the median while the logged main loss is ordinary; "
    "clipping at 5 holds the update (SGD Nesterov)",
)
def h670_sumo_shikiri_aux_weight_percent(ctx: Context) -> None:
    gen = seeded(6707)

    class ShikiriNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(8, 48), nn.GELU())
            self.timing = nn.Linear(48, 1)
            self.stance = nn.Linear(48, 8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.trunk(x)
            return self.timing(h), self.stance(h)

    aux_weight = {s: 0.5 for s in range(220)}
    aux_weight[120] = 50.0  # per-cent typo
    model = ShikiriNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(220):
        x, y = next(data)
        t, s = model(x)
        loss = F.huber_loss(t, y, delta=0.5)
        total = loss + aux_weight[step] * F.mse_loss(s, x)
        total.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 120 over 30x the median before", gs[120] > 30 * _median(gs[90:120]))
    ctx.check("logged loss at step 120 ordinary (under 3x)", ls[120] < 3 * _median(ls[90:120]))
    ctx.check("finite and trained", _finite(ls) and _median(ls[-20:]) < _median(ls[:20]))


@scenario(
    family="bell_foundry_tuning_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bell-foundry partial-tuning grade classifier (5 grades from 12 partial readings); "
    "the logits are divided by a temperature copied from a contrastive-loss config (0.01), so "
    "as the head trains the float32 softmax rounds the target probability to exactly 1.0 on "
    "over 10% of rows",
)
def h670_bell_foundry_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(6708)

    class BellNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.head = nn.Linear(64, 5)
            self.temperature = 0.01

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x)) / self.temperature

    model = BellNet()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    fracs: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 10% of rows at p = 1.0 over the last 20 steps", sum(fracs[-20:]) / 20 > 0.1)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="glassblower_gather_heat_dead_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="a glassblower's gather-heat classifier (workable / too cold / too hot from furnace "
    "and gather readings); the readings go in raw (temperatures in kelvin, ~1300) because the "
    "standardisation step was skipped; all-positive, large inputs leave many units dead from "
    "the start and the first SGD-momentum updates push most of the rest below zero for every "
    "sample: most fc1 units die and the "
    "loss stalls far above what the task allows",
)
def h670_glassblower_raw_kelvin_dead_relus(ctx: Context) -> None:
    gen = seeded(6709)

    class GatherNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 64)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.hidden = self.act1(self.fc1(x))
            return self.fc2(self.hidden)

    w = torch.randn(6, 3, generator=gen)

    def batches():
        while True:
            z = torch.randn(64, 6, generator=gen)
            yield 1300.0 + 50.0 * z, (z @ w).argmax(1)  # raw kelvin; the label uses z

    model = GatherNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    data = batches()
    dead0 = None
    for _step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        if dead0 is None:
            dead0 = dead_fraction(model.hidden.detach())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model(next(data)[0])
    dead = dead_fraction(model.hidden)
    ls = ctx.losses
    ctx.check("dead fc1 share rises by over 0.2 from init", dead > dead0 + 0.2)
    ctx.check("over 60% of fc1 units dead at the end", dead > 0.6)
    ctx.check("loss stalls above 0.7 nats", _median(ls[-20:]) > 0.7 and _finite(ls))


@scenario(
    family="lava_tube_cooling_warmup_typo_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a lava-tube roof cooling-rate tanh MLP (MSE, plain SGD) with a linear warm-up over "
    "150 steps whose peak lr was typed 3.0 for 0.3; the loss falls while the lr is small, then "
    "once lr x sharpness (measured by power iteration in the run) passes 2 the loss oscillates "
    "and blows up",
)
def h670_lava_tube_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6710)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe = next(data)
    params = list(model.parameters())

    def sharpness() -> float:
        loss = F.mse_loss(model(probe[0]), probe[1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            norm = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / norm for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
            v = [h.detach() for h in hv]
        return lam

    products: list[tuple[int, float]] = []
    for step in range(200):
        lr = 3.0 * min(1.0, (step + 1) / 150)  # peak meant 0.3
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0:
            products.append((step, lr * sharpness()))
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2)
    ctx.check("lr x sharpness passes 2", any(p > 2 for _, p in products))
    ctx.check("loss blows up over 100x its minimum", max(ls) > 100 * min(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="pysanky_dye_curriculum_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a pysanky (wax-resist egg) dye-bath stage classifier with a curriculum: the first "
    "half trains on the easy single-bath records (the six over-dye channels read zero), at step "
    "100 the harder multi-bath half is mixed in and the loss jumps up, then comes back down; "
    "label smoothing 0.1, OneCycleLR, clipping at 1 (alarming-looking control)",
)
def h670_pysanky_curriculum_jump(ctx: Context) -> None:
    gen = seeded(6711)
    w = torch.randn(12, 5, generator=gen)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 5)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=240)
    ctx.attach(model, opt)
    for step in range(240):
        x = torch.randn(64, 12, generator=gen)
        if step < 100:
            x[:, 6:] = 0.0  # easy half: single-bath records
        else:
            x[:32, 6:] = 0.0  # from step 100: half the batch is the harder multi-bath records
        y = (x @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre, jump = _median(ls[90:100]), max(ls[100:110])
    ctx.check("loss jumps over 1.5x when the harder half arrives", jump > 1.5 * pre)
    ctx.check("loss comes back down under 0.6x the jump", _median(ls[-20:]) < 0.6 * jump)
    ctx.check("finite", _finite(ls))


@scenario(
    family="fog_bow_brightness_fp16_radam_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a fog-bow brightness Huber regressor under fp16 autocast with a GradScaler, RAdam, "
    "ReduceLROnPlateau on the running loss and clipping at 1 (control)",
)
def h670_fog_bow_fp16_radam(ctx: Context) -> None:
    gen = seeded(6712)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, noise=0.05)
    for step in range(200):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.3)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 20 == 19:
            sched.step(sum(ctx.losses[-20:]) / 20)
    ls = ctx.losses
    ctx.check("loss fell over 3x", _median(ls[-20:]) < _median(ls[:20]) / 3)
    ctx.check("finite", _finite(ls))
    ctx.check("scale did not collapse", ctx.scales[-1] >= 2.0**6)


@scenario(
    family="kayak_eskimo_roll_tied_autoencoder",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a kayak eskimo-roll hip-snap tied-weight autoencoder (decoder uses the encoder's "
    "transposed weight) on 16 paddle-shaft IMU readings; MSE, warm-up + cosine LambdaLR, "
    "4-micro-batch gradient accumulation, clipping at 2, ASGD (control)",
)
def h670_kayak_roll_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(6713)
    basis = torch.randn(4, 16, generator=gen)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(16, 6)
            self.dec_bias = nn.Parameter(torch.zeros(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)

    model = TiedAE()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    total = 150

    def shape(s: int) -> float:
        return min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * s / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    ctx.attach(model, opt)
    for _step in range(total):
        logged = 0.0
        for _micro in range(4):
            z = torch.randn(16, 4, generator=gen) * 0.5
            x = z @ basis + 0.05 * torch.randn(16, 16, generator=gen)
            loss = F.mse_loss(model(x), x) / 4
            loss.backward()
            logged += float(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-15:]) < _median(ls[:15]) / 2)
    ctx.check("finite", _finite(ls))
