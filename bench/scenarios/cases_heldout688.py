"""Held-out set 688 (``h688_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face DINOv2-with-registers encoder built
from a tiny config."""

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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train(ctx: Context, model, opt, loss, *, clip: float | None = None) -> None:
    loss.backward()
    ctx.grad_norms.append(grad_norm(model))
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


def _tiny_dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=16,
        patch_size=4,
        num_channels=1,
        num_register_tokens=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Dinov2WithRegistersModel(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="tapestry_weft_pick_density_dinov2_registers_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("dino", "dino.encoder"),
    diverges=None,
    heldout=True,
    note="a tiny DINOv2-with-registers encoder (from a config) with a linear head regressing the "
    "weft pick density of a tapestry from generated 16x16 stripe images, AdamW with param "
    "groups; the encoder group's lr was typed 1e-10 for 1e-4 (fine-tuning config), the encoder's "
    "updates are about a million times too small for its weights while the head trains",
)
def h688_tapestry_dinov2_encoder_lr_typo(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dino = _tiny_dinov2_registers()
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.dino(pixel_values=x).pooler_output)

    gen = seeded(6881)
    model = _Model()
    opt = torch.optim.AdamW(
        [
            {"params": list(model.dino.parameters()), "lr": 1e-10},  # typo for 1e-4
            {"params": list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    enc0 = [p.detach().clone() for p in model.dino.encoder.parameters()]
    head0 = [p.detach().clone() for p in model.head.parameters()]
    grid = torch.arange(16.0)
    for _step in range(60):
        freq = torch.rand(16, generator=gen) * 0.8 + 0.2
        img = torch.sin(grid[None, :, None] * freq[:, None, None] * 1.5).expand(16, 16, 16)
        img = img[:, None] + 0.1 * torch.randn(16, 1, 16, 16, generator=gen)
        y = freq[:, None] * 4.0
        _train(ctx, model, opt, F.mse_loss(model(img), y))

    def rel(now, before):
        num = sum(float((a.detach() - b).norm() ** 2) for a, b in zip(now, before, strict=True))
        den = sum(float(b.detach().norm() ** 2) for b in before)
        return math.sqrt(num / den)

    ctx.check(
        "encoder weights moved under 1e-5 relative",
        rel(list(model.dino.encoder.parameters()), enc0) < 1e-5,
    )
    ctx.check(
        "head weights moved over 1e-2 relative", rel(list(model.head.parameters()), head0) > 1e-2
    )
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "loss fell (last 10 below first 10)", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10])
    )


@scenario(
    family="ice_shanty_auger_hole_depth_fp16_relu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=50,
    heldout=True,
    onset=50,
    note="an ice-shanty auger hole-depth regressor, ReLU MLP, fp16 autocast with a GradScaler, "
    "Adamax; from step 50 a new logger writes the barometric channel in microbar instead of bar "
    "(1e6x, around 1e6), fc1's fp16 output overflows to inf under autocast, the loss is inf and the "
    "GradScaler skips every step while its scale collapses",
)
def h688_ice_shanty_microbar_fp16(ctx: Context) -> None:
    gen = seeded(6882)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    fc1_inf_at = None
    for step in range(70):
        x, y = next(data)
        x = x.clone()
        x[:, 0] = 1.0 + 0.02 * x[:, 0]  # bar
        if step >= 50:
            x[:, 0] = x[:, 0] * 1e6  # the new logger writes microbar
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h))))
        if fc1_inf_at is None and not torch.isfinite(h).all():
            fc1_inf_at = step
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
    ctx.check("loss finite before step 50", _finite(ls[:50]))
    ctx.check("loss fell before step 50", _mean(ls[40:50]) < 0.5 * _mean(ls[:5]))
    ctx.check("loss non-finite at step 50", not math.isfinite(ls[50]))
    ctx.check("fc1 fp16 output first non-finite at step 50", fc1_inf_at == 50)
    ctx.check(
        "GradScaler scale fell over 1e4x after step 50", ctx.scales[-1] < ctx.scales[49] / 1e4
    )


