"""Held-out set 662 (``h662_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Flint causal LM built from a tiny config."""

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


def _tiny_flint(vocab: int = 128):
    from transformers import FlintConfig, FlintForCausalLM

    config = FlintConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        sliding_window=16,
        use_cache=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return FlintForCausalLM(config)


NAN_STEP = 194  # measured
LR_SPIKE = 3e-2
CENOTE_LR = 1e-2
CENOTE_NOISE = 0.05
WARM_ONSET = 20  # measured


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="flint_gamelan_kotekan_score_lm",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Flint causal LM on gamelan kotekan score bytes, trained with "
    "per-module param groups read from a config; the attention key was misspelt ('atten_lr'), "
    "the loader's default of 0.0 was used, and every self_attn parameter (projections, q/k norms) "
    "never moves while the "
    "embeddings, MLPs, norms and head train",
)
def h662_flint_kotekan_attn_group_typo(ctx: Context) -> None:
    gen = seeded(6621)
    model = _tiny_flint()
    cfg = {"base_lr": 3e-3, "atten_lr": 3e-3}  # typo: the loader looks up "attn_lr"
    attn = [p for n, p in model.named_parameters() if ".self_attn." in n]
    rest = [p for n, p in model.named_parameters() if ".self_attn." not in n]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": cfg["base_lr"]},
            {"params": attn, "lr": cfg.get("attn_lr", 0.0)},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in attn]
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(80):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(attn, before, strict=True))
    ctx.check("self_attn weights never moved (max change 0)", moved == 0.0)
    ctx.check("attention group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="curling_sweep_call_unclamped_hinge_relu_classifier",
    optimizer="SGD (momentum)",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a curling sweep-call (sweep / no sweep) classifier trained with a binary hinge loss "
    "written as mean(1 - s * f(x)) after the clamp(min=0) was lost in a port from another "
    "framework; every correct margin keeps paying, and the head's logit grows without bound "
    "while the loss runs ever more negative",
)
def h662_curling_sweep_unclamped_hinge(ctx: Context) -> None:
    gen = seeded(6622)

    class SweepNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(10, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(1)

    model = SweepNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    peaks: list[float] = []
    for _step in range(150):
        x = torch.randn(64, 10, generator=gen)
        s = torch.sign(x @ w)
        f = model(x)
        peaks.append(float(f.detach().abs().max()))
        loss = (1.0 - s * f).mean()  # bug: .clamp(min=0) lost
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("head logit grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss below -10 and still falling", ls[-1] < -10 and ls[-1] < ls[-30] - 1)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="cenote_water_clarity_lognormal_sigma_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("sigma",),
    diverges=NAN_STEP,
    heldout=True,
    note="a cenote water-clarity (Secchi depth) log-normal NLL regressor; the spread head lost its "
    "softplus when the model was refactored to 'predict sigma directly', so the loss takes "
    "log(sigma) of a raw linear output; as sigma is pulled towards the small residual spread, "
    "Adam steps one sigma below zero and log of a negative gives NaN",
)
def h662_cenote_clarity_raw_sigma(ctx: Context) -> None:
    gen = seeded(6623)

    class ClarityNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mu = nn.Linear(32, 1)
            self.sigma = nn.Linear(32, 1)
            nn.init.constant_(self.sigma.bias, 1.0)
            with torch.no_grad():
                self.sigma.weight.mul_(0.1)

        def forward(self, x: torch.Tensor):
            h = torch.tanh(self.fc1(x))
            return self.mu(h), self.sigma(h)  # bug: softplus dropped

    model = ClarityNet()
    opt = torch.optim.Adam(model.parameters(), lr=CENOTE_LR)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=CENOTE_NOISE)
    neg_at = None
    for step in range(300):
        x, y = next(batches)
        mu, sigma = model(x)
        if neg_at is None and bool((sigma <= 0).any()):
            neg_at = step
        loss = (torch.log(sigma) + (y - mu) ** 2 / (2 * sigma**2)).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v)), None)
    ctx.check(f"loss first non-finite at step {NAN_STEP}", bad == NAN_STEP)
    ctx.check("a sigma was <= 0 at the NaN step", neg_at == bad)
    ctx.check("loss finite before", _finite(ls[:NAN_STEP]))


