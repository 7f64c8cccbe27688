"""Held-out set 121 (``h121_``): Hugging Face Param2-MoE, Phi-4-multimodal text tower, GOT-OCR2
text decoder and Ovis2 text decoder from tiny configs (no download), and hand-written models of
fields not yet covered: glacier-melt forecaster, sourdough-fermentation model, chord-recognition
CNN, marathon finish-time regressor, antibody-affinity regressor, tsunami arrival-time regressor,
playlist next-track recommender, wildfire-spread cellular model, grape-ripeness spectral
classifier and a bee-waggle-dance decoder. 12 faults and 4 healthy controls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from tiny configs ---------------------------------------------------------


def _param2moe():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "param2moe",
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModelForCausalLM.from_config(config)


def _phi4mm_text():
    from transformers import AutoConfig, Phi4MultimodalForCausalLM

    c = AutoConfig.for_model("phi4_multimodal", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    c.vocab_size, c.hidden_size, c.intermediate_size = 128, 32, 64
    c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads = 2, 2, 2
    c.vision_config.hidden_size, c.vision_config.intermediate_size = 16, 32
    c.vision_config.num_hidden_layers, c.vision_config.num_attention_heads = 1, 2
    c.audio_config.hidden_size, c.audio_config.intermediate_size = 16, 32
    c.audio_config.num_blocks, c.audio_config.num_attention_heads = 1, 2
    return Phi4MultimodalForCausalLM(c)


def _qwen2_text(heads: int = 2) -> dict:
    return dict(
        model_type="qwen2",
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        pad_token_id=0,
    )


def _got_ocr2():
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    config = GotOcr2Config(
        text_config=_qwen2_text(),
        vision_config=dict(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            mlp_dim=32,
            global_attn_indexes=[0],
            window_size=2,
        ),
        image_token_index=5,
    )
    return GotOcr2ForConditionalGeneration(config)


def _ovis2():
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration

    config = Ovis2Config(
        text_config=_qwen2_text(),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            vocab_size=64,
        ),
        image_token_id=5,
        visual_indicator_token_ids=[6, 7, 8, 9, 10],
        vocab_size=128,
        hidden_size=32,
    )
    return Ovis2ForConditionalGeneration(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _finite_and_fell(ctx: Context, window: int = 10) -> None:
    losses = ctx.losses
    ctx.check("every loss finite", all(math.isfinite(v) for v in losses))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    ctx.check("the loss fell", last < 0.8 * first)


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


@scenario(
    "param2moe_lm",
    "adamw",
    "adam_second_moment_poisoned",
    where=("lm_head",),
    heldout=True,
    onset=40,
    note="an auxiliary head penalty with a coefficient 1e5 too large, applied on one step, leaves "
    "a giant gradient in AdamW's second moment of lm_head: its updates then stall for hundreds "
    "of steps",
)
def h121_param2moe_poisoned_head_moment(ctx: Context) -> None:
    gen = seeded(12101)
    model = _param2moe()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    head = model.lm_head.weight
    snap: dict[int, torch.Tensor] = {}
    v_before: list[float] = []

    def before(step: int) -> None:
        if step in (10, 50, 60, 100):
            snap[step] = head.detach().clone()
        if step == 40:
            v_before.append(float(opt.state[head]["exp_avg_sq"].max()))

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 40:  # the penalty term, meant to be 1e-1, applied once with coefficient 1e4
            return loss + 1e4 * head.pow(2).sum() + 1e4 * head.sum()
        return loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        110,
        loss_fn=lm_loss,
        forward=_logits,
        before=before,
        extra_loss=extra,
        classifier=False,
    )
    v_after = float(opt.state[head]["exp_avg_sq"].max())
    ctx.check("lm_head's second moment jumped by more than 1e6", v_after > 1e6 * v_before[0])
    moved_before = float((snap[50] - snap[10]).norm())
    moved_after = float((snap[100] - snap[60]).norm())
    ctx.check("lm_head's updates then stalled (5x smaller)", moved_after < 0.2 * moved_before)
    ctx.check("every loss finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "param2moe_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="a tiny Param2-MoE LM with AdamW, linear warmup and cosine decay, normal batch noise",
)
def h121_param2moe_healthy(ctx: Context) -> None:
    gen = seeded(12102)
    model = _param2moe()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 110

    def before(step: int) -> None:
        warm = min(1.0, (step + 1) / 15)
        for g in opt.param_groups:
            g["lr"] = 3e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / steps))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        steps,
        loss_fn=lm_loss,
        forward=_logits,
        before=before,
        classifier=False,
    )
    _finite_and_fell(ctx)


@scenario(
    "phi4mm_text_tower",
    "adam",
    "loss_spike",
    heldout=True,
    onset=70,
    note="the Phi-4-multimodal text tower trained text-only; a resumed scheduler hands one step a "
    "learning rate 100x too high: the loss spikes, then recovers",
)
def h121_phi4mm_text_lr_blip(ctx: Context) -> None:
    gen = seeded(12103)
    model = _phi4mm_text()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 1.0 if step == 70 else 2e-3

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        120,
        loss_fn=lm_loss,
        forward=_logits,
        before=before,
        classifier=False,
    )
    base = _median(ctx.losses[60:70])
    peak = max(ctx.losses[71:74])
    ctx.check("the loss spiked after the one-step blip", peak > 1.5 * base)
    ctx.check("the loss recovered", _median(ctx.losses[-10:]) < 0.5 * (peak + base))
    ctx.check("every loss finite", all(math.isfinite(v) for v in ctx.losses))


def _qk_bound(model: nn.Module, layers: nn.ModuleList, x: torch.Tensor) -> float:
    """The largest |q||k|/sqrt(d) over positions, heads and layers (RoPE keeps the norms)."""
    top = 0.0
    with torch.no_grad():
        states = model(input_ids=x, output_hidden_states=True).hidden_states
        for layer, h in zip(layers, states, strict=False):
            a = layer.self_attn
            z = layer.input_layernorm(h)
            hd = a.head_dim
            q = a.q_proj(z).unflatten(-1, (-1, hd)).norm(dim=-1)
            k = a.k_proj(z).unflatten(-1, (-1, hd)).norm(dim=-1)
            top = max(top, float(q.amax() * k.amax()) / math.sqrt(hd))
    return top


@scenario(
    "got_ocr2_text",
    "adamw",
    "attention_logit_growth",
    where=(
        "model.language_model.layers.0.self_attn",
        "model.language_model.layers.1.self_attn",
    ),
    diverges="auto",
    heldout=True,
    note="GOT-OCR2's Qwen2 decoder (no QK-norm) fine-tuned text-only with the query/key "
    "projections in a group at 10x the learning rate and no weight decay: q.k logits grow",
)
def h121_got_ocr2_qk_lr(ctx: Context) -> None:
    gen = seeded(12104)
    model = _got_ocr2()
    layers = model.model.language_model.layers
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    probe = next(text_batches(torch.Generator().manual_seed(5), batch=8, length=16))[0]
    start = _qk_bound(model, layers, probe)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        150,
        loss_fn=lm_loss,
        forward=_logits,
        classifier=False,
    )
    end = _qk_bound(model, layers, probe)
    ctx.check("the q.k logit bound grew more than 30x", end > 30 * start)
    ctx.check("the q.k logit bound passed 50", end > 50)


@scenario(
    "ovis2_text",
    "radam",
    "healthy",
    heldout=True,
    note="Ovis2's Qwen2 decoder trained text-only with RAdam and a step decay",
)
def h121_ovis2_text_healthy(ctx: Context) -> None:
    gen = seeded(12105)
    model = _ovis2()
    opt = torch.optim.RAdam(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 50, 0.5)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        120,
        loss_fn=lm_loss,
        forward=_logits,
        before=lambda step: sched.step() if step else None,
        classifier=False,
    )
    _finite_and_fell(ctx)


# -- glacier melt: a recurrent forecaster ---------------------------------------------------------


def glacier_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Daily temperature and radiation anomalies; the target is the next week's melt."""
    while True:
        t = torch.arange(length, dtype=torch.float32)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        temp = torch.sin(t / 6 + phase) + 0.3 * torch.randn(batch, length, generator=gen)
        rad = torch.cos(t / 9 + phase) + 0.3 * torch.randn(batch, length, generator=gen)
        x = torch.stack([temp, rad], -1)
        melt = F.relu(temp[:, -7:]).mean(1, keepdim=True) + 0.3 * rad[:, -7:].mean(1, keepdim=True)
        yield x, melt


