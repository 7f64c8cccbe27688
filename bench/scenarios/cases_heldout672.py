"""Held-out set 672 (``h672_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Qwen2.5-Omni talker built from a tiny config."""

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


def _gnorm(params) -> float:
    gs = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(gs).norm()) if gs else 0.0


def _tiny_qwen25_omni_talker(vocab: int = 128):
    from transformers import Qwen2_5OmniTalkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniTalkerForConditionalGeneration,
    )

    config = Qwen2_5OmniTalkerConfig(
        vocab_size=vocab,
        embedding_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        use_cache=False,
        tts_codec_start_token_id=3,
        tts_codec_end_token_id=4,
        tts_codec_pad_token_id=5,
        tts_codec_mask_token_id=6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    return Qwen2_5OmniTalkerForConditionalGeneration(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sheepdog_shed_gate_outrun_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a sheepdog-trial shed-gate outrun-time tanh MLP regressor (MSE, plain SGD) under a "
    "OneCycleLR whose max_lr was typed 4.0 for 0.04: as the one-cycle warm-up raises the lr, "
    "lr x the top Hessian eigenvalue passes 2 and the loss blows up",
)
def h672_sheepdog_outrun_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6721)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4.0, total_steps=200)  # meant 0.04
    ctx.attach(model, opt)
    data = _readings(gen)
    probe_x, probe_y = next(data)
    params = list(model.parameters())

    def top_eig() -> float:
        loss = F.mse_loss(model(probe_x), probe_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(15):
            n = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    crossed = False
    for step in range(200):
        x, y = next(data)
        if step % 5 == 0 and not crossed:
            crossed = opt.param_groups[0]["lr"] * top_eig() > 2.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    ctx.check("lr x top Hessian eigenvalue passed 2", crossed)
    ctx.check("loss fell first", min(ls) < 0.5 * _median(ls[:5]))
    ctx.check(
        "loss blew up over 100x its minimum",
        not _finite(ls[-1:]) or max(ls) > 100 * min(ls),
    )


@scenario(
    family="kiln_pyrometric_cone_bend_gelu_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="a kiln pyrometric-cone bend-angle GELU regressor whose first module standardizes the "
    "thermocouple channels over the batch as (x - mean) / std without an eps; at step 70 one "
    "thermocouple is unplugged and reads exactly 0.0 across the whole batch, so that channel "
    "is 0/0 = NaN and the loss is NaN at step 70",
)
def h672_kiln_cone_batch_standardize_no_eps(ctx: Context) -> None:
    gen = seeded(6722)

    class BatchStandardize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(0)) / x.std(0)  # missing: + eps

    class ConeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = BatchStandardize()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.gelu(self.fc1(self.norm(x))))

    model = ConeNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    nan_at = None
    for step in range(150):
        x, y = next(data)
        x = 40.0 * x + 900.0  # degrees C around 900
        if step == 70:
            x[:, 3] = 0.0  # the unplugged thermocouple
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            nan_at = step
            break
    ls = ctx.losses
    ctx.check("loss is NaN at step 70", nan_at == 70 and math.isnan(ls[-1]))
    ctx.check("finite and falling before", _finite(ls[:70]) and _median(ls[60:70]) < ls[0])


