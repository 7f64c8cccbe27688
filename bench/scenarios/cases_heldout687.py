"""Held-out set 687 (``h687_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face Mllama text model built from a tiny
config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
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


def _train_step(ctx: Context, model: nn.Module, opt: torch.optim.Optimizer, loss) -> None:
    loss.backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


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


def _tiny_mllama_text():
    from transformers import MllamaTextConfig
    from transformers.models.mllama.modeling_mllama import MllamaForCausalLM

    config = MllamaTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        cross_attention_layers=[],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return MllamaForCausalLM(config)


def _sharpness(model: nn.Module, loss_fn, iters: int = 12) -> float:
    """Top Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sheepdog_crook_gather_ten_layer_gain_relu_regressor",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("0", "2"),
    diverges="auto",
    heldout=True,
    note="a ten-layer ReLU MLP regressing a sheepdog's gather time from field readings, SGD with "
    "Nesterov momentum; the init helper multiplies Kaiming weights by a gain of 1.6 meant for a "
    "single output layer, so the gradient grows by about 1.6x per layer towards the input (the "
    "first layer's output gradient is over 30x the last's) and the run blows up during an "
    "ordinary linear lr warm-up",
)
def h687_sheepdog_deep_gain_init(ctx: Context) -> None:
    gen = seeded(6871)
    sizes = [8] + [32] * 9 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        with torch.no_grad():
            lin.weight.mul_(1.6)  # gain meant for the output layer only
            lin.bias.zero_()
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9, nesterov=True)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=100)
    ctx.attach(model, opt)
    data = _readings(gen)
    outs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, _i, out):
            if out.requires_grad:
                out.register_hook(lambda g: outs.__setitem__(name, g.detach()))

        return hook

    model[0].register_forward_hook(keep("first"))
    model[18].register_forward_hook(keep("last"))
    ratio0 = None
    for _step in range(100):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if ratio0 is None:
            ratio0 = float(outs["first"].norm() / outs["last"].norm().clamp_min(1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        warm.step()
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check(
        "first layer's output gradient over 30x the last's", ratio0 is not None and ratio0 > 30
    )
    ctx.check(
        "loss blows up past 1e4x its start or goes non-finite",
        not _finite(ls) or max(ls) > 1e4 * ls[0],
    )


@scenario(
    family="quipu_cord_knot_mllama_text_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.1", "model.layers.1.self_attn", "model.layers.1.mlp"),
    diverges=None,
    heldout=True,
    note="a tiny Mllama text model (from a config) learning byte sequences of transcribed quipu "
    "knot records, AdamW with per-layer param groups from a layer-wise lr-decay helper; its "
    "decay factor for the last decoder layer was written 0.0 instead of 1.0, so model.layers.1 "
    "gets lr 0 and never moves while the embeddings, layer 0 and the head train",
)
def h687_quipu_mllama_layer_lr_zero(ctx: Context) -> None:
    gen = seeded(6872)
    model = _tiny_mllama_text()
    inner = model.model
    scale = {0: 1.0, 1: 0.0}  # typo: 0.0 for 1.0
    groups = [{"params": list(inner.embed_tokens.parameters()), "lr": 3e-3}]
    for i, layer in enumerate(inner.layers):
        groups.append({"params": list(layer.parameters()), "lr": 3e-3 * scale[i]})
    groups.append(
        {"params": list(inner.norm.parameters()) + list(model.lm_head.parameters()), "lr": 3e-3}
    )
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    ctx.attach(model, opt)
    frozen0 = [p.detach().clone() for p in inner.layers[1].parameters()]
    live0 = [p.detach().clone() for p in inner.layers[0].parameters()]
    data = text_batches(gen, batch=8, length=24, vocab=64)
    for _step in range(80):
        x, y = next(data)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))
        ctx.targets(y.reshape(-1))
        _train_step(ctx, model, opt, loss)

    def rel(now, then) -> float:
        num = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(now, then, strict=True)))
        return num / math.sqrt(sum(float(b.pow(2).sum()) for b in then))

    ls = ctx.losses
    ctx.check(
        "model.layers.1 moved under 1e-7 relative",
        rel(list(inner.layers[1].parameters()), frozen0) < 1e-7,
    )
    ctx.check(
        "model.layers.0 moved over 1e-2 relative",
        rel(list(inner.layers[0].parameters()), live0) > 1e-2,
    )
    ctx.check("loss fell", _median(ls[-10:]) < 0.8 * ls[0] and _finite(ls))