@scenario(
    family="cider_press_pomace_juice_yield_silu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="a cider-press juice-yield regressor (litres per kilogram of pomace); the shard read at "
    "step 90 came from a press whose log wrote yield in millilitres, one batch of targets 1000x "
    "too large; clipping at 1.0 bounds the step and the run recovers",
)
def h662_cider_press_ml_shard(ctx: Context) -> None:
    gen = seeded(6624)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(180):
        x, y = next(batches)
        if step == 90:
            y = y * 1000.0  # the millilitre log
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 20x the median before", ls[90] > 20 * _median(ls[60:90]))
    ctx.check("gradient at 90 over 10x the median before", gs[90] > 10 * _median(gs[60:90]))
    ctx.check(
        "recovers: late loss within 3x of pre-onset", _median(ls[-20:]) < 3 * _median(ls[60:90])
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="sled_dog_team_pace_resume_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="a sled-dog team pace regressor; the job was pre-empted and resumed at step 100 from a "
    "checkpoint that saved the model but not the optimizer, so Adam restarts with empty moments "
    "and its first bias-corrected steps move every weight by about the full lr; the loss spikes "
    "once and the run recovers, with ordinary data and no gradient burst before it",
)
def h662_sled_dog_pace_resume_no_optim_state(ctx: Context) -> None:
    gen = seeded(6625)
    model = nn.Sequential(
        nn.Linear(8, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU(), nn.Linear(48, 1)
    )
    lr = LR_SPIKE
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    for step in range(220):
        if step == 100:  # resume: model weights restored, optimizer state lost
            opt.state.clear()
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    base = _median(ls[80:100])
    ctx.check(
        f"loss spiked over 4x after the resume ({max(ls[100:110]) / base:.1f}x)",
        max(ls[100:110]) > 4 * base,
    )
    ctx.check("gradient at the resume step ordinary (under 3x)", gs[100] < 3 * _median(gs[80:100]))
    ctx.check("recovers: late loss within 2x of pre-resume", _median(ls[-20:]) < 2 * base)
    ctx.check("finite", _finite(ls))


@scenario(
    family="bell_foundry_tuning_cut_deep_tanh_mlp",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="a bell-foundry tuning-cut depth regressor, a 12-layer tanh MLP whose init helper read "
    "the weight std multiplier from a config key meant for a ReLU net ('init_gain: 4.0'); each "
    "tanh layer sits in the chaotic regime, so the gradient grows layer by layer towards the "
    "input, over 50x larger at the first layer's input than at the last; clipping at 1.0 keeps "
    "the run finite",
)
def h662_bell_foundry_tanh_gain(ctx: Context) -> None:
    gen = seeded(6626)

    class TuningMLP(nn.Module):
        def __init__(self, depth: int = 12, width: int = 64, gain: float = 4.0) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.Linear(8 if i == 0 else width, width) for i in range(depth)
            )
            self.head = nn.Linear(width, 1)
            for layer in self.layers:
                nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
                nn.init.zeros_(layer.bias)

        def forward(self, x: torch.Tensor, acts: list | None = None) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
                if acts is not None:
                    x.retain_grad()
                    acts.append(x)
                x = torch.tanh(x)
            return self.head(x)

    model = TuningMLP()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _step in range(100):
        x, y = next(batches)
        acts: list[torch.Tensor] = []
        loss = F.mse_loss(model(x, acts), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(float(acts[0].grad.norm() / acts[-1].grad.norm().clamp_min(1e-12)))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        f"gradient at layer 0 over 50x the last layer's ({_median(ratios[:20]):.0f}x)",
        _median(ratios[:20]) > 50,
    )
    ctx.check("finite", _finite(ctx.losses))


