"""Held-out set 123 (``h123_``): five Hugging Face text towers from tiny configs (HunYuan-VL,
Qwen3-VL-MoE, GLM-OCR, LightOnOCR, FastVLM) with a small LM head, and hand-written models of
fields not covered yet (mushroom yield, lichen growth, kelp-forest density, seismograph phase
picking, parking occupancy, ferry delays, honey moisture, typhoon tracks, volcano tremor, heron
calls, tram ridership). 12 faults over 12 causes and 4 healthy controls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded

# -- shared pieces ---------------------------------------------------------------------------------

HF_KW = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    head_dim=16,
)


class TowerLM(nn.Module):
    """A Hugging Face text tower (no LM head of its own) with an untied LM head."""

    def __init__(self, tower: nn.Module, dim: int = 32, vocab: int = 64) -> None:
        super().__init__()
        self.tower = tower
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.tower(input_ids=idx).last_hidden_state)


def _mrope(section: list[int]) -> dict:
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}


def hf_tower(kind: str) -> TowerLM:
    import transformers as t

    if kind == "hunyuan_vl":
        cfg = t.HunYuanVLTextConfig(**HF_KW, rope_parameters=_mrope([2, 2, 2, 2]))
        tower = t.HunYuanVLTextModel(cfg)
    elif kind == "glm_ocr":
        cfg = t.GlmOcrTextConfig(**HF_KW, rope_parameters=_mrope([2, 3, 3]))
        tower = t.GlmOcrTextModel(cfg)
    elif kind == "qwen3_vl_moe":
        cfg = t.Qwen3VLMoeTextConfig(
            **HF_KW, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
        )
        tower = t.Qwen3VLMoeTextModel(cfg)
    elif kind == "lighton_ocr":
        text = t.LightOnOcrConfig().text_config
        tower = t.AutoModel.from_config(type(text)(**HF_KW))
    elif kind == "fastvlm":
        text = t.FastVlmConfig().text_config
        kw = {k: v for k, v in HF_KW.items() if k != "head_dim"}
        tower = t.AutoModel.from_config(type(text)(**kw))
    else:
        raise ValueError(kind)
    return TowerLM(tower)


def token_batches(gen: torch.Generator, batch: int = 8, length: int = 16, vocab: int = 64):
    """A learnable token stream: a noisy arithmetic progression (next = prev + stride mod vocab)."""
    while True:
        start = torch.randint(0, vocab, (batch, 1), generator=gen)
        stride = torch.randint(1, 4, (batch, 1), generator=gen)
        seq = (start + stride * torch.arange(length + 1)) % vocab
        noise = torch.rand(batch, length + 1, generator=gen) < 0.1
        seq = torch.where(noise, torch.randint(0, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def lm_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def tabular(gen: torch.Generator, d: int, batch: int, noise: float = 0.1):
    """Endless (x, y) of a fixed smooth field relation y = f(x) with noise."""
    w1 = torch.randn(d, 16, generator=gen) / math.sqrt(d)
    w2 = torch.randn(16, 1, generator=gen) / 4
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + 0.3 * x[:, :1] + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def classes(gen: torch.Generator, d: int, k: int, batch: int, spread: float = 1.0):
    """Endless (x, y): k Gaussian clusters in d dimensions (sensor features of k classes)."""
    centres = torch.randn(k, d, generator=gen) * spread
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield centres[y] + torch.randn(batch, d, generator=gen), y


def mlp(d: int, h: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))


def finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def lm_loop(ctx, model, opt, steps, gen, before=None, sched=None):
    batches = token_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if before is not None:
            before(step)
        loss = lm_ce(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()


# -- Hugging Face text towers ----------------------------------------------------------------------


@scenario(
    "hf_glm_ocr_text_tower",
    "adamw",
    "attention_logit_growth",
    where=("tower.layers.0.self_attn", "tower.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="GLM-OCR text tower; q/k projections put in a param group with 50x the lr and no "
    "weight decay (a 'fast attention' group typo): q.k logits grow without bound",
    onset=0,
)
def h123_glm_ocr_qk_lr_group(ctx: Context) -> None:
    gen = seeded(12301)
    model = hf_tower("glm_ocr")
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 0.05, "weight_decay": 0.0}, {"params": rest, "lr": 1e-3}]
    )
    attn = model.tower.layers[0].self_attn

    def logit_scale() -> float:
        x = model.tower.embed_tokens(torch.arange(16)[None])
        x = model.tower.layers[0].input_layernorm(x)
        q, k = attn.q_proj(x), attn.k_proj(x)
        return float((q @ k.transpose(1, 2)).abs().max() / 4.0)

    start = logit_scale()
    lm_loop(ctx, model, opt, 120, gen)
    end = logit_scale()
    ctx.check("attention q.k logits grew more than 20x", end > 20 * start)
    ctx.check("max attention logit above 50", end > 50)


@scenario(
    "hf_lighton_ocr_text_tower",
    "nadam",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="LightOnOCR text tower with the LM head in its own group at lr 1.0 (head lr "
    "multiplier bug); the unnormalised head's logits run away",
    onset=0,
)
def h123_lighton_ocr_head_lr(ctx: Context) -> None:
    gen = seeded(12302)
    model = hf_tower("lighton_ocr")
    head = list(model.lm_head.parameters())
    rest = list(model.tower.parameters())
    opt = torch.optim.NAdam([{"params": head, "lr": 1.0}, {"params": rest, "lr": 1e-3}])
    probe = next(token_batches(torch.Generator().manual_seed(5)))[0]
    with torch.no_grad():
        start = float(model(probe).abs().max())
    lm_loop(ctx, model, opt, 120, gen)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ctx.check("output logits grew more than 15x", end > 15 * start)
    ctx.check("max output logit above 30", end > 30)


@scenario(
    "hf_fastvlm_text_tower",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="FastVLM (Qwen2) text tower, SGD momentum with a warmup that ramps the lr past "
    "2/sharpness (target lr 100x too high): the loss blows up after the ramp",
    onset=40,
)
def h123_fastvlm_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(12303)
    model = hf_tower("fastvlm")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def before(step: int) -> None:
        lr = 0.05 * math.exp(min(step, 80) / 80 * math.log(200.0))
        for g in opt.param_groups:
            g["lr"] = lr

    lm_loop(ctx, model, opt, 110, gen, before=before)
    early = min(ctx.losses[:40])
    late = [v for v in ctx.losses[60:]]
    ctx.check("loss fell during the low-lr part", early < ctx.losses[0])
    ctx.check(
        "loss blew up once the lr passed the limit",
        (not finite(late)) or max(late) > 3 * early,
    )


@scenario(
    "hf_hunyuan_vl_text_tower",
    "radam",
    "healthy",
    heldout=True,
    note="HunYuan-VL text tower, RAdam with linear warmup then cosine decay; normal run",
)
def h123_hunyuan_vl_healthy(ctx: Context) -> None:
    gen = seeded(12304)
    model = hf_tower("hunyuan_vl")
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 120
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    lm_loop(ctx, model, opt, steps, gen, sched=sched)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("loss fell", mean(ctx.losses[-15:]) < 0.8 * mean(ctx.losses[:10]))


@scenario(
    "hf_qwen3_vl_moe_text_tower",
    "adamax",
    "healthy",
    heldout=True,
    note="Qwen3-VL-MoE text tower (4 experts, top-2), Adamax with step decay; normal run",
)
def h123_qwen3_vl_moe_healthy(ctx: Context) -> None:
    gen = seeded(12305)
    model = hf_tower("qwen3_vl_moe")
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    lm_loop(ctx, model, opt, 120, gen, sched=sched)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("loss fell", mean(ctx.losses[-15:]) < 0.8 * mean(ctx.losses[:10]))


# -- hand-written models ---------------------------------------------------------------------------


def reg_loop(ctx, model, opt, batches, steps, alter=None, after=None, before=None, loss_fn=None):
    loss_fn = loss_fn or F.mse_loss
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if after is not None:
            after(step)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "mushroom_yield_regressor",
    "sgd",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one harvest batch logged in grams instead of kilograms (targets x1000) at step 90",
    onset=90,
)
def h123_mushroom_grams_batch(ctx: Context) -> None:
    gen = seeded(12306)
    model = mlp(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 90 else (x, y)

    reg_loop(ctx, model, opt, tabular(gen, 8, 32), 160, alter=alter)
    before = sorted(ctx.losses[70:90])[10]
    ctx.check("the grams batch's loss is 1000x the usual", ctx.losses[90] > 1000 * before)
    ctx.check("finite", finite(ctx.losses))


class PhasePicker(nn.Module):
    """A vanilla ReLU RNN over seismograph samples, picking the P-phase arrival class."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def seismo_batches(gen: torch.Generator, batch: int = 16, length: int = 60):
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = 0.3 * torch.randn(batch, length, 3, generator=gen)
        onset = 10 + 12 * y
        t = torch.arange(length)[None]
        burst = ((t >= onset[:, None]) & (t < onset[:, None] + 6)).float()
        x[:, :, 0] += 2.0 * burst
        yield x, y