@scenario(
    family="kombucha_scoby_acidity_log_feature_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=70,
    heldout=True,
    onset=70,
    note="a kombucha-brew acidity regressor whose first module takes log of the raw yeast and "
    "bacteria cell counts with no clamp, RMSprop; at step 70 a batch from a brewery whose "
    "counter reported 0 for an empty sample arrives, log(0) = -inf in the log-feature layer and "
    "the loss is non-finite at step 70",
)
def h687_kombucha_log_zero(ctx: Context) -> None:
    class _LogFeature(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)  # no clamp

    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logfeat = _LogFeature()
            self.body = _Net(8, 32, 1, nn.SiLU)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.logfeat(x))

    gen = seeded(6873)
    model = _Model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    feat_bad_at = None
    for step in range(120):
        x, y = next(data)
        x = x.clone()
        x[:, :2] = torch.exp(x[:, :2])  # cell counts (positive)
        if step == 70:
            x[5, 0] = 0.0  # empty sample counted as 0
        with torch.no_grad():
            if feat_bad_at is None and not torch.isfinite(model.logfeat(x)).all():
                feat_bad_at = step
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", ls[69] < 0.7 * ls[0])
    ctx.check("loss non-finite at step 70", len(ls) == 71 and not math.isfinite(ls[70]))
    ctx.check("log-feature output first non-finite at step 70", feat_bad_at == 70)


@scenario(
    family="cloud_chamber_track_pressure_fp16_silu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=40,
    heldout=True,
    onset=40,
    note="a cloud-chamber track-length SiLU regressor trained under fp16 autocast with a "
    "torch.amp.GradScaler, Adam; from step 40 a new data shard gives the chamber pressure in "
    "pascals instead of kilopascals (x1000), fc1's fp16 output overflows to inf, the loss is "
    "inf from step 40 and the scaler skips every step and keeps halving its scale",
)
def h687_cloud_chamber_fp16_pascal(ctx: Context) -> None:
    gen = seeded(6874)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    first_inf = None
    for step in range(70):
        x, y = next(data)
        x = x.clone()
        x[:, 0] = x[:, 0] * 10.0 + 101.3  # pressure in kPa
        if step >= 40:
            x[:, 0] = x[:, 0] * 1000.0  # shard in Pa
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h))))
        if first_inf is None and not torch.isfinite(h).all():
            first_inf = step
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
    ctx.check("loss finite before step 40", _finite(ls[:40]))
    ctx.check("loss non-finite from step 40", not any(math.isfinite(v) for v in ls[40:]))
    ctx.check("fc1's fp16 output first overflowed at step 40", first_inf == 40)
    ctx.check("scaler scale fell over 1e3x after step 40", ctx.scales[-1] < ctx.scales[39] / 1e3)


