"""Held-out set 684 (``h684_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face ModernBERT decoder built from a tiny
config."""

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


def _train(ctx: Context, model: nn.Module, opt, loss: torch.Tensor) -> None:
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


# -- faults -----------------------------------------------------------------------------------------


class _PointerAttention(nn.Module):
    """Single-head attention whose scale was written ``* sqrt(d)`` instead of ``/ sqrt(d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.q(x) @ self.k(x).transpose(1, 2) * math.sqrt(self.dim)  # bug: should divide
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ self.v(x)


@scenario(
    family="hardanger_fiddle_sympathetic_string_pointer_attention_tagger",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="a Hardanger-fiddle sympathetic-string tagger: one attention layer over 12 bowed-note "
    "tokens tags each note with the string of the loudest note in the phrase (a pointer task), "
    "cross-entropy, Adam lr 3e-3 with no weight decay; the attention scale was typed * sqrt(d) "
    "for / sqrt(d), the q.k logits grow over 20x as the attention sharpens",
)
def h684_hardanger_attention_scale_typo(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(9, 32)
            self.attn = _PointerAttention(32)
            self.head = nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            return self.head(h + self.attn(h))

    gen = seeded(6841)
    model = _Model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    peaks = []
    for _step in range(200):
        string = torch.randint(0, 8, (32, 12), generator=gen)
        loud = torch.rand(32, 12, generator=gen)
        x = torch.cat([F.one_hot(string, 8).float(), loud[..., None]], -1)
        y = string.gather(1, loud.argmax(1, keepdim=True)).expand(32, 12)
        out = model(x)
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(out.reshape(-1, 8), y.reshape(-1))
        _train(ctx, model, opt, loss)
        peaks.append(float(model.attn.last_logits.abs().max()))
    ctx.check("attention logits grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


class _SqrtSigma(nn.Module):
    """sigma = sqrt(raw variance) with no clamp or softplus in front."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(raw)