@scenario(
    "seismograph_phase_picker",
    "sgd_nesterov",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN whose recurrent matrix is initialised with spectral radius 1.25 (identity "
    "init 'IRNN' scaled up) on 60-sample traces, no gradient clipping",
    onset=0,
)
def h123_seismo_irnn_explode(ctx: Context) -> None:
    gen = seeded(12307)
    model = PhasePicker()
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.25 * torch.eye(32))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = seismo_batches(gen)
    for _ in range(60):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm above 1e3 (exploded)", max(g) > 1e3 or not finite(ctx.grad_norms))


class MoistureNet(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.head = nn.Linear(32, 5)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) / self.temperature


@scenario(
    "honey_moisture_classifier",
    "adagrad",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="moisture-grade classifier whose logits are divided by a temperature of 0.01 "
    "(set for a sharpening experiment, left in): the float32 softmax saturates to exactly 1",
    onset=0,
)
def h123_honey_cold_softmax(ctx: Context) -> None:
    gen = seeded(12308)
    model = MoistureNet(0.01)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    batches = classes(gen, 6, 5, 64, spread=2.0)
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows softmax to exactly 1.0", frac > 0.5)


@scenario(
    "lichen_growth_model",
    "adam",
    "adam_second_moment_poisoned",
    where=("0", "2", "4"),
    diverges=None,
    heldout=True,
    note="Adam (beta2 0.9999); at step 60 a gradient-accumulation bug divides the loss by "
    "1e-6 instead of the step count: one giant gradient poisons v, updates freeze",
    onset=60,
)
def h123_lichen_poisoned_v(ctx: Context) -> None:
    gen = seeded(12309)
    model = mlp(5, 32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    batches = tabular(gen, 5, 32, noise=0.05)
    ctx.attach(model, opt)
    v_before = 0.0
    flat = []
    for step in range(200):
        if step in (0, 60, 100):
            flat.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        total = loss / 1e-6 if step == 60 else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step == 59:
            v_before = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    v_after = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
    ctx.check("second moment grew by more than 1e8", v_after > 1e8 * v_before)
    ctx.check("finite", finite(ctx.losses))
    w_end = torch.cat([p.detach().flatten() for p in model.parameters()])
    ctx.check(
        "updates froze after the poisoning",
        float((w_end - flat[2]).norm()) < 0.02 * float((flat[1] - flat[0]).norm()),
    )


@scenario(
    "parking_occupancy_forecaster",
    "asgd",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="weight 'decay' applied with the wrong sign after each step (w *= 1 + 0.03): the "
    "weights inflate slowly and the forecast error climbs",
    onset=0,
)
def h123_parking_wd_sign(ctx: Context) -> None:
    gen = seeded(12310)
    model = mlp(10, 32, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)

    def after(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.03)

    reg_loop(ctx, model, opt, tabular(gen, 10, 32), 200, after=after)
    best = min(v for v in ctx.losses if math.isfinite(v))
    tail = ctx.losses[-10:]
    ctx.check("loss climbed far above its best", not finite(tail) or min(tail) > 10 * best)
    ctx.check(
        "the climb is slow (no single jump)",
        all(b < 20 * a for a, b in zip(ctx.losses[:60], ctx.losses[1:61], strict=False)),
    )


class FerryNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(7, 32)
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(F.relu(self.encoder(x)))))