@scenario(
    family="peat_turf_drying_mass_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a peat-turf drying-mass ReLU regressor, plain SGD with clipping at max-norm 5; the "
    "shard read at step 90 records the turf mass in grams instead of kilograms (targets x1000), "
    "that one batch's loss is over 1e4x the median and its gradient over 30x, clipping keeps "
    "the step bounded and the run recovers",
)
def h687_peat_turf_gram_shard(ctx: Context) -> None:
    gen = seeded(6875)
    model = _Net(8, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        if step == 90:
            y = y * 1000.0  # grams, not kg
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 1e4x the median before", ls[90] > 1e4 * _median(ls[60:90]))
    ctx.check("gradient at step 90 over 30x the median before", gs[90] > 30 * _median(gs[60:90]))
    ctx.check(
        "run recovers to within 3x its pre-onset level", _median(ls[-20:]) < 3 * _median(ls[70:90])
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="tidal_bore_surf_ride_masked_gru_regressor",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a GRU regressing a tidal-bore surfer's board speed per frame over padded rides, "
    "masked-mean MSE, SGD momentum with clipping at max-norm 5; on step 100 (a new epoch where "
    "the loader switches to its bucketed collate) the masked mean divides by the frames of one "
    "ride instead of all valid frames, so the backpropagated loss and its gradient are about "
    "40x too large for that one step; the logged loss is the correct one and the run goes on",
)
def h687_tidal_bore_mask_denominator(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(x)[0]).squeeze(-1)

    gen = seeded(6876)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(4, generator=gen)
    for step in range(180):
        x = torch.randn(48, 16, 4, generator=gen)
        y = torch.tanh(torch.cumsum(x @ w, 1) / 4)
        lengths = torch.randint(8, 17, (48,), generator=gen)
        valid = (torch.arange(16)[None] < lengths[:, None]).float()
        sq = (model(x) - y).pow(2) * valid
        loss = sq.sum() / valid.sum()
        backprop = sq.sum() / valid[0].sum() if step == 100 else loss  # one ride's frames
        backprop.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 over 20x the median before", gs[100] > 20 * _median(gs[80:100]))
    ctx.check(
        "logged loss at step 100 ordinary (under 3x median)", ls[100] < 3 * _median(ls[80:100])
    )
    ctx.check("loss fell and stays finite", _finite(ls) and _median(ls[-20:]) < 0.7 * ls[0])


@scenario(
    family="dowsing_rod_swing_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a dowsing-rod swing-angle tanh regressor, plain SGD with OneCycleLR; max_lr was typed "
    "8.0 instead of 0.8, the schedule's ramp carries lr x sharpness past 2 and the loss blows up "
    "during the warm-up",
)
def h687_dowsing_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6877)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=8.0, total_steps=200, pct_start=0.5)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe = next(data)
    over_limit = []
    for step in range(200):
        x, y = next(data)
        if step % 5 == 0:
            lam = _sharpness(model, lambda m: F.mse_loss(m(probe[0]), probe[1]))
            over_limit.append((step, opt.param_groups[0]["lr"] * lam))
        loss = F.mse_loss(model(x), y)
        _train_step(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    low = min(ls)
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    first_over = next((s for s, v in over_limit if v > 2.0), None)
    ctx.check("loss fell first", low < 0.5 * ls[0])
    ctx.check("loss blows up past 100x its low", blow is not None)
    ctx.check(
        "lr x sharpness above 2 before the blow-up",
        first_over is not None and blow is not None and first_over <= blow,
    )


@scenario(
    family="sourdough_levain_rise_drift_adagrad_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a sourdough levain rise-height GELU regressor, Adagrad; from step 60 the target "
    "calibration offset (jar height) is added to the running offset every batch instead of set "
    "once, so the target drifts upwards a little each step and the loss climbs slowly past 5x "
    "its low without any blow-up",
)
def h687_sourdough_offset_accumulates(ctx: Context) -> None:
    gen = seeded(6878)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    data = _readings(gen)
    offset = 0.0
    for step in range(240):
        x, y = next(data)
        if step >= 60:
            offset += 0.03  # += instead of =
        loss = F.mse_loss(model(x), y * (1.0 + offset) + offset)
        _train_step(ctx, model, opt, loss)
    ls = ctx.losses
    low = min(ls[:80])
    ctx.check("loss fell before the drift", low < 0.5 * ls[0])
    ctx.check("loss climbs past 5x its low by the end", _median(ls[-10:]) > 5 * low)
    ctx.check(
        "climb is gradual (no step over 10x the previous)",
        all(b < 10 * a for a, b in zip(ls[60:], ls[61:], strict=False)),
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="hurling_sliotar_strike_dead_bias_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="a hurling sliotar strike-type ReLU classifier on digit-like 8x8 impact maps, RAdam; the "
    "prior-probability bias init (-6) meant for the output layer is applied to fc1 too, every "
    "fc1 ReLU is dead from the start and never comes back, fc2 and the head learn only from "
    "constant inputs and the loss stays near chance",
)
def h687_hurling_dead_bias(ctx: Context) -> None:
    gen = seeded(6879)
    model = _Net(64, 64, 10, nn.ReLU)
    with torch.no_grad():
        model.fc1.bias.fill_(-6.0)  # prior-bias init applied to the wrong layer
        model.fc1.weight.mul_(0.5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    w0 = model.fc1.weight.detach().clone()
    dead = []
    for step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        if step % 30 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(x))))
        loss = F.cross_entropy(model(x), y)
        _train_step(ctx, model, opt, loss)
    ls = ctx.losses
    ctx.check("fc1 ReLUs all dead at every probe", min(dead) > 0.99)
    ctx.check("fc1 weight unchanged", bool(torch.equal(model.fc1.weight, w0)))
    ctx.check("loss stays near chance (over 2.0)", _median(ls[-20:]) > 2.0)


