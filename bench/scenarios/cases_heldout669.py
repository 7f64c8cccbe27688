"""Held-out set 669 (``h669_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face BLT global transformer built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
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
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w + noise * torch.randn(batch, k, generator=gen)).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _gnorm(module: nn.Module) -> float:
    gs = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


def _tiny_blt_global(dim: int = 32):
    from transformers import BltGlobalTransformerConfig
    from transformers.models.blt.modeling_blt import BltGlobalTransformer

    config = BltGlobalTransformerConfig(
        hidden_size=dim,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=4 * dim,
        max_position_embeddings=64,
    )
    return BltGlobalTransformer(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sheepdog_trial_shed_gate_temperature_typo_relu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a sheepdog-trial shed classifier (which of 5 ways the shed went, from 12 handler-whistle "
    "and flock readings); the head divides its logits by a temperature read from the config as "
    "0.004 instead of 1.0 (a typo in the yaml), so the logits are 250x too sharp and within a few "
    "dozen Adam steps a third of the rows' softmax rounds the target probability to exactly 1.0 in float32",
)
def h669_sheepdog_shed_temperature_typo(ctx: Context) -> None:
    gen = seeded(6691)

    class ShedNet(nn.Module):
        def __init__(self, temperature: float) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 64)
            self.fc2 = nn.Linear(64, 64)
            self.head = nn.Linear(64, 5)
            self.temperature = temperature

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.fc2(F.relu(self.fc1(x))))
            return self.head(h) / self.temperature

    model = ShedNet(temperature=0.004)  # config: temperature: 0.004 (meant 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    collapsed = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "the collapsed share rose by over 0.2 from the start",
        min(collapsed[-10:]) > collapsed[0] + 0.2,
    )
    ctx.check("over 30% of the rows' softmax is exactly 1.0 at the end", min(collapsed[-10:]) > 0.3)


@scenario(
    family="maple_sap_bucket_sugar_content_huber_momentum_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="a maple sap-bucket sugar-content regressor (Huber loss, SGD with momentum); one shard "
    "written by a tapping crew's logger that records its 8 sensor readings in raw ADC counts "
    "(x400) instead of calibrated units comes in as the batch at step 140: that batch's loss "
    "jumps far above every loss before it and the run recovers afterwards",
    onset=140,
)
def h669_maple_sap_adc_count_shard(ctx: Context) -> None:
    gen = seeded(6692)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(220):
        x, y = next(batches)
        if step == 140:
            x = x * 400.0  # the bad shard: raw ADC counts
            y = y * 40.0
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "the shard's batch loss is over 50x the median before it",
        ls[140] > 50 * _median(ls[100:140]),
    )
    ctx.check(
        "the run recovers (last 20 median under 3x pre-shard median)",
        _median(ls[-20:]) < 3 * _median(ls[100:140]),
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="glacier_calving_front_stuck_gauge_batchstd_gaussian_nll_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("standardize",),
    diverges=90,
    heldout=True,
    note="a glacier calving-front retreat regressor with a Gaussian NLL head; its first module "
    "standardises each batch's readings by the batch std with no epsilon; at step 90 one "
    "gauge sticks and reports the same value for the whole batch, the std is 0, 0/0 gives NaN "
    "in the standardize module and the loss is NaN from there on",
    onset=90,
)
def h669_calving_front_zero_std(ctx: Context) -> None:
    gen = seeded(6693)

    class Standardize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mu = x.mean(0, keepdim=True)
            return (x - mu) / x.std(0, keepdim=True)  # missing: + 1e-5

    class CalvingNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.standardize = Standardize()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU())
            self.mean = nn.Linear(32, 1)
            self.log_var = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(self.standardize(x))
            return self.mean(h), self.log_var(h)

    model = CalvingNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _readings(gen)
    nan_at = None
    for step in range(150):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 3] = 0.731  # the stuck gauge
        mean, log_var = model(x)
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            nan_at = step
            break
    ctx.check("the loss is finite before step 90", _finite(ctx.losses[:90]))
    ctx.check("the loss is NaN at step 90", nan_at == 90 and math.isnan(ctx.losses[90]))
    ctx.check(
        "the loss fell before the stuck gauge",
        _median(ctx.losses[70:90]) < _median(ctx.losses[:10]),
    )


@scenario(
    family="handbell_choir_ring_timing_irnn_gain_typo_classifier",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a handbell-choir ring-timing classifier: a ReLU RNN over 40 ticks of 4 readings; the "
    "recurrent matrix is initialised IRNN-style as identity times a gain that was written 1.3 "
    "instead of 1.0, so the hidden state and the backpropagated gradient grow ~1.3x per tick "
    "through time; with Nesterov SGD the gradient is huge from the start and the loss blows up",
)
def h669_handbell_irnn_gain_typo(ctx: Context) -> None:
    gen = seeded(6694)

    class RingNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 3)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.3 * torch.eye(32))  # gain typo: 1.3, meant 1.0
                self.rnn.bias_hh_l0.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = RingNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    w = torch.randn(4, 3, generator=gen)
    grads = []
    for _ in range(120):
        x = torch.randn(32, 40, 4, generator=gen).abs() * 0.3
        y = (x[:, -5:].mean(1) @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append(_gnorm(model.rnn))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("the recurrent gradient norm at step 0 exceeds 1e3", grads[0] > 1e3)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="cheesemonger_wheel_rind_ripeness_group_lr_typo_bce_net",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="a cheesemonger's rind-ripeness tagger (4 independent ripeness flags, BCE); the "
    "encoder and the head are put in two param groups, and the encoder's lr was typed 1e-8 "
    "instead of 1e-3: the encoder's weights barely move (update/weight ratio around 1e-8) while "
    "the head learns, so the loss falls only as far as a linear head on random features allows",
)
def h669_cheese_rind_encoder_group_typo(ctx: Context) -> None:
    gen = seeded(6695)

    class RindNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(10, 48)
            self.head = nn.Linear(48, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.encoder(x)))

    model = RindNet()
    opt = torch.optim.Adamax(
        [
            {"params": model.encoder.parameters(), "lr": 1e-8},  # typo: meant 1e-3
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    w = torch.randn(10, 4, generator=gen)
    enc0 = model.encoder.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    for _ in range(200):
        x = torch.randn(64, 10, generator=gen)
        y = ((x**2) @ w.abs() > 10 * w.abs().sum(0) / 10).float()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    enc_rel = float((model.encoder.weight - enc0).norm() / enc0.norm())
    head_rel = float((model.head.weight - head0).norm() / head0.norm())
    ctx.check("the encoder moved under 1e-5 of its norm over the run", enc_rel < 1e-5)
    ctx.check("the head moved over 10% of its norm", head_rel > 0.1)


@scenario(
    family="dry_stone_waller_batter_lean_onecycle_mse_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a dry-stone waller's batter-lean regressor (MSE, plain SGD) on a OneCycleLR schedule "
    "whose max_lr was copied from an Adam recipe with an extra zero (2.0 instead of 0.2); as "
    "the one-cycle warm-up ramps the rate past 2/sharpness the loss first oscillates then blows up",
    onset=15,
)
def h669_stone_waller_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(6696)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=200, pct_start=0.4)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for _ in range(200):
        x, y = next(batches)
        x = x * 1.5
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("the loss fell early in the warm-up", min(ls[:40]) < 0.7 * ls[0])
    ctx.check(
        "the loss later blows up past 20x its early minimum",
        not _finite(ls) or max(ls[40:]) > 20 * min(ls[:40]),
    )


@scenario(
    family="letterpress_platen_kiss_impression_no_warmup_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="a letterpress platen kiss-impression classifier (under / kiss / bite / punch / slur from "
    "12 press readings, fed as raw gauge values whose +3 offset was never removed); NAdam at "
    "lr 0.6 with the warm-up left out: the first few big updates "
    "push most of the first ReLU layer's pre-activations below zero on every input, those units "
    "never fire again and the loss plateaus well above what the net could reach",
)
def h669_letterpress_no_warmup_dead_relus(ctx: Context) -> None:
    gen = seeded(6697)

    class PlatenNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 64)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act1(self.fc1(x)))

    model = PlatenNet()
    opt = torch.optim.NAdam(model.parameters(), lr=0.6)
    ctx.attach(model, opt)
    batches = _labels(gen)
    probe = torch.randn(512, 12, generator=gen)
    dead0 = dead_fraction(model.fc1(probe + 3.0).detach())
    for _ in range(150):
        x, y = next(batches)
        x = x + 3.0  # raw gauge readings, offset never removed
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    dead1 = dead_fraction(model.fc1(probe + 3.0).detach())
    ctx.check("the dead share grew by over 0.3 during training", dead1 > dead0 + 0.3)
    ctx.check("over 40% of the ReLUs are dead at the end", dead1 > 0.4)


@scenario(
    family="sled_dog_team_gangline_tension_aux_weight_bug_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="a sled-dog gangline tension regressor with an auxiliary smoothness term whose weight "
    "comes from a per-step schedule; a bug in the schedule's lookup returns 10 instead of 5e-3 "
    "for one step (step 120), so that step's gradient bursts far above the rest and throws the "
    "weights off; nothing in the data changes",
    onset=120,
)
def h669_sled_dog_aux_weight_glitch(ctx: Context) -> None:
    gen = seeded(6698)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _readings(gen)
    grads = []
    for step in range(220):
        x, y = next(batches)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        aux_w = 10.0 if step == 120 else 5e-3  # schedule lookup bug at one step
        aux = (pred[1:] - pred[:-1]).pow(2).mean()
        (loss + aux_w * aux).backward()
        grads.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "the gradient at step 120 is over 50x the median before",
        grads[120] > 50 * _median(grads[80:120]),
    )
    ctx.check(
        "the batch after the burst has a higher loss",
        ctx.losses[121] > 1.5 * _median(ctx.losses[100:120]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="ball_mill_ore_grind_energy_feature_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=None,
    heldout=True,
    note="a ball-mill ore-grind regressor trained under fp16 autocast with a GradScaler; its "
    "'energy' module sums the squares of 64 encoder features, fine in float32 but as the "
    "features grow during training the sum passes the fp16 maximum (65504): the forward gives "
    "inf, the scaler skips step after step and its scale collapses",
)
def h669_ball_mill_fp16_energy(ctx: Context) -> None:
    gen = seeded(6699)

    class Energy(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return (h * h).sum(-1, keepdim=True)

    class MillNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(8, 64)
            self.energy = Energy()
            self.head = nn.Linear(65, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.enc(x)
            return self.head(torch.cat([h, self.energy(h) * 1e-4], -1))

    model = MillNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    overflow = []
    for _ in range(150):
        x, y = next(batches)
        x = x * 20.0  # readings in raw kW
        y = y * 100.0 + 300.0
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
            e = model.energy(model.enc(x))
        overflow.append(not bool(torch.isfinite(e).all()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("no fp16 overflow in the first 10 steps", not any(overflow[:10]))
    ctx.check("the energy overflows fp16 in 10 or more later steps", sum(overflow[10:]) >= 10)
    ctx.check("the grad scale collapsed over 1e4x", min(ctx.scales) < ctx.scales[0] / 1e4)


@scenario(
    family="bonsai_jin_deadwood_bleach_decay_sign_asgd_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a bonsai jin deadwood lime-sulphur bleaching-time regressor (MSE, ASGD) with weight "
    "decay applied by hand after each step; the sign was flipped (w *= 1 + lr*wd instead of "
    "1 - lr*wd), so the weights inflate a little every step and after the loss bottoms out it "
    "climbs slowly and steadily for the rest of the run",
)
def h669_bonsai_jin_decay_sign(ctx: Context) -> None:
    gen = seeded(66910)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)
    )
    lr, wd = 0.05, 0.3
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign bug: meant 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    lo = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 5]))
    ctx.check("the loss first fell below 70% of its start", min(ls[:100]) < 0.7 * ls[0])
    ctx.check(
        "the last-20 median is over 3x the best 10-step median",
        _median(ls[-20:]) > 3 * _median(ls[max(0, lo - 5) : lo + 5]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="fly_fishing_cast_loop_shape_ohem_radam_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a fly-fishing cast loop-shape classifier (tight / open / tailing / collapsed / "
    "pile cast) trained with online hard-example mining: each batch keeps only its hardest "
    "examples and the kept fraction is annealed from 100% to 15%, with label smoothing; the "
    "batch loss on the kept examples rises through the run as they get harder, which looks "
    "alarming, while the loss on the whole batch falls and accuracy climbs",
)
def h669_fly_cast_ohem_healthy(ctx: Context) -> None:
    gen = seeded(66911)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=128, noise=0.5)
    full = []
    for step in range(200):
        x, y = next(batches)
        logits = model(x)
        per = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.05)
        keep = max(8, int(len(y) * (1.0 - 0.85 * min(step / 150, 1.0))))
        idx = per.detach().topk(keep).indices
        ctx.targets(y[idx])
        loss = per[idx].mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        full.append(float(per.detach().mean()))
    ls = ctx.losses
    best = min(_median(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check(
        "the kept-example loss at the end is over 1.2x its best 20-step median",
        _median(ls[-20:]) > 1.2 * best,
    )
    ctx.check(
        "the whole-batch loss fell below 70% of its start",
        _median(full[-20:]) < 0.7 * _median(full[:10]),
    )
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="telegraph_sounder_click_blt_global_transformer_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a telegraph-sounder click-stream byte LM: byte embedding tied to the output head around "
    "a Hugging Face BLT global transformer (blt_global_transformer) built from a tiny config, "
    "AdamW with weight decay only on matrices, linear warm-up then cosine decay, clipping at 1.0",
)
def h669_telegraph_blt_global_healthy(ctx: Context) -> None:
    gen = seeded(66912)

    class SounderLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(128, 32)
            self.globe = _tiny_blt_global(32)
            self.lm_head = nn.Linear(32, 128, bias=False)
            self.lm_head.weight = self.tok.weight  # tied
            nn.init.normal_(self.tok.weight, std=0.02)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.globe(self.tok(idx)))

    model = SounderLM()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    total, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(total):
        x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("the loss fell below 75% of its start", _median(ls[-10:]) < 0.75 * _median(ls[:5]))
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="hot_air_balloon_envelope_deflation_risk_accum_plateau_bce_net",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a hot-air-balloon envelope deflation-risk flagger (BCE on noisy labels) trained with "
    "RMSprop, gradient accumulation over 4 micro-batches and ReduceLROnPlateau on the "
    "accumulated loss; the per-step loss is noisy but falls",
)
def h669_balloon_envelope_accum_healthy(ctx: Context) -> None:
    gen = seeded(66913)
    model = nn.Sequential(
        nn.Linear(10, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU(), nn.Linear(48, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    for _ in range(150):
        total = 0.0
        for _ in range(4):
            x = torch.randn(32, 10, generator=gen)
            logit = x @ w + 0.5 * x[:, 0] * x[:, 1]
            y = (torch.rand(32, generator=gen) < torch.sigmoid(2 * logit)).float()
            micro = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            (micro / 4).backward()
            total += float(micro) / 4
        opt.step()
        loss = torch.tensor(total)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step(total)
    ls = ctx.losses
    ctx.check("the loss fell below 80% of its start", _median(ls[-20:]) < 0.8 * _median(ls[:5]))
    ctx.check("finite throughout", _finite(ls))