@scenario(
    family="mahjong_tile_discard_read_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=40,
    note="a mahjong tile-discard reader (ReLU MLP on 8x8 tile glyphs from the digits), Adam; at "
    "step 40 the run is resumed with the LR finder's peak 1.0 and no warm-up instead of 3e-3, "
    "most of fc2's ReLUs are pushed negative on every input and never fire again, the loss "
    "sits near chance for the rest of the run",
)
def h688_mahjong_resume_lr_finder_peak(ctx: Context) -> None:
    gen = seeded(6883)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    dead_before = None
    probe_x = next(data)[0]
    for step in range(160):
        if step == 40:
            dead_before = dead_fraction(model.features(probe_x).detach())
            for g in opt.param_groups:
                g["lr"] = 1.0
        x, y = next(data)
        ctx.targets(y)
        _train(ctx, model, opt, F.cross_entropy(model(x), y))
    dead_after = dead_fraction(model.features(probe_x).detach())
    ls = ctx.losses
    ctx.check("loss fell before step 40", _mean(ls[35:40]) < 0.6 * ls[0])
    ctx.check("under 30% of fc2 units dead at step 40", dead_before < 0.3)
    ctx.check("over 50% of fc2 units dead at the end", dead_after > 0.5)
    ctx.check("loss at the end near chance (> 1.8)", _mean(ls[-20:]) > 1.8)


@scenario(
    family="maple_sap_run_sugar_brix_log_flow_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logflow",),
    diverges=70,
    heldout=True,
    onset=70,
    note="a maple sap-run sugar (Brix) regressor whose first module takes log of the tap-line "
    "flow readings with no clamp, RAdam; at step 70 a frozen tap line reports flow exactly 0, "
    "log 0 = -inf times a weight and the batch mean give NaN, the loss is NaN at step 70",
)
def h688_maple_sap_log_zero_flow(ctx: Context) -> None:
    class _LogFlow(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)  # no clamp

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logflow = _LogFlow()
            self.body = _Net(8, 32, 1, nn.GELU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.logflow(x))

    gen = seeded(6884)
    model = _Model()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = _readings(gen)
    log_bad_at = None
    for step in range(120):
        x, y = next(data)
        x = torch.exp(x)  # flow readings, positive
        if step >= 70:
            x = x.clone()
            x[:5, 2] = 0.0  # frozen tap line
        if log_bad_at is None and not torch.isfinite(model.logflow(x)).all():
            log_bad_at = step
        _train(ctx, model, opt, F.mse_loss(model(x), y))
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", _mean(ls[60:70]) < 0.8 * _mean(ls[:5]))
    ctx.check("loss NaN at step 70", len(ls) == 71 and math.isnan(ls[70]))
    ctx.check("the log module first non-finite at step 70", log_bad_at == 70)