@scenario(
    family="gondola_oar_stroke_raw_logit_nll_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a gondolier oar-stroke classifier (forcola grip patterns as 8x8 maps), NAdam; the "
    "training loss calls F.nll_loss on the raw head logits, the log_softmax was dropped in a "
    "refactor, so the loss is minus the target logit, the head's logits grow without bound "
    "(over 20x) and the loss falls far below zero",
)
def h687_gondola_nll_raw_logits(ctx: Context) -> None:
    gen = seeded(68710)
    model = _Net(64, 48, 10, nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    probe = next(batches)[0]
    with torch.no_grad():
        start = float(model(probe).abs().max())
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.nll_loss(model(x), y)  # log_softmax dropped
        _train_step(ctx, model, opt, loss)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ls = ctx.losses
    ctx.check("head logits grew over 20x", end > 20 * start)
    ctx.check("loss below -10 at the end", ls[-1] < -10)
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    family="falconry_lure_swing_alternating_two_task_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a falconry lure-swing net with a shared trunk and two heads: even batches train the "
    "catch-height regression head (MSE), odd batches the stoop-kind classifier (cross-entropy); "
    "the task alternates every batch so the logged loss swings between two levels every step, "
    "which looks alarming but both tasks train normally; Adam, clipping at max-norm 1",
)
def h687_falconry_alternating_tasks(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
            self.reg_head = nn.Linear(32, 1)
            self.cls_head = nn.Linear(32, 10)

    gen = seeded(68711)
    model = _Model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for step in range(200):
        x, y = next(batches)
        h = model.trunk(x)
        if step % 2 == 0:
            target = x[:, 20:44].mean(1, keepdim=True) * 4.0  # catch height (in a few metres)
            loss = F.mse_loss(model.reg_head(h), target)
        else:
            ctx.targets(y)
            loss = F.cross_entropy(model.cls_head(h), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    reg, cls = ls[0::2], ls[1::2]
    swings = [abs(a - b) for a, b in zip(reg[-20:], cls[-20:], strict=True)]
    ctx.check("regression task loss fell", _median(reg[-10:]) < 0.5 * _median(reg[:5]))
    ctx.check("classification task loss fell", _median(cls[-10:]) < 0.7 * _median(cls[:5]))
    ctx.check("loss swings between two levels step to step", _median(swings) > 0.1)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="pole_vault_plant_angle_smoothed_gelu_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a pole-vault plant-phase GELU classifier on 8x8 box-plant maps with noisy inputs, "
    "label smoothing 0.1, Adamax with two param groups (head at half lr) and ReduceLROnPlateau; "
    "an ordinary healthy run",
)
def h687_pole_vault_smoothed_plateau(ctx: Context) -> None:
    gen = seeded(68712)
    model = _Net(64, 64, 10, nn.GELU)
    groups = [
        {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 2e-3},
        {"params": list(model.head.parameters()), "lr": 1e-3},
    ]
    opt = torch.optim.Adamax(groups)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _step in range(180):
        x, y = next(batches)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _train_step(ctx, model, opt, loss)
        sched.step(float(loss))
    ls = ctx.losses
    ctx.check("loss fell below half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="salt_pan_brine_crystal_warmup_cosine_huber_regressor",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a salt-pan brine crystal-yield SiLU Huber regressor, SGD momentum with linear warm-up "
    "then cosine decay, 2-micro-batch gradient accumulation and clipping at max-norm 1; an "
    "ordinary healthy run",
)
def h687_salt_pan_warmup_cosine_accum(ctx: Context) -> None:
    gen = seeded(68713)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=140)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[20])
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    for _step in range(160):
        total = 0.0
        for _micro in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        sched.step()
    ls = ctx.losses
    ctx.check("loss fell below half its start", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))
