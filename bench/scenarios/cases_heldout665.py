"""Held-out set 665 (``h665_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face IQuestCoder causal LM built from a tiny config."""

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


def _step(ctx: Context, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


def _tiny_iquestcoder(vocab: int = 128):
    from transformers import AutoModelForCausalLM, IQuestCoderConfig

    config = IQuestCoderConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModelForCausalLM.from_config(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="iquestcoder_pibroch_canntaireachd_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.0",),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face IQuestCoder causal LM on pibroch canntaireachd bytes, trained with "
    "per-layer param groups read from a config; the first decoder layer's key was written "
    "'layer_00_lr' while the loader looks up 'layers.0_lr', so the default 0.0 is used and "
    "model.layers.0 never moves while the rest of the model trains",
)
def h665_iquestcoder_pibroch_layer0_frozen(ctx: Context) -> None:
    gen = seeded(6651)
    model = _tiny_iquestcoder()
    cfg = {"base_lr": 3e-3, "layer_00_lr": 3e-3}  # typo: the loader looks up "layers.0_lr"
    first = [p for n, p in model.named_parameters() if n.startswith("model.layers.0.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.layers.0.")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["base_lr"]},
            {"params": first, "lr": cfg.get("layers.0_lr", 0.0)},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in first]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step_i in range(80):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        _step(ctx, opt, loss)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(first, before, strict=True))
    ctx.check("model.layers.0 weights never moved (max change 0)", moved == 0.0)
    ctx.check("layers.0 group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="curling_stone_sweep_split_relu_irnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a curling stone's split time predicted from 24 sweep-pressure readings with a ReLU "
    "IRNN; the identity init of the recurrent weights was scaled by a gain of 1.5 (copied from "
    "a feed-forward init) instead of 1.0, so the gradient grows through time: the gradient at the "
    "first reading is over 100x the last's; clipping at 1.0 keeps the loss finite",
)
def h665_curling_sweep_irnn_gain(ctx: Context) -> None:
    gen = seeded(6652)

    class SweepNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(1.5 * torch.eye(32))  # bug: gain 1.5, not 1.0
                self.rnn.bias_hh_l0.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = SweepNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    w = torch.randn(4, generator=gen) / 2
    ratios: list[float] = []
    for _step_i in range(100):
        x = 0.3 * torch.randn(32, 24, 4, generator=gen).abs()
        y = torch.tanh((x @ w).mean(1, keepdim=True) * 3)
        x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g = x.grad.norm(dim=(0, 2))
        ratios.append(float(g[0] / (g[-1] + 1e-30)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        _step(ctx, opt, loss)
    ls = ctx.losses
    ctx.check("input gradient at the first reading over 100x the last's", _median(ratios) > 100)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="glassblower_gather_colour_temperature_classifier",
    optimizer="SGD (Nesterov)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a glassblower's gather-colour (furnace heat stage) classifier with a softmax "
    "temperature read from a config; 0.5 was typed as 0.005 (a doubled zero), so the head's logits "
    "are multiplied by 200 instead of 2 and most rows' target probability rounds to exactly 1.0 in float32",
)
def h665_glassblower_gather_temperature_typo(ctx: Context) -> None:
    gen = seeded(6653)

    class GatherNet(nn.Module):
        def __init__(self, temperature: float) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.head = nn.Linear(32, 5)
            self.temperature = temperature

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x))) / self.temperature

    model = GatherNet(temperature=0.005)  # bug: meant 0.5
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen)
    fracs: list[float] = []
    for _step_i in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        _step(ctx, opt, loss)
    ctx.check("over half the rows at target p == 1.0 (last 10 steps)", _median(fracs[-10:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hot_air_balloon_envelope_sag_pow_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("shape",),
    diverges=41,
    heldout=True,
    onset=40,
    note="a hot-air balloon envelope-sag regressor with a learnable exponent on a tanh feature "
    "(h ** p, meant for a softplus feature; the clamp to positive was left out); the exponent is "
    "frozen for a 40-step warm-up and starts at 2.0, so negative bases are harmless until it is "
    "unfrozen at step 40: its gradient h ** p * log(h) is NaN for negative h, p turns NaN and "
    "the loss is NaN from step 41",
)
def h665_balloon_sag_pow_negative_base(ctx: Context) -> None:
    gen = seeded(6654)

    class Shape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.tensor(2.0))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h**self.p  # bug: base not clamped positive

    class SagNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 24)
            self.shape = Shape()
            self.out = nn.Linear(24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.shape(torch.tanh(self.fc1(x))))

    model = SagNet()
    model.shape.p.requires_grad_(False)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    nan_at = None
    for step in range(120):
        if step == 40:
            model.shape.p.requires_grad_(True)  # end of the warm-up freeze
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        _step(ctx, opt, loss)
        if not math.isfinite(float(loss)):
            nan_at = step
            break
    ls = ctx.losses
    ctx.check("loss NaN at step 41", nan_at == 41 and math.isnan(ls[-1]))
    ctx.check("exponent p is NaN", bool(torch.isnan(model.shape.p)))
    ctx.check("loss finite and falling before the unfreeze", _finite(ls[:41]) and ls[39] < ls[0])