class GlacierMelt(nn.Module):
    def __init__(self, cell: str = "rnn", hidden: int = 24) -> None:
        super().__init__()
        if cell == "rnn":
            self.rnn = nn.RNN(2, hidden, batch_first=True, nonlinearity="relu")
        else:
            self.rnn = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "glacier_melt_forecaster",
    "sgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="a ReLU RNN with its recurrent matrix initialised at 1.05 x identity (the IRNN recipe "
    "with the gain mistyped) over 40-day windows: backprop through time explodes",
)
def h121_glacier_relu_rnn_explodes(ctx: Context) -> None:
    gen = seeded(12106)
    model = GlacierMelt("rnn")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.05 * torch.eye(24))
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, glacier_batches(gen), 80, loss_fn=F.mse_loss, classifier=False)
    g = ctx.grad_norms
    grew = any(not math.isfinite(v) or v > 1000 * g[0] for v in g)
    ctx.check("the gradient norm grew more than 1000x (or overflowed)", grew)
    late = ctx.losses[-1]
    ctx.check("the loss blew up", not math.isfinite(late) or late > 10 * ctx.losses[0])


@scenario(
    "glacier_melt_forecaster",
    "adam",
    "healthy",
    heldout=True,
    note="a GRU melt forecaster with Adam, gradient clipping at 1 and an exponential decay",
)
def h121_glacier_gru_healthy(ctx: Context) -> None:
    gen = seeded(12107)
    model = GlacierMelt("gru")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)

    def before(step: int) -> None:
        if step:
            sched.step()

    # clipping happens inside the loop: backward, clip, step
    batches = glacier_batches(gen)
    ctx.attach(model, opt)
    for step in range(100):
        before(step)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _finite_and_fell(ctx)