@scenario(
    family="peat_turf_cutting_moisture_sqrt_sigma_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("sigma_root",),
    diverges=55,
    heldout=True,
    note="a peat-turf moisture regressor predicting mean and spread, hand-written Gaussian NLL, "
    "RMSprop; the spread is sqrt(raw variance head) with the clamp/softplus left out, as the fit "
    "tightens an update pushes a raw variance below 0 and the sqrt gives NaN, the loss is NaN at step 55",
)
def h684_peat_sqrt_no_clamp(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _Net(8, 32, 32, nn.SiLU)
            self.mu = nn.Linear(32, 1)
            self.var = nn.Linear(32, 1)
            self.sigma_root = _SqrtSigma()
            with torch.no_grad():
                self.var.weight.mul_(0.01)
                self.var.bias.fill_(1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = F.silu(self.body(x))
            return self.mu(h), self.sigma_root(self.var(h))

    gen = seeded(6842)
    model = _Model()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.02)
    nan_sigma_at = None
    for step in range(300):
        x, y = next(data)
        mu, sigma = model(x)
        if nan_sigma_at is None and torch.isnan(sigma).any():
            nan_sigma_at = step
        loss = (torch.log(sigma) + (y - mu) ** 2 / (2 * sigma**2)).mean()
        _train(ctx, model, opt, loss)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("sigma NaN at some step", nan_sigma_at is not None)
    ctx.check(
        "loss NaN at the step sigma first was",
        nan_sigma_at is not None and len(ls) == nan_sigma_at + 1 and math.isnan(ls[-1]),
    )
    ctx.check("loss finite and falling before", _finite(ls[:-1]) and ls[-2] < ls[0])


@scenario(
    family="cider_apple_pomace_press_yield_linear_probe_lr_net",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="a cider-press pomace-yield regressor, SiLU MLP, MSE, AdamW with param groups; the trunk "
    "group kept lr=0.0 from a linear-probe config that was copied for full fine-tuning, so fc1 "
    "and fc2 never move (lr x weight decay is 0 too) while the head trains on top",
)
def h684_cider_press_trunk_lr_zero(ctx: Context) -> None:
    gen = seeded(6843)
    model = _Net(8, 32, 1, nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": 0.0},  # left from the linear-probe config
            {"params": list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    t0 = [p.detach().clone() for p in trunk]
    h0 = [p.detach().clone() for p in model.head.parameters()]
    data = _readings(gen)
    for _step in range(150):
        x, y = next(data)
        _train(ctx, model, opt, F.mse_loss(model(x), y))
    trunk_moved = max(float((p - q).abs().max()) for p, q in zip(trunk, t0, strict=True))
    head_moved = sum(
        float((p - q).norm()) for p, q in zip(model.head.parameters(), h0, strict=True)
    )
    ctx.check("trunk weights did not move at all", trunk_moved == 0.0)
    ctx.check("head moved over 0.1", head_moved > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


@scenario(
    family="hammer_dulcimer_course_tuning_deep_relu_gain_regressor",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="a hammer-dulcimer course-tuning regressor, a 12-layer ReLU MLP, MSE, SGD Nesterov; the "
    "init helper applies gain 1.7 on top of Kaiming normal (the gain was meant for tanh "
    "fan-in init), each layer multiplies the backward signal by about 1.7, the gradient at the "
    "first layer's output is over 30x the last hidden layer's and the run blows up",
)
def h684_dulcimer_init_gain(ctx: Context) -> None:
    from scenarios.common import MLP

    gen = seeded(6844)
    model = MLP([8] + [32] * 11 + [1])
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(1.7)  # gain meant for another init
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen)
    ratio0 = None
    for step in range(80):
        x, y = next(data)
        outs = {}
        h = x
        for i, m in enumerate(model):
            h = m(h)
            if i in (0, 20):
                h.retain_grad()
                outs[i] = h
        loss = F.mse_loss(h, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step == 0:
            ratio0 = float(outs[0].grad.norm() / outs[20].grad.norm())
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("gradient at layer 0's output over 30x layer 20's at step 0", ratio0 > 30)
    ctx.check(
        "loss blew up (over 1e4x the first or non-finite)",
        not _finite(ls) or max(ls) > 1e4 * ls[0],
    )


@scenario(
    family="sled_dog_checkpoint_split_time_seconds_shard_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a sled-dog race checkpoint split-time regressor, ReLU MLP, MSE, plain SGD with "
    "clipping at 5; the shard read at step 90 came from a musher log in seconds instead of "
    "hours, its targets are 3600x too large, that one batch's loss is over 1e4x and its "
    "gradient over 50x; the clip holds the update and the run recovers",
)
def h684_sled_dog_seconds_shard(ctx: Context) -> None:
    gen = seeded(6845)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(180):
        x, y = next(data)
        if step == 90:
            y = y * 3600.0  # the shard in seconds
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 1e4x the median of 70-89", ls[90] > 1e4 * _median(ls[70:90]))
    ctx.check("gradient at step 90 over 50x the median of 70-89", g[90] > 50 * _median(g[70:90]))
    ctx.check("loss recovered by the end", _median(ls[-10:]) < 3 * _median(ls[70:90]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="bobbin_lace_pillow_thread_tension_accum_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a bobbin-lace thread-tension regressor, GELU MLP, Huber loss, 8-micro-batch gradient "
    "accumulation, clipping at 1, SGD momentum; on step 70 a refactored accumulation branch "
    "multiplies each micro-batch loss by the accumulation count instead of dividing, that step's "
    "gradient is 64x; the data are clean, the logged loss ordinary, the clip holds",
)
def h684_bobbin_lace_accum_multiply(ctx: Context) -> None:
    gen = seeded(6846)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    accum = 8
    for step in range(140):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss * accum if step == 70 else loss / accum).backward()
            total += float(loss) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[50:70])
    ctx.check("gradient at step 70 over 30x the median of 50-69", g[70] > 30 * base)
    ctx.check("gradient ordinary again by step 75", g[75] < 5 * base)
    ctx.check("logged loss at 70 ordinary", ls[70] < 3 * max(ls[60:70]))
    ctx.check("loss finite", _finite(ls))


def _sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    """Top Hessian eigenvalue of the MSE loss by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="raku_kiln_reduction_crackle_tanh_warmup_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=28,
    note="a raku-kiln reduction crackle-density regressor, tanh MLP, MSE, plain SGD with linear "
    "warm-up over 200 steps; the warm-up's target lr was typed 3.0 for 0.3, lr x sharpness "
    "passes 2 at step 28 and the loss oscillates and blows up",
)
def h684_raku_warmup_target_typo(ctx: Context) -> None:
    gen = seeded(6847)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    data = _readings(gen)
    target_lr = 3.0  # typo for 0.3
    products = []
    for step in range(200):
        lr = target_lr * min(1.0, (step + 1) / 200)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(data)
        if step % 2 == 0 and _finite(ctx.losses):
            products.append((step, lr * _sharpness(model, x, y)))
        _train(ctx, model, opt, F.mse_loss(model(x), y))
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 0", products[0][1] < 2)
    crossed = next((s for s, p in products if p > 2), None)
    ctx.check(
        "lr x sharpness first over 2 at steps 20-40", crossed is not None and 20 <= crossed <= 40
    )
    ctx.check(
        "loss blew up (over 100x its low or non-finite)",
        not _finite(ls) or max(ls[30:]) > 100 * min(ls),
    )


@scenario(
    family="sumo_tachiai_shove_outcome_negative_bias_bce_tagger",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="a sumo tachiai shove-outcome tagger (win/loss), ReLU MLP, BCE with logits, Adagrad; "
    "fc2's bias is initialised to -5 (a sparsity-init setting copied from a much wider model), "
    "every fc2 ReLU is dead on the data, no gradient reaches fc1 and the loss stays near chance",
)
def h684_sumo_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6848)
    model = _Net(8, 32, 1, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-5.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    w0 = model.fc1.weight.detach().clone()
    data = _readings(gen)
    for _step in range(150):
        x, y = next(data)
        y = (y > 0).float()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        _train(ctx, model, opt, loss)
    x, _ = next(data)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("over 90% of fc2 units dead at the end", dead > 0.9)
    ctx.check("fc1 never moved", float((model.fc1.weight - w0).abs().max()) == 0.0)
    ctx.check("loss still near chance (last 10 over 0.6)", min(ctx.losses[-10:]) > 0.6)


@scenario(
    family="epee_fencing_touch_target_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="an épée touch-target classifier on the 8x8 digits (10 target zones), ReLU MLP, "
    "cross-entropy, NAdam; the softmax temperature 1000 meant to soften the logits is applied as "
    "a multiply (logits * 1000 for logits / 1000), float32 probabilities round to exactly 1 for "
    "most rows while the rest pay a huge loss",
)
def h684_epee_temperature_multiply(ctx: Context) -> None:
    gen = seeded(6849)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    temperature = 1000.0
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) * temperature  # should be / temperature
        _train(ctx, model, opt, F.cross_entropy(logits, y))
    x, y = next(data)
    with torch.no_grad():
        frac = collapsed_fraction(model(x) * temperature, y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="coracle_paddle_stroke_drift_l2_sign_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a coracle paddle-stroke drift regressor, SiLU MLP, MSE, RAdam; the hand-written L2 "
    "penalty is subtracted (loss - 0.25 * ||w||^2) after a sign refactor, the weights grow "
    "steadily and, once the fit bottoms out near step 100, the loss climbs slowly to "
    "over 2.5x its low",
)
def h684_coracle_l2_sign(ctx: Context) -> None:
    gen = seeded(68410)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    n0 = float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)
    data = _readings(gen)
    for _step in range(300):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        l2 = sum((p**2).sum() for p in model.parameters())
        (loss - 0.25 * l2).backward()  # sign bug: should be +
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    n1 = float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)
    ls = ctx.losses
    meds = [_median(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    k = meds.index(min(meds))
    ctx.check("weight norm grew over 3x", n1 > 3 * n0)
    ctx.check(
        "10-step median loss climbed past 2.5x its low after the low",
        max(meds[k:]) > 2.5 * meds[k],
    )
    ctx.check("loss finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


def _tiny_modernbert_decoder(vocab: int = 64, layers: int = 4):
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    config = ModernBertDecoderConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        global_attn_every_n_layers=2,
        local_attention=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        tie_word_embeddings=False,
    )
    return ModernBertDecoderForCausalLM(config)


@scenario(
    family="alphorn_call_phrase_modernbert_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny ModernBERT decoder (from a config) modelling alphorn call phrases (generated "
    "note sequences where each note follows from the last, untied output embedding), AdamW with layer-wise learning-rate decay of 0.3 per layer from the "
    "top (layer 3 at 1x, layer 0 at 0.027x, the embeddings at 0.008x), warm-up then linear "
    "decay, clipping at 1: the bottom layers barely move, which looks alarming but is the "
    "intended practice, and the loss falls",
)
def h684_alphorn_modernbert_llrd(ctx: Context) -> None:
    gen = seeded(68411)
    model = _tiny_modernbert_decoder()
    base, decay, n = 1e-2, 0.3, 4
    groups = [
        {"params": list(model.model.embeddings.parameters()), "lr": base * decay**n},
    ]
    for i, layer in enumerate(model.model.layers):
        groups.append({"params": list(layer.parameters()), "lr": base * decay ** (n - 1 - i)})
    groups.append(
        {
            "params": list(model.model.final_norm.parameters())
            + list(model.lm_head.parameters())
            + list(model.decoder.parameters()),
            "lr": base,
        }
    )
    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    ctx.attach(model, opt)
    l0 = [p.detach().clone() for p in model.model.layers[0].parameters()]
    l3 = [p.detach().clone() for p in model.model.layers[3].parameters()]
    steps = 100
    for step in range(steps):
        scale = min(1.0, (step + 1) / 10) * (1 - step / steps)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * scale
        # each call note follows from the one before it (a fixed fingering rule)
        seq = [torch.randint(3, 64, (16,), generator=gen)]
        for _ in range(24):
            seq.append((seq[-1] * 5 + 7) % 61 + 3)
        seq = torch.stack(seq, 1)
        x, y = seq[:, :-1], seq[:, 1:]
        logits = model(input_ids=x).logits
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)

    def moved(now, before):
        return sum(float((a - b).norm()) for a, b in zip(now, before, strict=True))

    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell below 70% of the start", _median(ls[-10:]) < 0.7 * _median(ls[:10]))
    ctx.check(
        "layer 0 moved under a tenth of layer 3 (the decay took)",
        moved(list(model.model.layers[0].parameters()), l0)
        < 0.1 * moved(list(model.model.layers[3].parameters()), l3),
    )


@scenario(
    family="kayak_slalom_gate_split_onecycle_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a kayak-slalom gate split-time regressor, GELU MLP, Huber loss, 2-micro-batch "
    "accumulation, clipping at 1, OneCycleLR, Adamax, noisy targets: an ordinary run",
)
def h684_kayak_onecycle_control(ctx: Context) -> None:
    gen = seeded(68412)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.2)
    for _step in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell below 60% of the start", _median(ls[-10:]) < 0.6 * _median(ls[:10]))


@scenario(
    family="origami_crease_fold_grade_plateau_smoothed_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="an origami crease-fold grade classifier on the 8x8 digits, ReLU MLP with input noise, "
    "cross-entropy with label smoothing 0.1, SGD momentum with weight decay, ReduceLROnPlateau "
    "on a running loss: an ordinary run",
)
def h684_origami_plateau_control(ctx: Context) -> None:
    gen = seeded(68413)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    running = []
    for step in range(200):
        x, y = next(data)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _train(ctx, model, opt, loss)
        running.append(float(loss))
        if step % 10 == 9:
            sched.step(sum(running[-10:]) / 10)
    ls = ctx.losses
    ctx.check("loss finite", _finite(ls))
    ctx.check("loss fell below 40% of the start", _median(ls[-10:]) < 0.4 * _median(ls[:10]))
