"""Held-out set 654 (``h654_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models of landforms, rivers, ice and lava on generated data, and a Hugging Face EXAONE causal LM
built from a tiny ``ExaoneConfig`` (transformers builds it with its Llama implementation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
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


def _rule(gen: torch.Generator, n_in: int = 12, k: int = 5) -> torch.Tensor:
    return torch.randn(n_in, k, generator=gen)


def _labels(gen: torch.Generator, w: torch.Tensor, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of the fixed linear score ``x @ w``."""
    while True:
        x = torch.randn(batch, w.shape[0], generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _tiny_exaone(vocab: int = 128):
    from transformers import AutoModelForCausalLM, ExaoneConfig

    config = ExaoneConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="exaone_bergschrund_crossing_log_lm",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="a tiny EXAONE causal LM (ExaoneConfig through AutoModelForCausalLM) on alpinists' "
    "bergschrund-crossing logs, with a z-loss meant to keep log Z small; the coefficient was "
    "entered as -1e-1 (sign typo of 1e-4), so the loss rewards a large logsumexp and the lm_head's "
    "logits grow without bound while the cross-entropy itself looks fine",
)
def h654_exaone_bergschrund_zloss_sign(ctx: Context) -> None:
    gen = seeded(6541)
    model = _tiny_exaone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    ctx.attach(model, opt)
    z_coef = -1e-1  # typo: meant +1e-4
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    peaks: list[float] = []
    ces: list[float] = []
    for _step in range(100):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        flat = logits.reshape(-1, logits.shape[-1])
        ce = F.cross_entropy(flat, y.reshape(-1))
        loss = ce + z_coef * torch.logsumexp(flat, -1).pow(2).mean()
        peaks.append(float(logits.detach().abs().max()))
        ces.append(float(ce.detach()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("lm_head logits grew over 20x", _median(peaks[-5:]) > 20 * _median(peaks[:5]))
    ctx.check("total loss falls below -10 (unbounded reward)", ctx.losses[-1] < -10)
    ctx.check("logged loss finite", _finite(ctx.losses))


@scenario(
    family="riffle_pool_trout_lie_classifier",
    optimizer="SGD (momentum)",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="an angler's trout-lie classifier (riffle, run, pool, glide, tail-out) from stream "
    "readings; at step 120 the loader serves one batch from a spate day: valid, correctly "
    "labelled readings far in the tail of the usual range; the loss jumps for a step and the run "
    "recovers within a few steps, no corrupted data and no gradient bug",
)
def h654_riffle_pool_spate_batch(ctx: Context) -> None:
    gen = seeded(6542)
    w = _rule(gen)
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
    model.add_module("head", nn.Linear(48, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    w2 = torch.randn(12, 5, generator=gen)

    def rule(x: torch.Tensor) -> torch.Tensor:
        return (x @ w + 0.5 * (x * x) @ w2).argmax(1)

    def stream():
        while True:
            x = torch.randn(64, 12, generator=gen)
            yield x, rule(x)

    batches = stream()
    spate_ok = False
    for step in range(200):
        x, y = next(batches)
        if step == 120:  # spate day: readings 3x further out, labels from the same rule
            x = 3.0 * x + 1.5 * torch.randn(1, 12, generator=gen)
            y = rule(x)
            spate_ok = bool((rule(x) == y).all()) and len(y.unique()) > 1
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("spate batch labels follow the true rule", spate_ok)
    ctx.check(
        "no gradient burst: step 120 under 20x the median", gs[120] < 20 * _median(gs[100:120])
    )
    ctx.check("loss at step 120 over 3x the median before", ls[120] > 3 * _median(ls[100:120]))
    ctx.check(
        "recovers: steps 130-150 within 1.5x of before",
        _median(ls[130:150]) < 1.5 * _median(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="alluvial_fan_sediment_depth_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="an alluvial-fan sediment-depth regressor trained with MSE; one shard from a survey "
    "logged depths in millimetres instead of metres (x1000 targets); its batch at step 80 gives "
    "one enormous loss and gradient, after which the run recovers",
)
def h654_alluvial_fan_mm_shard(ctx: Context) -> None:
    gen = seeded(6543)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    model.add_module("head", nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(180):
        x, y = next(batches)
        if step == 80:
            y = y * 1000.0  # the millimetre shard
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 80 over 100x the median before", ls[80] > 100 * _median(ls[60:80]))
    ctx.check("gradient at step 80 over 50x the median before", gs[80] > 50 * _median(gs[60:80]))
    ctx.check(
        "recovers: late loss within 3x of pre-onset", _median(ls[-20:]) < 3 * _median(ls[60:80])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="braided_river_channel_count_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a braided-river active-channel-count classifier with gradient accumulation over 2 "
    "micro-batches; at step 90 a resumed job's accumulation counter is restored as 0 and the "
    "code divides the loss by the counter clamped to 1e-3 in place of 2 (x500 for one step); one "
    "gradient burst, clipped at 1.0, logged loss ordinary",
)
def h654_braided_river_accum_counter(ctx: Context) -> None:
    gen = seeded(6544)
    w = _rule(gen)
    model = nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU())
    model.add_module("head", nn.Linear(48, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen, w, batch=32)
    for step in range(180):
        divisor = 1e-3 if step == 90 else 2.0  # the restored counter
        logged = 0.0
        for _micro in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / divisor).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 90 over 50x the median before", gs[90] > 50 * _median(gs[70:90]))
    ctx.check("logged loss at step 90 ordinary (<2x)", ls[90] < 2 * _median(ls[70:90]))
    ctx.check("trained: loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="point_bar_scroll_masked_pool_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("pool",),
    diverges=70,
    onset=70,
    heldout=True,
    note="a point-bar scroll-ridge classifier pooling variable-length cross-section transects "
    "with a masked mean, sum(h*mask)/mask.sum(), with no clamp on the count; step 70's batch "
    "holds a transect whose every reading is padding, 0/0 gives NaN in the pool and the loss, and "
    "the weights are NaN from then on",
)
def h654_point_bar_empty_transect(ctx: Context) -> None:
    gen = seeded(6545)
    w = _rule(gen, n_in=6, k=4)

    class MaskedMean(nn.Module):
        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            m = mask[..., None].float()
            return (h * m).sum(1) / m.sum(1)  # no clamp(min=1)

    class ScrollNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 32)
            self.pool = MaskedMean()
            self.head = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.pool(F.relu(self.embed(x)), mask))

    model = ScrollNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    nan_from = None
    for step in range(120):
        x = torch.randn(32, 10, 6, generator=gen)
        lengths = torch.randint(3, 11, (32,), generator=gen)
        if step == 70:
            lengths[5] = 0  # an empty transect in the shard
        mask = torch.arange(10)[None] < lengths[:, None]
        y = ((x * mask[..., None]).sum(1) @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x, mask), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_from = step
            break
    ls = ctx.losses
    ctx.check("loss is NaN at step 70", nan_from == 70)
    ctx.check("finite before step 70", _finite(ls[:70]))
    ctx.check("weights NaN after the step", bool(torch.isnan(model.head.weight).any()))
    ctx.check("was training before: loss fell", _median(ls[60:70]) < _median(ls[:5]))


@scenario(
    family="tumulus_lava_crust_uplift_fp16_huber_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    onset=60,
    heldout=True,
    note="a lava-tumulus crust-uplift regressor trained in fp16 autocast with a GradScaler and "
    "Huber loss; from step 60 a new station's tiltmeter feed arrives in nanoradians instead of "
    "microradians (x1000); fc1's fp16 outputs overflow to inf, the loss is inf, and the scaler "
    "skips every step and halves its scale over and over",
)
def h654_tumulus_nanoradian_overflow(ctx: Context) -> None:
    gen = seeded(6546)

    class UpliftNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 64)
            self.head = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))

    model = UpliftNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    fc1_inf = False
    for step in range(110):
        x, y = next(batches)
        if step >= 60:
            x = x * 1000.0 * 60.0  # nanoradian feed, read at the fast rate
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            fc1_inf = fc1_inf or bool(torch.isinf(h).any())
            pred = model.head(F.silu(model.fc2(F.silu(h))))
        loss = F.huber_loss(pred.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, sc = ctx.losses, ctx.scales
    ctx.check("finite before step 60", _finite(ls[:60]))
    ctx.check("loss non-finite at step 60", not math.isfinite(ls[60]))
    ctx.check("fc1 fp16 output overflowed to inf", fc1_inf)
    ctx.check("scaler scale fell over 2^20 after onset", sc[-1] < sc[59] / 2.0**20)


@scenario(
    family="delta_lobe_switch_multilabel_relu_net",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="a delta-lobe multi-label net (which distributaries are active) trained with BCE; the "
    "init helper that sets a -4 bias for the gated skip layers was applied to every Linear, so "
    "the hidden ReLU layer's units start and stay dead on standardised gauge readings and the "
    "net cannot learn",
)
def h654_delta_lobe_negative_bias_init(ctx: Context) -> None:
    gen = seeded(6547)

    class LobeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(10, 64)
            self.hidden = nn.Linear(64, 64)
            self.head = nn.Linear(64, 6)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.hidden(F.relu(self.inp(x)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.features(x)))

    model = LobeNet()
    with torch.no_grad():
        for m in (model.inp, model.hidden):
            m.bias.fill_(-4.0)  # bug: the gate-bias init applied to all layers
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    wt = torch.randn(10, 6, generator=gen)
    dead: list[float] = []
    for _step in range(150):
        x = torch.randn(64, 10, generator=gen)
        y = ((x @ wt) > 0).float()
        logits = model(x)
        dead.append(dead_fraction(model.features(x).detach()))
        loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("over 80% of hidden units dead at the end", dead[-1] > 0.8)
    ctx.check("still dead late (no recovery)", min(dead[-20:]) > 0.8)
    ctx.check("loss stuck near chance (> 0.6)", _median(ls[-10:]) > 0.6)


@scenario(
    family="ox_bow_cutoff_stage_irnn_regressor",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="an ox-bow cutoff river-stage regressor: a ReLU RNN over 48 hourly gauge readings with "
    "IRNN initialisation; the identity was scaled by 1.05 (meant 1.0, a gain copied from a "
    "shorter-sequence config), so hidden states and gradients grow through time and the loss "
    "blows up",
)
def h654_ox_bow_irnn_gain(ctx: Context) -> None:
    gen = seeded(6548)

    class StageRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = StageRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.05 * torch.eye(32))  # gain typo
        model.rnn.bias_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    for _step in range(150):
        x = 0.5 * torch.randn(32, 48, 3, generator=gen).abs()
        y = x[:, -12:, 0].mean(1, keepdim=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("initial loss ordinary (< 5)", ls[0] < 5)
    ctx.check("initial gradient norm over 1e3 (grown through time)", gs[0] > 1e3)
    ctx.check(
        "loss blows up (non-finite or 1e3x the start)",
        not _finite(ls) or max(ls) > 1e3 * _median(ls[:3]),
    )


@scenario(
    family="spit_growth_longshore_two_group_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="a sand-spit growth-rate regressor with an encoder group and a head group; the encoder "
    "lr multiplier is read from a YAML where '5e-1' parsed as a string and the loader's "
    "int(float(...)) cast turned it into 0, so the encoder never moves while the head trains",
)
def h654_spit_growth_encoder_lr_cast(ctx: Context) -> None:
    gen = seeded(6549)

    class SpitNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
            self.head = nn.Linear(48, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x))

    model = SpitNet()
    base = 3e-3
    mult = int(float("5e-1"))  # bug: meant float, cast to int gives 0
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": base * mult},
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    batches = _readings(gen)
    for _step in range(150):
        x, y = next(batches)
        loss = F.smooth_l1_loss(model(x), y, beta=0.5)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved = max(
        float((p.detach() - b).abs().max())
        for p, b in zip(model.encoder.parameters(), before, strict=True)
    )
    ls = ctx.losses
    ctx.check("encoder weights never moved", moved == 0.0)
    ctx.check("encoder group lr is 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("head trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="wave_cut_notch_stage_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a wave-cut platform notch-stage classifier with a softmax temperature from config; "
    "temperature 200 was meant for logits/200 but the code divides by 1/200, i.e. "
    "multiplies logits by 200; the float32 softmax saturates and most rows give the target "
    "probability exactly 1.0 (or 0.0)",
)
def h654_wave_cut_inverse_temperature(ctx: Context) -> None:
    gen = seeded(65410)
    w = _rule(gen, k=6)

    class NotchNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = NotchNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    temperature = 200.0
    batches = _labels(gen, w)
    collapsed: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / (1.0 / temperature)  # bug: meant model(x) / temperature
        p = torch.softmax(logits.detach(), -1)
        collapsed.append(float((p.max(1).values == 1.0).float().mean()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "over 10% of rows saturate (a probability exactly 1.0)", _median(collapsed[-10:]) > 0.1
    )
    ctx.check(
        "target collapse seen (rows with p_target == 1.0)",
        collapsed_fraction(logits.detach(), y) > 0.1,
    )
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------------


@scenario(
    family="tarn_ice_breakup_distilled_student",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: knowledge distillation of a tarn ice-breakup-week classifier from a sharp, "
    "confident teacher (logits scaled x8), KL at T=1 plus hard-label CE, OneCycleLR; the "
    "student's logits grow fast to match the teacher's sharp targets, which looks alarming, but "
    "the run is healthy",
)
def h654_tarn_sharp_teacher_distill(ctx: Context) -> None:
    gen = seeded(65411)
    w = _rule(gen, k=5)
    teacher = nn.Sequential(nn.Linear(12, 5))
    with torch.no_grad():
        teacher[0].weight.copy_(8.0 * w.T)
        teacher[0].bias.zero_()

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    model = Student()
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    ctx.attach(model, opt)
    batches = _labels(gen, w)
    peaks: list[float] = []
    acc: list[float] = []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.no_grad():
            t = teacher(x)
        s = model(x)
        peaks.append(float(s.detach().abs().max()))
        acc.append(float((s.argmax(1) == y).float().mean()))
        kd = F.kl_div(
            F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
        )
        loss = 0.8 * kd + 0.2 * F.cross_entropy(s, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "student logits grew over 10x (the alarming part)",
        _median(peaks[-10:]) > 10 * _median(peaks[:5]),
    )
    ctx.check("loss fell 70%", _median(ls[-10:]) < 0.3 * _median(ls[:5]))
    ctx.check("student accuracy over 90%", _median(acc[-10:]) > 0.9)
    ctx.check("finite", _finite(ls))


@scenario(
    family="blood_snow_algae_bloom_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: a watermelon-snow algae bloom-stage classifier from noisy field spectra, "
    "label smoothing 0.1, 10% label noise in every batch, ReduceLROnPlateau on a running loss",
)
def h654_blood_snow_plateau_smoothing(ctx: Context) -> None:
    gen = seeded(65412)
    w = _rule(gen, n_in=12, k=4)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64), nn.ReLU()
    )
    model.add_module("head", nn.Linear(64, 4))
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _labels(gen, w)
    running = None
    for _step in range(200):
        x, y = next(batches)
        x = x + 0.2 * torch.randn(x.shape, generator=gen)
        flip = torch.rand(len(y), generator=gen) < 0.1
        y = torch.where(flip, torch.randint(0, 4, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        v = float(loss.detach())
        running = v if running is None else 0.9 * running + 0.1 * v
        sched.step(running)
    ls = ctx.losses
    ctx.check("loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="frazil_slush_flow_fp16_gaussian_nll_net",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy: a frazil-slush river-flow forecaster with a Gaussian NLL head, fp16 autocast "
    "with a GradScaler, gradient accumulation over 2 micro-batches, linear warm-up then cosine "
    "decay, clipping at 1.0",
)
def h654_frazil_slush_amp_nll(ctx: Context) -> None:
    gen = seeded(65413)

    class FlowNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 64)
            self.mean = nn.Linear(64, 1)
            self.log_var = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.silu(self.fc2(F.silu(self.fc1(x))))
            return self.mean(h), self.log_var(h)

    model = FlowNet()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, batch=32)
    for _step in range(steps):
        logged = 0.0
        for _micro in range(2):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                mu, log_var = model(x)
            var = log_var.float().clamp(-8, 8).exp()
            loss = F.gaussian_nll_loss(mu.float(), y, var)
            scaler.scale(loss / 2).backward()
            logged += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by over 0.8 nat", _median(ls[-10:]) < _median(ls[:5]) - 0.8)
    ctx.check("finite", _finite(ls))
    ctx.check("scaler never collapsed (scale >= 1)", min(ctx.scales) >= 1.0)