# -- sourdough fermentation: a Poisson rate model with an unguarded log -------------------------


def sourdough_batches(gen: torch.Generator, batch: int = 32):
    """Starter temperature, hydration, feed ratio, hours since feed; the target is the count of
    CO2 bubbles seen in a minute (often zero for a cold or young starter)."""
    while True:
        x = torch.randn(batch, 4, generator=gen)
        rate = torch.exp(0.8 * x[:, 0] + 0.4 * x[:, 3] - 1.0)
        yield x, torch.poisson(rate, generator=gen)[:, None]


class Sourdough(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh())
        self.head = nn.Linear(32, 1)
        nn.init.constant_(self.head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # the rate, with no softplus/exp to keep it positive


def poisson_nll_unguarded(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (rate - y * torch.log(rate)).mean()


@scenario(
    "sourdough_fermentation",
    "rmsprop",
    "nonfinite",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="a Poisson NLL on a raw linear rate (no softplus): RMSprop pushes the rate of cold "
    "starters below zero and log(rate) turns NaN",
)
def h121_sourdough_rate_log_nan(ctx: Context) -> None:
    gen = seeded(12108)
    model = Sourdough()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    seen: list[float] = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(float(o.min())))
    fit(
        ctx,
        model,
        opt,
        sourdough_batches(gen),
        150,
        loss_fn=poisson_nll_unguarded,
        classifier=False,
    )
    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.check("a loss went NaN", bool(bad))
    ctx.check("the head's rate went non-positive", min(seen) <= 0)


# -- chord recognition: a chroma CNN under fp16 autocast -------------------------------------------


def chord_batches(gen: torch.Generator, batch: int = 32, scale: float = 1.0):
    """Chromagram excerpts (12 pitch classes x 16 frames) of major/minor triads: 24 classes."""
    while True:
        y = torch.randint(0, 24, (batch,), generator=gen)
        root, minor = y % 12, y // 12
        chroma = 0.1 * torch.rand(batch, 12, 16, generator=gen)
        for off in (0, 7):
            chroma[torch.arange(batch), (root + off) % 12] += 1.0
        third = (root + 4 - minor) % 12
        chroma[torch.arange(batch), third] += 1.0
        yield chroma[:, None] * scale, y


class ChordCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, (3, 3), padding=1)
        self.conv2 = nn.Conv2d(16, 16, (3, 3), padding=1)
        self.head = nn.Linear(16 * 12, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x)).mean(-1)
        return self.head(x.flatten(1))


@scenario(
    "chord_recognition_cnn",
    "sgd_mom",
    "amp_overflow",
    where=("conv1",),
    heldout=True,
    onset=50,
    note="fp16 autocast with a GradScaler; from step 50 the feature pipeline drops its log "
    "compression and feeds raw magnitudes (x3e4): activations overflow fp16 and the scaler "
    "skips step after step",
)
def h121_chord_cnn_raw_magnitudes(ctx: Context) -> None:
    gen = seeded(12109)
    model = ChordCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    normal = chord_batches(gen)
    raw = chord_batches(gen, scale=3e4)

    def batches():
        step = -1
        while True:
            step += 1
            yield next(raw) if step > 50 else next(normal)  # one probe batch comes first

    fit(ctx, model, opt, batches(), 90, scaler=scaler, amp=True)
    s = ctx.scales
    ctx.check("the loss scale fell by more than 2^10 after the switch", s[-1] < s[49] / 2**10)
    skipped = sum(1 for a, b in zip(s[50:], s[51:], strict=False) if b < a)
    ctx.check("the scaler skipped at least 10 steps after the switch", skipped >= 10)
    ctx.check("the run had trained before the switch", ctx.losses[49] < 0.8 * ctx.losses[0])