@scenario(
    family="rowing_ergometer_split_pace_gelu_huber_accum_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="a rowing-ergometer 500 m split regressor, GELU MLP, Huber loss, 4-micro-batch "
    "accumulation, clipping at 1, SGD momentum; an auxiliary smoothness penalty's weight is "
    "hot-reloaded from a config at step 110 as 5000 (meant 0.05) for that one step, the gradient "
    "bursts over 30x while the logged loss and the data are ordinary, the clip holds and the run "
    "carries on",
)
def h688_rowing_erg_aux_weight_reload(ctx: Context) -> None:
    gen = seeded(6885)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(180):
        w = 5000.0 if step == 110 else 0.05
        total = 0.0
        for _ in range(4):
            x, y = next(data)
            out = model(x)
            out2 = model(x + 0.1 * torch.randn(x.shape, generator=gen))
            main = F.huber_loss(out, y, delta=0.5)
            ((main + w * (out - out2).pow(2).mean()) / 4).backward()
            total += float(main) / 4
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[90:110])
    ctx.check("gradient at step 110 over 30x the median of 90-109", g[110] > 30 * base)
    ctx.check("gradient back to ordinary by step 115", g[115] < 5 * base)
    ctx.check("logged loss at step 110 ordinary", ls[110] < 3 * max(ls[100:110]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="cobbler_welt_stitch_pull_force_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=95,
    note="a cobbler's welt-stitch pull-force regressor, ReLU MLP, MSE, clipping at 2, plain SGD; "
    "the shard read at step 95 came from a tensile tester logging in millinewtons instead of "
    "newtons (targets 1000x), that batch's loss is enormous, the clip holds the update and the "
    "run recovers on clean batches",
)
def h688_cobbler_welt_millinewton_shard(ctx: Context) -> None:
    gen = seeded(6886)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        y = y + 3.0
        if step == 95:
            y = y * 1000.0
        _train(ctx, model, opt, F.mse_loss(model(x), y), clip=2.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 95 over 1e4x the median of 75-94", ls[95] > 1e4 * _median(ls[75:95]))
    ctx.check("gradient at step 95 over 50x the median of 75-94", g[95] > 50 * _median(g[75:95]))
    ctx.check("loss recovered by the end", _median(ls[-20:]) < 3 * _median(ls[75:95]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="didgeridoo_circular_breath_drone_relu_elman_rnn",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a didgeridoo circular-breathing drone-pitch regressor, a ReLU Elman RNN over 24 "
    "pressure samples, SGD Nesterov; the recurrent weights were initialised orthogonal with "
    "gain 1.8 (a tanh recipe's gain for a ReLU cell), the gradient grows by up to 1.8x per step back in "
    "time, the first time step's input gradient is hundreds of times the last's, the run "
    "blows up",
)
def h688_didgeridoo_recurrent_gain(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(1, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.8)

        def forward(self, x: torch.Tensor):
            out, _ = self.rnn(x)
            return self.head(out[:, -1]), out

    gen = seeded(6887)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    t = torch.linspace(0, 6, 24)
    ratio0 = None
    for step in range(100):
        f = torch.rand(32, 1, generator=gen) + 0.5
        x = torch.sin(f * t[None])[..., None] + 0.05 * torch.randn(32, 24, 1, generator=gen)
        x.requires_grad_(True)
        pred, _ = model(x)
        loss = F.mse_loss(pred, f)
        loss.backward()
        if step == 0:
            ratio0 = float(x.grad[:, 0].norm()) / max(float(x.grad[:, -1].norm()), 1e-30)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("input gradient at t=0 over 100x that at the last step, step 0", ratio0 > 100)
    ctx.check("loss blew up", (not _finite(ls)) or max(ls) > 1e3 * ls[0])


@scenario(
    family="snowshoe_hare_moult_timing_tanh_steplr_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a snowshoe-hare moult-timing regressor, tanh MLP, MSE, plain SGD with StepLR; the "
    "StepLR gamma was typed 20 for 0.05 at its step 60, lr x sharpness goes well past 2, the "
    "loss oscillates and blows up",
)
def h688_snowshoe_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(6888)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=20.0)  # meant 0.05
    ctx.attach(model, opt)
    data = _readings(gen)
    probe_x, probe_y = next(data)

    def sharpness() -> float:
        params = list(model.parameters())
        loss = F.mse_loss(model(probe_x), probe_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            n = math.sqrt(sum(float((u * u).sum()) for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
            v = [h.detach() for h in hv]
        return lam

    lr_lam = {}
    for step in range(140):
        if step in (59, 60):
            lr_lam[step] = opt.param_groups[0]["lr"] * sharpness()
        x, y = next(data)
        _train(ctx, model, opt, F.mse_loss(model(x), y))
        sched.step()
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 59", lr_lam[59] < 2.0)
    ctx.check("lr x sharpness over 2 at step 60", lr_lam[60] > 2.0)
    ctx.check("loss fell before step 60", _mean(ls[50:60]) < 0.6 * _mean(ls[:5]))
    ctx.check("loss blew up after step 60", (not _finite(ls)) or max(ls[60:]) > 1e3 * min(ls))


@scenario(
    family="cooper_stave_bevel_angle_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=50,
    note="a cooper's stave bevel-angle regressor, SiLU MLP, MSE, RMSprop; a hand-written L2 "
    "penalty switched on at step 50 was added with its sign flipped (loss - wd * |w|^2), the "
    "weights grow step by step and the loss climbs slowly past 5x its low without a break",
)
def h688_cooper_stave_l2_sign(ctx: Context) -> None:
    gen = seeded(6889)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    wnorm = {}
    for step in range(280):
        if step in (50, 279):
            wnorm[step] = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        total = loss
        if step >= 50:
            total = loss - 1e-1 * sum(p.pow(2).sum() for p in model.parameters())
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 5]) for i in range(40, 60))
    ctx.check("weight norm over 3x between step 50 and the end", wnorm[279] > 3 * wnorm[50])
    ctx.check("loss at the end over 5x its low", _mean(ls[-10:]) > 5 * low)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="quoits_pin_ringer_call_temperature_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a quoits ringer-call classifier (ReLU MLP on 8x8 pin-throw glyphs from the digits), "
    "Adagrad; the softmax temperature was read from the config as 0.002 for 2.0 (a unit slip), "
    "the logits are divided by it, many rows' softmax rounds to exactly 1.0 on the target",
)
def h688_quoits_temperature_unit_slip(ctx: Context) -> None:
    gen = seeded(6880)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    temperature = 0.002  # meant 2.0
    frac = []
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature
        frac.append(collapsed_fraction(logits.detach(), y))
        _train(ctx, model, opt, F.cross_entropy(logits, y))
    ctx.check("over 20% of rows at p = 1.0 over the last 20 steps", _mean(frac[-20:]) > 0.2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------


@scenario(
    family="loom_heddle_shed_sequence_continual_relu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a loom heddle-shed sequence classifier (ReLU MLP on 8x8 glyphs from the digits), Adam "
    "with warm-up; continual learning: at step 100 the second weave's data (digits 5-9) replaces "
    "the first's (digits 0-4), the loss jumps up at the switch and comes back down (the "
    "stability gap), an alarming-looking but healthy run",
)
def h688_loom_heddle_task_switch(ctx: Context) -> None:
    gen = seeded(6871)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    data = digit_batches(gen, batch=128)
    for step in range(220):
        x, y = next(data)
        keep = y < 5 if step < 100 else y >= 5
        x, y = x[keep], y[keep]
        ctx.targets(y)
        _train(ctx, model, opt, F.cross_entropy(model(x), y))
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell on the first task", _mean(ls[90:100]) < 0.3 * _mean(ls[:5]))
    ctx.check("loss jumped at the switch (over 3x)", max(ls[100:103]) > 3 * _mean(ls[90:100]))
    ctx.check("loss came back down", _mean(ls[-10:]) < 0.3 * max(ls[100:103]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="petanque_boule_lie_distance_gelu_huber_onecycle_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a petanque boule-lie distance regressor, GELU MLP, Huber loss, OneCycleLR, clipping "
    "at 1, SGD Nesterov, noisy batches; an ordinary healthy run",
)
def h688_petanque_onecycle_control(ctx: Context) -> None:
    gen = seeded(6872)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.2)
    for _step in range(200):
        x, y = next(data)
        _train(ctx, model, opt, F.huber_loss(model(x), y, delta=0.5), clip=1.0)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.7x first 10)", _mean(ls[-10:]) < 0.7 * _mean(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="origami_crease_fold_type_smoothed_relu_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an origami crease fold-type classifier (ReLU MLP on 8x8 glyphs from the digits), "
    "label smoothing 0.1, param groups (no decay on biases), ReduceLROnPlateau, NAdam; an "
    "ordinary healthy run",
)
def h688_origami_plateau_control(ctx: Context) -> None:
    gen = seeded(6873)
    model = _Net(64, 64, 10, nn.ReLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.NAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _step in range(160):
        x, y = next(data)
        ctx.targets(y)
        _train(ctx, model, opt, F.cross_entropy(model(x), y, label_smoothing=0.1))
        sched.step(ctx.losses[-1])
    ls = ctx.losses
    ctx.check("loss fell (last 10 under 0.5x first 10)", _mean(ls[-10:]) < 0.5 * _mean(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))