def _sharpness(model: nn.Module, loss_fn, batch, iters: int = 15) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="rope_walk_twist_tension_warmup_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=WARM_ONSET,
    heldout=True,
    note="a rope-walk strand twist-tension regressor with a 100-step linear warm-up whose peak lr "
    "was typed 1.5 for 0.15; the run trains while the lr is small, then the warm-up carries "
    "lr x sharpness past 2 and the loss oscillates and blows up",
)
def h662_rope_walk_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6627)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    peak, warm = 1.5, 100  # meant 0.15
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, warm) / warm)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    probe = next(batches)
    trace: dict[int, float] = {}
    for step in range(160):
        if step % 5 == 0:
            trace[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e6:
            break
    ls = ctx.losses
    cross = next((s for s, v in sorted(trace.items()) if v > 2.0), None)
    ctx.check(
        f"lr x sharpness under 2 early, over 2 from step {WARM_ONSET} (measured {cross})",
        cross is not None and abs(cross - WARM_ONSET) <= 5,
    )
    ctx.check("loss blew up over 100x its best", max(ls) > 100 * min(ls) or not _finite(ls))
    ctx.check("it trained first", min(ls[:WARM_ONSET]) < 0.8 * ls[0])


@scenario(
    family="marquetry_veneer_grain_dead_bias_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a marquetry veneer-grain classifier; the model builder applied one 'bias_init: -6.0' "
    "config value (meant for a gating layer elsewhere) to every Linear, so fc1's ReLUs are "
    "negative on all standardised inputs from step 0, get no gradient and never wake up; the "
    "loss stays near chance",
)
def h662_marquetry_grain_gate_bias(ctx: Context) -> None:
    gen = seeded(6628)

    class GrainNet(nn.Module):
        def __init__(self, bias_init: float = -6.0) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)
            nn.init.constant_(self.fc1.bias, bias_init)  # the gate's bias, everywhere

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc1(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.features(x)))))

    model = GrainNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    batches = _labels(gen)
    w0 = model.fc1.weight.detach().clone()
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ls = ctx.losses
    ctx.check(f"over 90% of fc1 units dead at the end ({dead:.2f})", dead > 0.9)
    ctx.check("fc1 weights never moved", bool((model.fc1.weight.detach() == w0).all()))
    ctx.check("loss stuck above 1.2 (chance 1.61)", _median(ls[-20:]) > 1.2)
    ctx.check("finite", _finite(ls))