# -- marathon finish time: a regressor and a batch in the wrong unit ------------------------------


def marathon_batches(gen: torch.Generator, batch: int = 64):
    """Age, weekly km, long-run pace, half-marathon time, elevation (standardised); the target is
    the finish time, standardised."""
    w = torch.tensor([0.2, -0.5, 0.6, 0.9, 0.15])
    while True:
        x = torch.randn(batch, 5, generator=gen)
        y = x @ w + 0.1 * x[:, 1] * x[:, 2] + 0.2 * torch.randn(batch, generator=gen)
        yield x, y[:, None]


@scenario(
    "marathon_finish_regressor",
    "adagrad",
    "data_outlier",
    heldout=True,
    onset=70,
    note="one batch of finish times arrives in raw seconds from a second timing feed, not "
    "standardised",
)
def h121_marathon_seconds_batch(ctx: Context) -> None:
    gen = seeded(12110)
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 70:
            return x, 14400.0 + 1800.0 * y  # seconds, about 4 h +- 30 min
        return x, y

    fit(
        ctx,
        model,
        opt,
        marathon_batches(gen),
        120,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    ctx.check(
        "the outlier batch's loss is 1e4x the usual",
        ctx.losses[70] > 1e4 * _median(ctx.losses[55:70]),
    )
    ctx.check("every loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- antibody affinity: a per-layer learning-rate bug --------------------------------------------


def antibody_batches(gen: torch.Generator, batch: int = 64, length: int = 12):
    """CDR-H3 sequences (20 amino acids, one-hot); the target is log affinity from a hidden
    position-specific scoring matrix."""
    pssm = torch.randn(length, 20, generator=torch.Generator().manual_seed(121))
    while True:
        seq = torch.randint(0, 20, (batch, length), generator=gen)
        onehot = F.one_hot(seq, 20).float()
        y = (onehot * pssm).sum((1, 2)) / math.sqrt(length)
        yield onehot.flatten(1), y[:, None] + 0.1 * torch.randn(batch, 1, generator=gen)


class AntibodyAffinity(nn.Module):
    def __init__(self, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Linear(20 * length, 64)
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x)))


@scenario(
    "antibody_affinity_regressor",
    "adamax",
    "update_ratio_out_of_range",
    where=("embed",),
    heldout=True,
    onset=60,
    note="from step 60 a per-layer learning-rate multiplier meant for the biases (x300) is "
    "applied to the embedding's group: each Adamax step moves it by a large share of its norm",
)
def h121_antibody_embed_lr_multiplier(ctx: Context) -> None:
    gen = seeded(12111)
    model = AntibodyAffinity()
    embed = list(model.embed.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("embed")]
    opt = torch.optim.Adamax([{"params": embed}, {"params": others}], lr=2e-3)
    w = model.embed.weight
    ratios: list[float] = []
    prev: list[torch.Tensor] = []

    def before(step: int) -> None:
        if step == 60:
            opt.param_groups[0]["lr"] = 0.6
        if prev:
            ratios.append(float((w.detach() - prev[0]).norm() / prev[0].norm()))
            prev.clear()
        prev.append(w.detach().clone())

    fit(
        ctx,
        model,
        opt,
        antibody_batches(gen),
        110,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    early = sum(ratios[30:58]) / 28
    late = sum(ratios[60:70]) / 10
    ctx.check("embed's update/weight ratio was small before (< 0.01)", early < 0.01)
    ctx.check("then above 0.1 per step over the next 10 steps", late > 0.1)


# -- tsunami arrival time: a warm restart past the stability limit --------------------------------


def tsunami_data(gen: torch.Generator, n: int = 256):
    """Epicentre distance, mean ocean depth along the path, bathymetric roughness (scaled); the
    target is the arrival time from the shallow-water speed sqrt(g h)."""
    dist = 0.2 + torch.rand(n, generator=gen) * 2.0
    depth = 0.5 + torch.rand(n, generator=gen) * 3.5
    rough = torch.rand(n, generator=gen)
    t = dist / torch.sqrt(depth) * (1 + 0.1 * rough)
    x = torch.stack([dist, depth, rough], 1)
    return x, t[:, None]


def top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "tsunami_arrival_regressor",
    "asgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="full-batch ASGD; a warm restart at step 60 sets the learning rate past 2/lambda_max of "
    "the loss surface: the loss oscillates and climbs",
)
def h121_tsunami_warm_restart(ctx: Context) -> None:
    gen = seeded(12112)
    x, y = tsunami_data(gen)
    model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.ASGD(model.parameters(), lr=0.02, t0=1e9)
    ctx.attach(model, opt)
    limit = []
    for step in range(110):
        if step == 60:
            eig = top_hessian_eig(model, lambda: F.mse_loss(model(x), y))
            limit.append(2.0 / eig)
            for g in opt.param_groups:
                g["lr"] = 3.0 * limit[0]
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the restart lr is past 2/lambda_max", opt.param_groups[0]["lr"] > limit[0])
    ctx.check("the loss fell before the restart", ctx.losses[59] < 0.7 * ctx.losses[0])
    after = [v if math.isfinite(v) else 1e30 for v in ctx.losses[60:]]
    ctx.check("the loss then climbed 10x", max(after) > 10 * ctx.losses[59])


