"""Held-out set 657 (``h657_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face GraniteMoE SWA causal LM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
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


class _Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head."""

    def __init__(self, n_in: int, width: int, n_out: int, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, n_out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _sharpness(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, iters: int = 30):
    """Top Hessian eigenvalue of the batch loss by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    model.zero_grad(set_to_none=True)
    return lam


def _tiny_granite(vocab: int = 128):
    from transformers import GraniteMoeSWAConfig, GraniteMoeSWAForCausalLM

    config = GraniteMoeSWAConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    return GraniteMoeSWAForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="spar_varnish_cure_decay_sign_gelu_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a boat-builder's spar-varnish cure-time GELU regressor under Adam with a hand-rolled "
    "decoupled weight decay; the decay line was written p.mul_(1 + lr * wd) instead of "
    "p.mul_(1 - lr * wd), so every step inflates the weights a little and the loss climbs slowly "
    "from its low with nothing else wrong",
)
def h657_spar_varnish_decay_sign(ctx: Context) -> None:
    gen = seeded(6571)
    model = _Net(8, 32, 1, act=F.gelu)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    ctx.attach(model, opt)
    batches = _readings(gen)
    w0 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in decay))
    for _step in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in decay:
                p.mul_(1 + lr * wd)  # bug: the sign of the decay is flipped
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    w1 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in decay))
    low = min(_median(ls[i : i + 5]) for i in range(0, len(ls) - 5))
    ctx.check("loss climbs over 3x from its low", _median(ls[-5:]) > 3 * low)
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="gaga_ball_bounce_outcome_gelu_classifier",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a gaga-ball bounce-outcome GELU classifier with an activation-penalty aux loss whose "
    "weight comes from a per-step warm-up table; at step 80 the table row was parsed as 1e3 for "
    "1e-3, the penalty's gradient bursts for that one step (the logged cross-entropy is "
    "ordinary), clipping at 1.0 keeps the run going",
)
def h657_gaga_ball_aux_weight_burst(ctx: Context) -> None:
    gen = seeded(6572)
    model = _Net(12, 32, 5, act=F.gelu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen)
    for step in range(160):
        x, y = next(batches)
        ctx.targets(y)
        h = model.features(x)
        logits = model.head(h)
        loss = F.cross_entropy(logits, y)
        aux_w = 1e3 if step == 80 else 1e-3  # bug: one table row read as 1e3
        (loss + aux_w * h.pow(2).mean()).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at step 80 over 30x the median before", g[80] > 30 * _median(g[60:80]))
    ctx.check("gradient back to ordinary after", _median(g[90:100]) < 3 * _median(g[60:80]))
    ctx.check("loss fell overall", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="ocarina_glaze_firing_sqrt_variance_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=17,
    heldout=True,
    note="an ocarina glaze-firing temperature Gaussian NLL net; the variance head feeds "
    "torch.sqrt directly (the softplus was dropped in a refactor), and once a variance output "
    "goes negative the sqrt of a negative gives a NaN loss",
)
def h657_ocarina_glaze_sqrt_negative(ctx: Context) -> None:
    gen = seeded(6573)

    class GlazeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.fc2 = nn.Linear(32, 32)
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 1.5)

        def forward(self, x: torch.Tensor):
            h = F.silu(self.fc2(F.silu(self.fc1(x))))
            return self.mean_head(h), self.var_head(h)

    model = GlazeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.02)
    min_var: list[float] = []
    for _step in range(200):
        x, y = next(batches)
        mu, var = model(x)
        min_var.append(float(var.detach().min()))
        std = torch.sqrt(var)  # bug: softplus dropped
        loss = (torch.log(std) + (y - mu) ** 2 / (2 * std**2)).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    k = len(ls) - 1
    ctx.check(f"loss NaN at step {k}", math.isnan(ls[-1]))
    ctx.check("finite before", _finite(ls[:-1]) and k >= 10)
    ctx.check("a variance output negative at that step", min_var[-1] < 0)


@scenario(
    family="concertina_reed_pitch_drift_silu_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a concertina reed pitch-drift SiLU Huber regressor; one shard from a second workshop "
    "logged bellows pressure in pascals, not kilopascals, and its batch at step 100 is 1000x in "
    "that column; the loss and gradient spike for that batch, clipping at 1.0 keeps the run, "
    "and it recovers",
)
def h657_concertina_reed_pascal_shard(ctx: Context) -> None:
    gen = seeded(6574)
    model = _Net(8, 32, 1, act=F.silu)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0  # bad shard: pascals for kilopascals
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 100 over 20x the median before", ls[100] > 20 * _median(ls[80:100]))
    ctx.check("gradient at step 100 over 10x", g[100] > 10 * _median(g[80:100]))
    ctx.check(
        "recovered: last losses under 2x pre-onset", _median(ls[-10:]) < 2 * _median(ls[90:100])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="talking_drum_tension_pitch_deep_tanh_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a talking-drum armpit-tension to pitch 16-layer tanh MLP initialised with orthogonal "
    "gain 3.0 (the init helper's gain argument was meant for the output layer only); gradients "
    "grow through depth towards the input, the first layer's gradient far above the last "
    "hidden layer's; clipped at 1.0, Adagrad",
)
def h657_talking_drum_gain_depth(ctx: Context) -> None:
    gen = seeded(6575)

    class DrumNet(nn.Module):
        def __init__(self, depth: int = 16, width: int = 32) -> None:
            super().__init__()
            sizes = [8] + [width] * depth
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            self.head = nn.Linear(width, 1)
            for layer in self.layers:
                nn.init.orthogonal_(layer.weight, gain=3.0)  # bug: meant for the head only
                nn.init.zeros_(layer.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return self.head(x)

    model = DrumNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 10x the last hidden's", _median(ratios[:20]) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="bit_maker_snaffle_grade_temperature_classifier",
    optimizer="SGD Nesterov",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a bit-maker's snaffle mouthpiece grade ReLU classifier with a softmax temperature read "
    "from a config written in per-mille (temperature_pm: 5) and used as is, so the logits are "
    "divided by 0.005 instead of 5; the softmax saturates and most rows give the target "
    "probability exactly 1.0",
)
def h657_bit_maker_temperature_permille(ctx: Context) -> None:
    gen = seeded(6576)
    model = _Net(12, 32, 5)
    cfg = {"temperature_pm": 5}
    temperature = cfg["temperature_pm"] / 1000.0  # bug: the value was already in units
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _labels(gen)
    collapsed: list[float] = []
    saturated: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        collapsed.append(collapsed_fraction(logits.detach(), y))
        p = torch.softmax(logits.detach(), -1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows saturate to p = 1.0", _median(saturated[-10:]) > 0.5)
    ctx.check("over a third at target p = 1.0", _median(collapsed[-10:]) > 0.33)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="chair_caner_weave_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=40,
    note="a chair-caner's weave-tension tanh regressor (batch 256) under plain SGD; on resuming from a "
    "checkpoint at step 40 the linear batch-size scaling rule was applied a second time "
    "(lr x 16 again), taking lr x sharpness past 2, and the loss blows up",
)
def h657_chair_caner_double_scaling(ctx: Context) -> None:
    gen = seeded(6577)
    model = _Net(8, 64, 1, act=torch.tanh)
    base_lr, scale = 0.005, 256 / 16
    opt = torch.optim.SGD(model.parameters(), lr=base_lr * scale)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=256, noise=0.02)
    lam = 0.0
    for step in range(120):
        x, y = next(batches)
        if step == 40:
            lam = _sharpness(model, F.mse_loss, x, y)
            for g in opt.param_groups:
                g["lr"] = g["lr"] * scale  # bug: scaling rule applied again on resume
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    good, bad = base_lr * scale, base_lr * scale * scale
    ctx.check("lr x sharpness under 2 before the resume", good * lam < 2)
    ctx.check("lr x sharpness over 2 after the resume", bad * lam > 2)
    blew = (not _finite(ls)) or max(ls[40:]) > 100 * _median(ls[30:40])
    ctx.check("loss blew up after step 40", blew)


@scenario(
    family="cutler_grind_bevel_fp16_silu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a cutler's grinding-bevel angle SiLU regressor trained under fp16 autocast with a "
    "torch.amp.GradScaler; from step 60 the coolant-pressure feed switched to pascals for "
    "kilopascals, fc1's fp16 output overflows to inf (finite in float32), the loss is NaN and "
    "the scaler keeps skipping steps and cutting its scale",
)
def h657_cutler_grind_fp16_pascals(ctx: Context) -> None:
    gen = seeded(6578)
    model = _Net(8, 32, 1, act=F.silu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    overflow, fp32_finite, scales = False, True, []
    for step in range(90):
        x, y = next(batches)
        if step >= 60:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e3 + 1.0e5  # bug: pascals for kilopascals
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model.head(model.act(model.fc2(model.act(h1))))
        if step == 60:
            overflow = bool(torch.isinf(h1).any())
            with torch.no_grad():
                fp32_finite = bool(torch.isfinite(model(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fc1's fp16 output is inf at step 60", overflow)
    ctx.check("the same forward is finite in float32", fp32_finite)
    ctx.check(
        "loss finite before 60 and NaN/inf from 60", _finite(ls[:60]) and not _finite(ls[60:61])
    )
    ctx.check("scaler scale cut over 100x", scales[-1] < scales[59] / 100)


@scenario(
    family="whittler_spoon_bowl_depth_two_group_relu_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="a spoon-whittler's bowl-depth ReLU regressor with two param groups (fc1 and the rest); "
    "the fc1 group's lr was typed 1e-9 for 1e-3, so fc1's updates are about a millionth of what "
    "they should be and fc1 never moves while the rest trains",
)
def h657_whittler_spoon_group_typo(ctx: Context) -> None:
    gen = seeded(6579)
    model = _Net(8, 32, 1)
    first = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adam([{"params": first, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    ctx.attach(model, opt)
    batches = _readings(gen)
    w0 = model.fc1.weight.detach().clone()
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    ctx.check("fc1 moved under 1e-5 relative", moved < 1e-5)
    ctx.check("the rest trained: loss fell 20%", _median(ls[-10:]) < 0.8 * _median(ls[:5]))


@scenario(
    family="marbler_comb_pattern_grade_bce_relu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a paper-marbler's comb-pattern pass/fail ReLU classifier trained with "
    "binary_cross_entropy_with_logits on grades stored as 1 and 2 that were never remapped to "
    "0 and 1; with a target of 2 the loss has no minimum (it falls like -logit), and the head's "
    "logits grow without bound while the loss runs below zero",
)
def h657_marbler_comb_unmapped_labels(ctx: Context) -> None:
    gen = seeded(65710)
    model = _Net(12, 32, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _labels(gen, k=2)
    peaks: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        grade = (y + 1).float()[:, None]  # bug: grades 1/2 used as BCE targets
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        loss = F.binary_cross_entropy_with_logits(logits, grade)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("head logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss below zero at the end", ls[-1] < 0)
    ctx.check("loss finite throughout", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="granitemoe_swa_banjolele_strum_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face GraniteMoE SWA causal LM (sliding-window + full attention layers, "
    "4 experts top-2) on banjolele strum-notation bytes; AdamW with no decay on norms and "
    "embeddings, linear warm-up then cosine, clipping at 1.0: an ordinary run",
)
def h657_granite_banjolele_control(ctx: Context) -> None:
    gen = seeded(65711)
    model = _tiny_granite()
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n or "norm" in n]
    ids = {id(p) for p in nodecay}
    decay = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps, warm = 100, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="kemenche_bow_pressure_noisy_grad_gelu_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a kemenche bow-pressure GELU regressor trained with annealed gradient noise "
    "(Neelakantan et al. 2015: Gaussian noise of variance eta / (1 + t)^0.55 added to every "
    "gradient); the gradient norm jumps around from step to step, which looks alarming, but "
    "the run is healthy and the loss falls",
)
def h657_kemenche_gradient_noise_control(ctx: Context) -> None:
    gen = seeded(65712)
    model = _Net(8, 32, 1, act=F.gelu)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    eta = 0.3
    clean: list[float] = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        clean.append(grad_norm(model))
        sigma = math.sqrt(eta / (1 + step) ** 0.55)
        with torch.no_grad():
            for p in model.parameters():
                p.grad.add_(torch.randn(p.shape, generator=gen) * sigma)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    noisy = sum(a > 3 * b for a, b in zip(g, clean, strict=True))
    ctx.check("noisy gradient norm over 3x the clean one in most steps", noisy > len(g) // 2)
    ctx.check("gradient norm swings over 1.5x across the run", max(g) > 1.5 * min(g))
    ctx.check("loss fell 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="bouzouki_plectrum_attack_relu_classifier",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a bouzouki plectrum-attack ReLU classifier on noisy readings with 10% label noise; "
    "Adadelta, label smoothing 0.1, 2-micro-batch gradient accumulation, clipping at 1.0 and "
    "ReduceLROnPlateau: an ordinary run",
)
def h657_bouzouki_plectrum_control(ctx: Context) -> None:
    gen = seeded(65713)
    model = _Net(12, 32, 5)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=32)
    for _step in range(150):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            x = x + 0.1 * torch.randn(x.shape, generator=gen)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
        sched.step(float(total))
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))