@scenario(
    family="salt_pan_brine_density_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=(),
    diverges=60,
    heldout=True,
    onset=60,
    note="a salt-pan brine-density regressor trained under fp16 autocast with a GradScaler; from "
    "step 60 a new shard's air-pressure column arrives in pascals (about 101325) instead of "
    "standardised kPa; in fp32 the activations (around 1e5) would be representable, but in fp16 "
    "the first layers overflow past 65504 to inf, the loss is inf and the scaler skips every step "
    "while its scale collapses",
)
def h665_salt_pan_brine_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6655)
    model = nn.Sequential(
        nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, n_in=6)
    fp32_finite = None
    for step in range(110):
        x, y = next(batches)
        if step >= 60:
            x = x.clone()
            x[:, 0] = 101325.0 + 500.0 * x[:, 0]  # bug: pascals, not standardised
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 60:
            with torch.no_grad():
                fp32_finite = math.isfinite(float(F.mse_loss(model(x), y)))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite before step 60", _finite(ls[:60]))
    ctx.check("loss inf from step 60", all(not math.isfinite(v) for v in ls[60:]))
    ctx.check("same batch in fp32 gives a finite loss", fp32_finite is True)
    ctx.check("scale fell over 2^20 after onset", ctx.scales[-1] < ctx.scales[59] / 2.0**20)


@scenario(
    family="oyster_dredge_haul_weight_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="an oyster-dredge haul-weight regressor; the batch at step 90 comes from a bad shard "
    "where a broken load cell wrote its -9999 sentinel into a whole column and the weight target "
    "as 9999; the loss spikes, the gradient bursts, clipping at 5 holds it and the run recovers",
)
def h665_oyster_dredge_sentinel_batch(ctx: Context) -> None:
    gen = seeded(6656)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen)
    norms: list[float] = []
    for step in range(180):
        x, y = next(batches)
        if step == 90:
            x, y = x.clone(), y.clone()
            x[:8, 3] = -9999.0  # the bad shard's sentinel
            y[:8] = 9999.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        _step(ctx, opt, loss)
    ls = ctx.losses
    ctx.check("loss at step 90 over 20x its median", ls[90] > 20 * _median(ls[70:90]))
    ctx.check("gradient at step 90 over 10x its median", norms[90] > 10 * _median(norms[70:90]))
    ctx.check(
        "run recovered: last loss below 3x pre-onset", _median(ls[-10:]) < 3 * _median(ls[80:90])
    )