# -- playlist next track: dead ReLUs after a learning-rate burst ---------------------------------


def playlist_batches(gen: torch.Generator, tracks: int = 200, batch: int = 64):
    """Sessions of 5 tracks drawn from one of 20 moods; the next track is of the same mood."""
    mood_of = torch.arange(tracks) % 20
    while True:
        mood = torch.randint(0, 20, (batch,), generator=gen)
        pick = torch.randint(0, tracks // 20, (batch, 6), generator=gen)
        ids = pick * 20 + mood[:, None]
        assert bool((mood_of[ids] == mood[:, None]).all())
        yield ids[:, :5], ids[:, 5]


class PlaylistNext(nn.Module):
    def __init__(self, tracks: int = 200, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.tracks = nn.Embedding(tracks, dim)
        self.hidden = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, tracks)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        return F.relu(self.hidden(self.tracks(ids).mean(1)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


@scenario(
    "playlist_next_track",
    "nesterov",
    "loss_of_plasticity",
    where=("hidden",),
    heldout=True,
    onset=80,
    note="a warm restart with the peak learning rate 30x too high for 5 steps knocks the hidden "
    "ReLU layer's biases negative: most units die and the recommender stops learning",
)
def h121_playlist_dead_relus(ctx: Context) -> None:
    gen = seeded(12113)
    model = PlaylistNext()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True)
    probe = next(playlist_batches(torch.Generator().manual_seed(7)))[0]
    dead: dict[int, float] = {}

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 10.0 if 80 <= step < 85 else 0.3
        if step in (79, 139):
            with torch.no_grad():
                dead[step] = dead_fraction(model.features(probe))

    fit(ctx, model, opt, playlist_batches(gen), 140, before=before)
    ctx.check("under 20% of hidden units dead before", dead[79] < 0.2)
    ctx.check("over 60% dead after the burst", dead[139] > 0.6)
    ctx.check(
        "the loss had fallen before the burst", _median(ctx.losses[70:80]) < 0.8 * ctx.losses[0]
    )


# -- wildfire spread: a cellular model with a glitched wind sensor -------------------------------


def wildfire_batches(gen: torch.Generator, batch: int = 64, size: int = 16):
    """Channels: fuel load, burning now, wind-speed anomaly; the target is next hour's burning map (a
    burning cell ignites fuelled neighbours, more so downwind)."""
    kernel = torch.tensor([[0.2, 0.2, 0.2], [0.6, 0.0, 0.2], [0.2, 0.2, 0.2]])
    while True:
        fuel = (torch.rand(batch, 1, size, size, generator=gen) < 0.7).float()
        burning = (torch.rand(batch, 1, size, size, generator=gen) < 0.1).float() * fuel
        wind = torch.rand(batch, 1, size, size, generator=gen)
        spread = F.conv2d(burning, kernel[None, None], padding=1) * (0.5 + 0.5 * wind)
        nxt = ((spread > 0.3).float() * fuel).clamp(max=1) + burning
        yield torch.cat([fuel, burning, 4 * (wind - 0.5)], 1), nxt.clamp(max=1)


class WildfireCA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.local = nn.Conv2d(2, 16, 3, padding=1)
        self.update = nn.Conv2d(16, 1, 1)
        self.wind = nn.Conv2d(1, 1, 3, padding=1)  # wind pushes the ignition logit directly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.update(torch.tanh(self.local(x[:, :2]))) + self.wind(x[:, 2:])


@scenario(
    "wildfire_spread_ca",
    "adadelta",
    "gradient_spike",
    where=("wind",),
    heldout=True,
    onset=90,
    note="one grid at step 90 carries a glitched wind-sensor cell (999, the logger's missing "
    "value): averaged over the grid the loss barely moves, but the wind convolution's gradient "
    "spikes",
)
def h121_wildfire_wind_glitch(ctx: Context) -> None:
    gen = seeded(12114)
    model = WildfireCA()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:
            x = x.clone()
            x[0, 2, 4:12, 4:12] = 999.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        wildfire_batches(gen),
        130,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        classifier=False,
    )
    g = ctx.grad_norms
    ctx.check("the gradient norm at step 90 is 10x the usual", g[90] > 10 * _median(g[75:90]))
    ctx.check(
        "the loss at step 90 stayed under 3x", ctx.losses[90] < 3 * _median(ctx.losses[75:90])
    )
    ctx.check("every loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- grape ripeness: full-batch Rprop on separable spectra ---------------------------------------


def grape_spectra(gen: torch.Generator, n: int = 240, bands: int = 64):
    """Near-infrared reflectance spectra; ripeness (4 stages) shifts the sugar and chlorophyll
    absorption bands."""
    y = torch.arange(n) % 4
    wl = torch.linspace(0, 1, bands)
    sugar = torch.exp(-((wl - 0.7) ** 2) / 0.005)
    chloro = torch.exp(-((wl - 0.3) ** 2) / 0.01)
    stage = y.float()[:, None] / 3
    x = 1.0 - 0.4 * stage * sugar - 0.4 * (1 - stage) * chloro
    return x + 0.02 * torch.randn(n, bands, generator=gen), y


@scenario(
    "grape_ripeness_spectral",
    "rprop",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="full-batch Rprop on separable spectra: its step sizes keep growing while the gradient "
    "signs agree, the logit margins pass float32's softmax resolution and the probabilities of "
    "the right class round to exactly 1",
)
def h121_grape_rprop_margins(ctx: Context) -> None:
    gen = seeded(12115)
    x, y = grape_spectra(gen)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(64, 32), nn.GELU()))
    model.add_module("head", nn.Linear(32, 4))
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3, step_sizes=(1e-6, 5.0))

    def batches():
        while True:
            yield x, y

    fit(ctx, model, opt, batches(), 150)
    with torch.no_grad():
        out = model(x)
    ctx.check("over half the rows collapse to p == 1.0", collapsed_fraction(out, y) > 0.5)
    ctx.check("the training accuracy is 100%", bool((out.argmax(1) == y).all()))