@scenario(
    family="hf_qwen2_5_omni_talker_change_ringing_method_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.0", "model.layers.1"),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Qwen2.5-Omni talker (model type qwen2_5_omni_talker) trained as a "
    "byte LM on change-ringing method text; the decoder layers' AdamW param group takes its lr "
    "as base_lr * cfg.get('layer_lr_scale', 0.0), the key was spelt 'layer_lr_sacle' in the "
    "YAML, so the decoder layers train at lr 0 while embeddings, projection, norm and codec "
    "head train",
)
def h672_omni_talker_ringing_layer_lr_key_typo(ctx: Context) -> None:
    gen = seeded(6723)
    model = _tiny_qwen25_omni_talker()
    cfg = {"base_lr": 3e-3, "layer_lr_sacle": 1.0}  # typo: read back as 0.0
    layers = [p for n, p in model.named_parameters() if n.startswith("model.layers.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.layers.")]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["base_lr"]},
            {"params": layers, "lr": cfg["base_lr"] * cfg.get("layer_lr_scale", 0.0)},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in layers]
    data = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(data)
        reply = torch.zeros(x.shape[0], x.shape[1], 32)
        logits = model(input_ids=x, thinker_reply_part=reply).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(layers, before, strict=True))
    ctx.check("decoder layer weights never moved", moved == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="didgeridoo_drone_overtone_elman_rnn",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a didgeridoo drone overtone Elman RNN (ReLU cell, 24 frames) predicting the overtone "
    "level; the recurrent weights were initialised orthogonal with gain 1.9 (a tanh-style gain "
    "5/3-ish constant reused for a ReLU cell whose recurrence should have gain <= 1): the "
    "gradient at the first frame is orders of magnitude above the last's and the run blows up",
)
def h672_didgeridoo_rnn_orthogonal_gain(ctx: Context) -> None:
    gen = seeded(6724)

    class DroneRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    def batches():
        while True:
            x = torch.randn(32, 24, 4, generator=gen)
            y = x[:, -5:, 0].mean(1, keepdim=True)
            yield x, y

    model = DroneRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = batches()
    ratios: list[float] = []
    for _step in range(150):
        x, y = next(data)
        x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g = x.grad
        if math.isfinite(float(loss)):
            ratios.append(float(g[:, 0].norm() / (g[:, -1].norm() + 1e-30)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e8:
            break
    ls = ctx.losses
    ctx.check("input gradient at frame 0 over 50x the last frame's", ratios[0] > 50)
    ctx.check("loss blew up over 1000x", not _finite(ls[-1:]) or max(ls) > 1000 * min(ls))


@scenario(
    family="maple_sap_run_flow_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a maple sap-run flow SiLU regressor (Huber, RMSprop, clip_grad_norm_ 1.0) on tap-line "
    "readings in metres; the shard at step 90 came from a sugar bush that logs millimetres, so "
    "its inputs are 1000x: the loss at that batch is over 50x, its gradient over 50x, the "
    "clipped run recovers",
)
def h672_maple_sap_millimetre_shard(ctx: Context) -> None:
    gen = seeded(6725)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    for step in range(200):
        x, y = next(data)
        if step == 90:
            x = x * 1000.0  # the millimetre shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at the shard over 50x the median before", ls[90] > 50 * _median(ls[80:90]))
    ctx.check("gradient at the shard over 50x", norms[90] > 50 * _median(norms[80:90]))
    ctx.check("recovers: loss back under 2x pre-shard", _median(ls[-10:]) < 2 * _median(ls[80:90]))


@scenario(
    family="curling_stone_sweep_curl_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="a curling-stone sweep curl-distance GELU regressor (MSE, Adam with beta2 0.9999); at "
    "step 60 an 'end of sheet' helper rescales the loss by the total stones thrown so far "
    "(loss * 1e4) before backward(): one gradient over 1000x fills Adam's second moment, the "
    "updates afterwards are over 20x smaller and the loss stalls",
)
def h672_curling_sweep_loss_times_stones(ctx: Context) -> None:
    gen = seeded(6726)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    moves: list[float] = []
    for step in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        total = loss * 1e4 if step == 60 else loss
        total.backward()
        norms.append(_gnorm(model.parameters()))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient at step 60 over 1000x", norms[60] > 1000 * _median(norms[50:60]))
    ctx.check("updates after over 20x smaller", _median(moves[70:]) < _median(moves[40:60]) / 20)
    ctx.check(
        "loss stalls: under 10% better over the last 130 steps",
        _median(ls[-10:]) > 0.9 * _median(ls[61:71]),
    )


@scenario(
    family="sheep_dag_crutching_wool_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="a sheep crutching dag-wool weight ReLU regressor (MSE, plain SGD, clip_grad_norm_ 5.0) "
    "with a loss-weight schedule {0: 1.0, 100: 50.0, 101: 1.0} where the 100 entry was typed "
    "50.0 for 0.5: one gradient over 30x at step 100, clipped, the run carries on",
)
def h672_crutching_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(6727)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = {0: 1.0, 100: 50.0, 101: 1.0}  # 100: meant 0.5
    ctx.attach(model, opt)
    data = _readings(gen)
    norms: list[float] = []
    w = 1.0
    for step in range(200):
        w = weights.get(step, w)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        (w * loss).backward()
        norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient at step 100 over 30x", norms[100] > 30 * _median(norms[90:100]))
    ctx.check("loss finite and still trains", _finite(ls) and _median(ls[-10:]) < _median(ls[:5]))


@scenario(
    family="morris_dance_stick_pattern_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a Morris-dance stick-pattern classifier (cross-entropy, Adagrad) whose logits are "
    "divided by a temperature read from a config in hundredths (0.01 for 1.0): the softmax "
    "saturates and over 10% of rows give the target probability exactly 1.0 in float32",
)
def h672_morris_stick_temperature_hundredths(ctx: Context) -> None:
    gen = seeded(6728)

    class StickNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 32)
            self.head = nn.Linear(32, 5)
            self.temperature = 0.01  # meant 1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc(x))) / self.temperature

    model = StickNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
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
    ctx.check("over 10% of rows at p = 1.0", max(fracs[-20:]) > 0.10)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="hurling_sliotar_strike_zone_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    onset=0,
    heldout=True,
    note="a hurling sliotar strike-zone ReLU classifier (cross-entropy, NAdam); fc2's bias was "
    "initialised with a sparse-activation recipe's -6.0 meant for a wider, unnormalised layer: "
    "nearly all fc2 ReLUs never fire, get no gradient and stay dead; the loss stays near "
    "chance",
)
def h672_hurling_fc2_bias_init(ctx: Context) -> None:
    gen = seeded(6729)

    class StrikeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 5)
            nn.init.constant_(self.fc2.bias, -6.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.h2 = F.relu(self.fc2(F.relu(self.fc1(x))))
            return self.head(self.h2)

    model = StrikeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _labels(gen)
    deads: list[float] = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        deads.append(dead_fraction(model.h2.detach()))
    ls = ctx.losses
    ctx.check("over 90% of fc2 units dead at the end", _median(deads[-10:]) > 0.9)
    ctx.check("loss stays near chance (> 0.8 ln 5)", _median(ls[-10:]) > 0.8 * math.log(5))


@scenario(
    family="mangrove_propagule_drift_tanh_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a mangrove propagule drift-distance tanh regressor (MSE, RAdam) whose target scaler "
    "updates its running std with 'std *= 1 + momentum' on every batch (a sign slip for an "
    "EMA): the de-scaled targets drift upward every step and the loss climbs slowly over 3x",
)
def h672_mangrove_target_scaler_drift(ctx: Context) -> None:
    gen = seeded(67210)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    scale = 1.0
    for _step in range(250):
        x, y = next(data)
        scale *= 1.0 + 0.01  # bug: meant an EMA towards the batch std
        loss = F.mse_loss(model(x), y * scale)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss climbs over 3x its minimum", _median(ls[-10:]) > 3 * min(ls))
    ctx.check("no blow-up: finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="ice_fishing_tipup_strike_focal_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an ice-fishing tip-up strike classifier on a class-imbalanced set (about 88% 'no "
    "strike'), trained with a focal loss of gamma 5 (Adam, lr 3e-3): once the easy majority is "
    "fitted its gradients are tiny, then burst on the few hard examples in a batch; "
    "alarming to look at, an ordinary healthy focal-loss run",
)
def h672_ice_fishing_focal_gamma5(ctx: Context) -> None:
    gen = seeded(67211)
    w = torch.randn(10, generator=gen)

    def batches():
        while True:
            x = torch.randn(128, 10, generator=gen)
            s = x @ w
            s = s + 0.3 * w.norm() * torch.randn(128, generator=gen)  # noisy strikes
            y = (s > 1.2 * w.norm()).long() + (s > 1.7 * w.norm()).long()  # 0 common, 2 rare
            yield x, y

    def focal(logits: torch.Tensor, y: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
        logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
        return (-((1 - logp.exp()) ** gamma) * logp).mean()

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = batches()
    norms: list[float] = []
    ys = []
    for _step in range(200):
        x, y = next(data)
        ys.append(y)
        ctx.targets(y)
        loss = focal(model(x), y)
        loss.backward()
        norms.append(_gnorm(model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    yy = torch.cat(ys)
    ctx.check("imbalanced: over 80% class 0", float((yy == 0).float().mean()) > 0.8)
    ctx.check(
        "loss fell over 5x and finite", _finite(ls) and _median(ls[-10:]) < _median(ls[:5]) / 5
    )


@scenario(
    family="geyser_eruption_interval_gru_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a geyser eruption-interval GRU classifier over 20 pressure readings (AdamW, linear "
    "warm-up + cosine LambdaLR, clip_grad_norm_ 1.0, label smoothing 0.1): an ordinary run",
)
def h672_geyser_gru_warmup_cosine(ctx: Context) -> None:
    gen = seeded(67212)

    class GeyserGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 32, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    def batches():
        while True:
            x = torch.randn(32, 20, 3, generator=gen)
            s = x[:, :, 0].cumsum(1)[:, -1] / math.sqrt(20)
            y = torch.bucketize(s, torch.tensor([-0.7, 0.0, 0.7]))
            yield x, y

    model = GeyserGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    ctx.attach(model, opt)
    data = batches()
    for _step in range(total):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30% and finite", _finite(ls) and _median(ls[-10:]) < 0.7 * _median(ls[:5]))


@scenario(
    family="blacksmith_quench_hardness_fp16_huber_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a blacksmith quench-hardness SiLU regressor under fp16 autocast with a GradScaler "
    "(Huber, SGD momentum, accumulation over 2 micro-batches, clip_grad_norm_ 1.0 after "
    "unscale_, ReduceLROnPlateau): an ordinary mixed-precision run",
)
def h672_quench_fp16_accum_plateau(ctx: Context) -> None:
    gen = seeded(67213)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, batch=32)
    for _step in range(150):
        shown = 0.0
        for _micro in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y, delta=0.5)
            scaler.scale(loss / 2).backward()
            shown += float(loss) / 2
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.step(torch.tensor(shown))
        sched.step(shown)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 50% and finite", _finite(ls) and _median(ls[-10:]) < 0.5 * _median(ls[:5]))