@scenario(
    family="bell_founder_tuning_cut_accum_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a bell founder's tuning-cut depth regressor with 4-micro-batch gradient accumulation; "
    "on resuming at step 70 the loss divisor was rebuilt from the wrong field, so for that one "
    "step each micro-batch loss is multiplied by 64 instead of divided by 4 (256x gradient); the "
    "logged loss is ordinary, clipping at 1.0 holds the update",
)
def h665_bell_founder_accum_divisor(ctx: Context) -> None:
    gen = seeded(6657)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16)
    norms: list[float] = []
    for step in range(140):
        scale = 64.0 if step == 70 else 1.0 / 4  # bug on resume: 64 instead of 1/4
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            micro = F.mse_loss(model(x), y)
            (micro * scale).backward()
            total += float(micro) / 4
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        _step(ctx, opt, torch.tensor(total))
    ls = ctx.losses
    ctx.check("gradient at step 70 over 50x its median", norms[70] > 50 * _median(norms[50:70]))
    ctx.check("logged loss at step 70 ordinary (below 2x median)", ls[70] < 2 * _median(ls[50:70]))
    ctx.check("loss fell and stayed finite", _finite(ls) and _median(ls[-10:]) < _median(ls[:5]))


@scenario(
    family="snowshoe_binding_wear_aux_penalty_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a snowshoe binding-wear regressor with a smoothness penalty whose weight ramp was read "
    "in the wrong units: at step 60 (its first step) the weight is 1e6 instead of 1e-2, one "
    "giant gradient fills Adam's second moment (beta2 0.999) and the updates stall for the rest "
    "of the run while the loss stops improving",
)
def h665_snowshoe_penalty_weight_units(ctx: Context) -> None:
    gen = seeded(6658)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    moves: list[float] = []
    for step in range(170):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        total = loss
        if step >= 60:
            weight = 1e6 if step == 60 else 1e-2  # bug: ramp's first value in the wrong units
            total = loss + weight * (out[1:] - out[:-1]).pow(2).mean()
        total.backward()
        before = [p.detach().clone() for p in model.parameters()]
        _step(ctx, opt, loss)
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
                ** 0.5
            )
        )
    ls = ctx.losses
    ctx.check(
        "updates after step 100 below 0.05x those before 60",
        _median(moves[100:]) < 0.05 * _median(moves[30:60]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="thatcher_reed_bundle_grade_dead_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="a thatcher's reed-bundle grade classifier whose hidden ReLU layer was initialised with "
    "bias -3 (copied from a gate's 'start closed' init); with standardised inputs every hidden "
    "unit is off on every sample, no gradient reaches them and the loss stays at chance",
)
def h665_thatcher_reed_dead_bias(ctx: Context) -> None:
    gen = seeded(6659)

    class ReedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(12, 48)
            self.head = nn.Linear(48, 5)
            nn.init.constant_(self.hidden.bias, -3.0)  # bug: a gate's init

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.hidden(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    model = ReedNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    dead: list[float] = []
    for _step_i in range(120):
        x, y = next(batches)
        ctx.targets(y)
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        _step(ctx, opt, loss)
    ls = ctx.losses
    ctx.check("over 90% of hidden units dead at the end", dead[-1] > 0.9)
    ctx.check("loss stays near chance (above 0.9 log 5)", _median(ls[-10:]) > 0.9 * math.log(5))


@scenario(
    family="seiche_lake_oscillation_period_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=33,
    note="a lake seiche oscillation-period regressor trained with full-batch-like SGD; the "
    "peak learning rate of a 60-step linear warm-up was typed 0.8 instead of 0.08, lr x sharpness (measured by power iteration at "
    "step 0, 4.5) passes 2 at step 33 of the warm-up, and the loss blows up",
)
def h665_seiche_period_lr_typo(ctx: Context) -> None:
    gen = seeded(6660)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    lr = 0.8  # typo: 0.08
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    ctx.attach(model, opt)
    batches = _readings(gen, batch=256)
    x0, y0 = next(batches)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(x0), y0), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    sharp = 0.0
    for _ in range(30):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        sharp = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    del grads
    for _step_i in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        _step(ctx, opt, loss)
        warm.step()
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("run lasted 60 steps or more", len(ls) >= 60)
    ctx.check("peak lr x sharpness over 2 at step 0", lr * sharp > 2)
    ctx.check("loss blew up over 100x its start", max(ls) > 100 * ls[0] or not _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="lacrosse_pocket_string_class_balanced_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a lacrosse stick pocket-stringing fault classifier on a long-tailed label set (60% to "
    "about 1%), trained with class-balanced cross-entropy: each sample weighted by its class's "
    "inverse frequency from a label census (the rarest class over 40x the commonest), over "
    "targets with "
    "label smoothing 0.2, ReduceLROnPlateau; the loss is high-floored and jumps whenever rare "
    "classes land in a batch, which looks alarming but is the expected behaviour",
)
def h665_lacrosse_pocket_class_balanced(ctx: Context) -> None:
    gen = seeded(6661)
    w = torch.randn(12, 6, generator=gen)
    shift = 2.0 * torch.log(torch.tensor([0.6, 0.2, 0.1, 0.06, 0.03, 0.01]))

    def batch(n: int = 64):
        x = torch.randn(n, 12, generator=gen)
        return x, (x @ w + shift).argmax(1)

    _, census = batch(4000)
    counts = torch.bincount(census, minlength=6).float()
    weights = counts.sum() / (6 * counts)  # inverse frequency, rarest class over 10x
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 6))
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    for _step_i in range(200):
        x, y = batch()
        ctx.targets(y)
        per = F.cross_entropy(model(x), y, label_smoothing=0.2, reduction="none")
        loss = (weights[y] * per).sum() / weights[y].sum()  # class-balanced, per sample
        loss.backward()
        _step(ctx, opt, loss)
        sched.step(float(loss))
    ls = ctx.losses
    xs, ys = zip(*(batch() for _ in range(20)), strict=True)
    xt, yt = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        pred = model(xt).argmax(1)
    recalls = [float((pred[yt == c] == c).float().mean()) for c in range(6) if (yt == c).any()]
    ctx.check("loss fell 20%", _median(ls[-20:]) < 0.8 * _median(ls[:5]))
    ctx.check(
        "rarest class weighted over 40x the commonest", float(weights.max() / weights.min()) > 40
    )
    ctx.check("balanced accuracy over 0.5", sum(recalls) / len(recalls) > 0.5)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="clog_dance_tap_timing_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a clog-dance tap-timing Huber regressor on noisy foot-sensor readings with occasional "
    "heavy-tailed target noise, linear warm-up then StepLR, 2-micro-batch accumulation and "
    "clipping at 1.0, ASGD: an ordinary healthy run",
)
def h665_clog_tap_timing_huber(ctx: Context) -> None:
    gen = seeded(6662)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2, t0=1e3)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    batches = _readings(gen, batch=32, noise=0.1)
    for step in range(160):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            y = y + 0.3 * torch.distributions.StudentT(2.0).sample(y.shape)
            micro = F.huber_loss(model(x), y, delta=0.5)
            (micro / 2).backward()
            total += float(micro) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        _step(ctx, opt, torch.tensor(total))
        warm.step()
        if step == 100:
            for g in opt.param_groups:
                g["lr"] *= 0.3
    ls = ctx.losses
    ctx.check("loss fell 20%", _median(ls[-20:]) < 0.8 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="geyser_eruption_interval_fp16_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a geyser eruption-interval regressor predicting a mean and a softplus spread (+1e-3) "
    "with a Gaussian NLL, under fp16 autocast with a GradScaler, OneCycleLR, two param groups "
    "(no weight decay on biases), clipping at 1.0 and noisy readings: an ordinary healthy run",
)
def h665_geyser_interval_fp16_nll(ctx: Context) -> None:
    gen = seeded(6663)

    class GeyserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU())
            self.mean = nn.Linear(48, 1)
            self.spread = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor):
            h = self.body(x)
            return self.mean(h), F.softplus(self.spread(h)) + 1e-3

    model = GeyserNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, noise=0.2)
    for _step_i in range(150):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            mu, sd = model(x)
        loss = F.gaussian_nll_loss(mu.float(), y, sd.float() ** 2)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell by 0.3 nats", _median(ls[-20:]) < _median(ls[:5]) - 0.3)
    ctx.check("loss finite throughout", _finite(ls))