# -- bee waggle dance: a decoder of dance runs to forage vectors ---------------------------------


def waggle_batches(gen: torch.Generator, batch: int = 64):
    """Waggle-run duration, body angle to vertical (cos, sin), run count, a noisy sun azimuth
    (cos, sin); the target is the forage site's distance and direction (cos, sin)."""
    while True:
        dur = 0.2 + 2.0 * torch.rand(batch, generator=gen)
        angle = 6.283 * torch.rand(batch, generator=gen)
        sun = 6.283 * torch.rand(batch, generator=gen)
        runs = torch.randint(3, 20, (batch,), generator=gen).float()
        noise = 0.15 / runs.sqrt()
        bearing = angle + sun + noise * torch.randn(batch, generator=gen)
        x = torch.stack([dur, angle.cos(), angle.sin(), runs / 20, sun.cos(), sun.sin()], 1)
        y = torch.stack([dur * 0.75, bearing.cos(), bearing.sin()], 1)
        yield x, y


@scenario(
    "bee_waggle_decoder",
    "nadam",
    "healthy",
    heldout=True,
    note="an MLP decoding waggle runs into forage vectors, NAdam with a cosine schedule",
)
def h121_bee_waggle_healthy(ctx: Context) -> None:
    gen = seeded(12116)
    model = nn.Sequential(
        nn.Linear(6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 3)
    )
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 150)
    fit(
        ctx,
        model,
        opt,
        waggle_batches(gen),
        150,
        loss_fn=F.mse_loss,
        before=lambda step: sched.step() if step else None,
        classifier=False,
    )
    _finite_and_fell(ctx)