@scenario(
    family="bird_ringing_wing_moult_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bird-ringing wing-moult stage classifier whose training config reused the "
    "'temperature: 0.001' key of a contrastive pre-training stage; the classifier's logits are "
    "divided by 0.001 where 1.0 was meant, the float32 softmax saturates and over half the rows "
    "give the target exactly 1.0",
)
def h662_bird_ringing_moult_temperature(ctx: Context) -> None:
    gen = seeded(6629)

    class MoultNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))

    model = MoultNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    tau = 0.001  # bug: the contrastive stage's temperature
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x) / tau, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x) / tau, y)
    ctx.check(f"over half the rows at p = 1.0 ({frac:.2f})", frac > 0.5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="snowshoe_trail_sink_depth_accum_relu_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=70,
    heldout=True,
    note="a snowshoe trail sink-depth regressor with 8-micro-batch gradient accumulation; on the "
    "first step after a checkpoint reload (step 70) a patched code path scaled each micro-batch "
    "loss by * accum instead of / accum, one gradient burst of 64x, clipped at 1.0, while the "
    "logged (correctly averaged) loss stays ordinary",
)
def h662_snowshoe_sink_accum_scale(ctx: Context) -> None:
    gen = seeded(6630)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16)
    accum = 8
    for step in range(140):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            scale = accum if step == 70 else 1.0 / accum  # bug for one step: * for /
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 70 over 30x the median before", gs[70] > 30 * _median(gs[40:70]))
    ctx.check("logged loss at 70 ordinary (under 3x)", ls[70] < 3 * _median(ls[40:70]))
    ctx.check("finite and trained", _finite(ls) and _median(ls[-20:]) < _median(ls[:10]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="ball_lightning_colour_distilled_gelu_student",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a ball-lightning colour-class student distilled from a frozen teacher whose logits are "
    "ten times sharper (teacher temperature 0.1 against the student's 1.0), loss = KL between "
    "log_softmax of both (log_target=True); the teacher's targets are nearly one-hot and the KL "
    "starts large, which looks alarming, but this is the intended sharp distillation and the "
    "student learns to agree with the teacher",
)
def h662_ball_lightning_sharp_teacher_distill(ctx: Context) -> None:
    gen = seeded(6631)

    class ColourNet(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, width)
            self.fc2 = nn.Linear(width, width)
            self.head = nn.Linear(width, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))

    teacher = ColourNet(64)  # pretrained on the labelled colour reports, then frozen
    t_opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    labelled = _labels(gen)
    for _ in range(150):
        x, y = next(labelled)
        F.cross_entropy(teacher(x), y).backward()
        t_opt.step()
        t_opt.zero_grad(set_to_none=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    model = ColourNet(48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    sharp = 10.0  # teacher temperature 0.1
    peaks: list[float] = []
    for _step in range(200):
        x = torch.randn(64, 12, generator=gen)
        with torch.no_grad():
            t_logits = teacher(x) * sharp
        y = t_logits.argmax(1)
        ctx.targets(y)
        s_logp = F.log_softmax(model(x), dim=1)
        t_logp = F.log_softmax(t_logits, dim=1)
        loss = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(t_logp.exp().max(1).values.mean()))
    x = torch.randn(256, 12, generator=gen)
    with torch.no_grad():
        agree = float((model(x).argmax(1) == teacher(x).argmax(1)).float().mean())
    ls = ctx.losses
    ctx.check(
        f"teacher's top probability over 0.9 on average ({_median(peaks):.2f})",
        _median(peaks) > 0.9,
    )
    ctx.check("KL fell by over half", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check(f"student agrees with the teacher on over 80% ({agree:.2f})", agree > 0.8)
    ctx.check("finite", _finite(ls))


@scenario(
    family="dragon_boat_stroke_sync_fp16_onecycle_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a dragon-boat stroke-sync Huber regressor in fp16 autocast with a GradScaler, "
    "OneCycleLR, two param groups (no decay on biases and norms), LayerNorm, clipping at 1.0 and "
    "noisy paddle-sensor readings: an ordinary run",
)
def h662_dragon_boat_sync_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(6632)
    model = nn.Sequential(
        nn.Linear(8, 48),
        nn.LayerNorm(48),
        nn.SiLU(),
        nn.Linear(48, 48),
        nn.SiLU(),
        nn.Linear(48, 1),
    )
    decay = [p for p in model.parameters() if p.dim() == 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": nodecay, "weight_decay": 0.0}],
        lr=1e-3,
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, noise=0.15)
    for _step in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by half", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="handbell_choir_peal_smoothed_conv1d_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a handbell-choir peal-pattern classifier, a small Conv1d net over 16-strike amplitude "
    "traces, cross-entropy with label smoothing 0.1, 2-micro-batch gradient accumulation, "
    "ReduceLROnPlateau and clipping at 1.0: an ordinary run",
)
def h662_handbell_peal_smoothed_accum(ctx: Context) -> None:
    gen = seeded(6633)

    class PealNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(2, 16, 3, padding=1)
            self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv2(F.relu(self.conv1(x))))
            return self.head(h.mean(2))

    model = PealNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    patterns = torch.randn(4, 2, 16, generator=gen)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            y = torch.randint(0, 4, (32,), generator=gen)
            x = patterns[y] + 0.5 * torch.randn(32, 2, 16, generator=gen)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by half", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", _finite(ls))