@scenario(
    "ferry_delay_regressor",
    "adadelta",
    "gradient_spike",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="a gradient-rescale hook on the encoder (meant for gradient accumulation) fires with "
    "the wrong factor on step 80: one 1e4x gradient spike in the encoder, then recovery",
    onset=80,
)
def h123_ferry_encoder_spike(ctx: Context) -> None:
    gen = seeded(12311)
    model = FerryNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    state = {"step": 0}
    for p in model.encoder.parameters():
        p.register_hook(lambda g: g * 1e4 if state["step"] == 80 else g)

    def before(step: int) -> None:
        state["step"] = step

    reg_loop(ctx, model, opt, tabular(gen, 7, 32), 150, before=before)
    median = sorted(ctx.grad_norms[40:80])[20]
    ctx.check("gradient norm spiked 1000x at step 80", ctx.grad_norms[80] > 1000 * median)
    ctx.check(
        "finite and recovered",
        finite(ctx.losses) and mean(ctx.losses[-20:]) < 2 * mean(ctx.losses[60:80]),
    )


class BatchStandardise(nn.Module):
    """Per-batch feature standardisation without an epsilon (x - mean) / std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0)


class TrackNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = BatchStandardise()
        self.net = nn.Sequential(nn.Linear(9, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


@scenario(
    "typhoon_track_regressor",
    "rprop",
    "nonfinite",
    where=("norm",),
    diverges=70,
    heldout=True,
    note="at step 70 a batch whose pressure sensor is offline (constant 0): the eps-free "
    "batch standardisation divides 0 by 0 and the loss turns NaN",
    onset=70,
)
def h123_typhoon_zero_std(ctx: Context) -> None:
    gen = seeded(12312)
    model = TrackNet()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    base = tabular(gen, 9, 64)

    def batches():
        while True:
            x, y = next(base)
            yield x, torch.cat([y, 0.5 * y + x[:, 1:2]], 1)

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:, 3] = 0.0
        return x, y

    reg_loop(ctx, model, opt, batches(), 90, alter=alter)
    ctx.check("finite before the offline sensor", finite(ctx.losses[:70]))
    ctx.check("loss nonfinite from step 70", not math.isfinite(ctx.losses[70]))


@scenario(
    "volcano_tremor_classifier",
    "sgd",
    "loss_of_plasticity",
    where=("net.0", "net.1"),
    diverges=None,
    heldout=True,
    note="a restart of the lr schedule at step 80 jumps the lr to 3.0 for five steps: most ReLU "
    "units of the first layer die and the classifier stops learning",
    onset=80,
)
def h123_volcano_dead_relu(ctx: Context) -> None:
    gen = seeded(12313)

    class Tremor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            return self.net(x)

    model = Tremor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = ((x.abs(), y) for x, y in classes(gen, 12, 4, 64))  # band energies, >= 0
    probe = next(classes(torch.Generator().manual_seed(12313), 12, 4, 256))[0].abs()

    def dead() -> float:
        with torch.no_grad():
            return dead_fraction(model.net[1](model.net[0](probe)))

    ctx.attach(model, opt)
    d_before = 0.0
    for step in range(160):
        if step == 80:
            d_before = dead()
        for g in opt.param_groups:
            g["lr"] = 3.0 if 80 <= step < 85 else 0.05
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d_after = dead()
    ctx.check("few dead units before", d_before < 0.2)
    ctx.check("most units dead after", d_after > 0.5)


class HeronNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x[:, None])).mean(-1))


def heron_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    t = torch.arange(length)
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        x = 0.5 * torch.randn(batch, length, generator=gen)
        x += y[:, None] * torch.sin(t * 0.8)[None] * 1.5
        yield x, y


@scenario(
    "heron_call_detector",
    "adamw",
    "update_ratio_out_of_range",
    where=("conv",),
    diverges=None,
    heldout=True,
    note="the conv front end's param group got lr 1.0 instead of 1e-3 (a units typo): each "
    "AdamW step moves the conv weights by about their own size",
    onset=0,
)
def h123_heron_conv_lr_typo(ctx: Context) -> None:
    gen = seeded(12314)
    model = HeronNet()
    opt = torch.optim.AdamW(
        [{"params": model.conv.parameters(), "lr": 1.0}, {"params": model.head.parameters()}],
        lr=1e-3,
    )
    batches = heron_batches(gen)
    ctx.attach(model, opt)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        ctx.targets(y)
        w = model.conv.weight.detach().clone()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ratios.append(float((model.conv.weight - w).norm() / w.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "conv update/weight ratio above 0.1 over the first steps (typical 1e-3)",
        sorted(ratios[:5])[2] > 0.1,
    )


@scenario(
    "kelp_forest_density_estimator",
    "rmsprop",
    "healthy",
    heldout=True,
    note="kelp-density regressor from sonar/temperature features, RMSprop with cosine decay "
    "and noisy targets; normal run",
)
def h123_kelp_healthy(ctx: Context) -> None:
    gen = seeded(12315)
    model = mlp(9, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180)
    reg_loop(ctx, model, opt, tabular(gen, 9, 32, noise=0.3), 180, after=lambda s: sched.step())
    ctx.check("finite", finite(ctx.losses))
    ctx.check("loss fell", mean(ctx.losses[-20:]) < 0.8 * mean(ctx.losses[:10]))


class RidershipGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 24, batch_first=True)
        self.head = nn.Linear(24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def ridership_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    t = torch.arange(length + 1).float()
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        level = torch.rand(batch, 1, generator=gen)
        series = level + 0.5 * torch.sin(t[None] * 0.5 + phase)
        series += 0.05 * torch.randn(series.shape, generator=gen)
        x = torch.stack([series[:, :-1], torch.cos(t[None, :-1] * 0.5 + phase)], -1)
        yield x, series[:, -1:]


@scenario(
    "tram_ridership_forecaster",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="GRU forecaster of hourly tram riders, SGD momentum with warmup, gradient clipping "
    "and a rush-hour burst batch every 40 steps; normal run",
)
def h123_tram_healthy(ctx: Context) -> None:
    gen = seeded(12316)
    model = RidershipGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = ridership_batches(gen)
    ctx.attach(model, opt)
    for step in range(150):
        for g in opt.param_groups:
            g["lr"] = 0.05 * min(1.0, (step + 1) / 20)
        x, y = next(batches)
        if step % 40 == 39:
            y = y * 1.5
        loss = F.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", finite(ctx.losses))
    ctx.check("loss fell", mean(ctx.losses[-20:]) < 0.8 * mean(ctx.losses[:10]))
