"""Held-out scenarios, set 41 (``h41_``): families no earlier set has.

Hugging Face GLM-4-MoE, BitNet and DeepSeek-V2 causal LMs, an UperNet segmenter on a small
ConvNeXt backbone and a ViTDet backbone with a linear head (digits), all from configs; an
EDM-preconditioned diffusion denoiser (digits, fp16 autocast), a Graph WaveNet traffic forecaster
on a generated road network, a TGN-style temporal-graph memory net on generated events, an ICM
curiosity module (forward and inverse models) on a generated ring world, a ladder VAE (digits), a
differentiable neural computer (DNC) on a generated recall task and a Galerkin-transformer neural
operator on a generated Poisson problem.

Optimizers: SGD, SGD with momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam
and steadygrad.optim's AdaBelief and Lion.

Written without reading steadygrad's detectors, diagnosis or monitor and never run on steadygrad:
each scenario was tuned only until its own ``ctx.check`` held (the fault really happened), or,
for a healthy control, until it trained normally, with a stand-in context that attaches nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- a training loop for models whose loss is more than ``loss_fn(model(x), y)`` ---------------


def _train(ctx: Context, model: nn.Module, opt, steps: int, step_loss, *, probe=None, before=None):
    """``step_loss(step)`` returns (reported loss, backpropagated loss, classifier targets or
    None); ``before(step)`` runs first (schedules, injected faults)."""
    ctx.attach(model, opt, probe=probe)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total, y = step_loss(step)
        if y is not None:
            ctx.targets(y)
        total.backward()
        ctx.grad_norms.append(_grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _grad_norm(model: nn.Module) -> float:
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


# -- Hugging Face causal LMs from configs ---------------------------------------------------------


def _deepseek_v2():
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    config = DeepseekV2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=64,
        n_group=1,
        topk_group=1,
        attn_implementation="eager",
    )
    return DeepseekV2ForCausalLM(config)


def _glm4_moe():
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    config = Glm4MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        max_position_embeddings=64,
        n_group=1,
        topk_group=1,
        tie_word_embeddings=False,
    )
    return Glm4MoeForCausalLM(config)


def _bitnet():
    from transformers import BitNetConfig, BitNetForCausalLM

    config = BitNetConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    return BitNetForCausalLM(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _lm_fit(ctx: Context, model, opt, gen, steps: int, **kw) -> None:
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        steps,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        **kw,
    )


def _max_attention(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over queries of the largest attention probability (1.0: one key takes it all)."""
    with torch.no_grad():
        probs = model(x, output_attentions=True).attentions
    return float(torch.stack([p.amax(-1).mean() for p in probs]).max())


@scenario(
    "h41_hf_deepseek_v2_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention projections in a group with a 100x learning rate and no weight decay",
)
def h41_attn_group_lr_deepseek_v2(ctx: Context) -> None:
    """The query and key/value up-projections of the multi-head latent attention were put in
    their own parameter group "to learn faster", with 100x the rate and no decay: the query-key
    products grow step by step until each query attends to one key."""
    gen = seeded(4101)
    model = _deepseek_v2()
    attn = [
        p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "kv_b_proj.weight"))
    ]
    ids = {id(p) for p in attn}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": attn, "lr": 1e-1, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.1,
    )
    probe = next(text_batches(seeded(4199), batch=8, length=32))[0]
    start = _max_attention(model, probe)
    norm0 = float(torch.stack([p.norm() for p in attn]).norm())
    _lm_fit(ctx, model, opt, gen, 300)
    end = _max_attention(model, probe)
    norm = float(torch.stack([p.norm() for p in attn]).norm())
    ctx.check(f"attention weights grew ({norm0:.1f} -> {norm:.1f})", norm > 10 * norm0)
    ctx.check(f"attention sharpened ({start:.2f} -> {end:.2f})", end > 0.85 and start < 0.5)


@scenario(
    "h41_hf_bitnet_lm",
    "sg_adabelief",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=60,
    note="a logit-norm penalty switched on at step 60 with the wrong sign",
)
def h41_logit_penalty_sign_bitnet(ctx: Context) -> None:
    """From step 60 a logit-norm penalty (meant to keep the output logits small) is added as
    ``loss - coef * mean(logits**2)``: it rewards large logits, the output logits grow step by
    step and the cross-entropy climbs as the model grows overconfident."""
    gen = seeded(4102)
    model = _bitnet()
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3)
    spread: list[float] = []
    penalty: list[torch.Tensor] = [torch.zeros(())]

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(x).logits
        penalty[0] = logits.float().pow(2).mean()
        spread.append(float(logits.detach().std()))
        return logits

    def flipped(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss if step < 60 else loss - 5e-2 * penalty[0]

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        360,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=flipped,
    )
    spread = spread[1:]  # the first forward is the probe batch's
    ctx.check(
        f"logit spread grew ({spread[60]:.1f} -> {spread[-1]:.1f})", spread[-1] > 5 * spread[60]
    )
    ctx.check("cross-entropy climbed", _median(ctx.losses[-10:]) > _median(ctx.losses[50:60]) + 1.0)


@scenario(
    "h41_hf_glm4_moe_lm",
    "nadam",
    "update_ratio_out_of_range",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="resize_token_embeddings called after the optimizer was built",
)
def h41_resize_after_optimizer_glm4_moe(ctx: Context) -> None:
    """Eight special tokens are added and ``resize_token_embeddings`` is called after the
    optimizer was built. The input embedding is resized in place (the optimizer still holds it),
    but the untied output head is a new ``nn.Linear``: it gets gradients and is never updated."""
    gen = seeded(4103)
    model = _glm4_moe()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    model.resize_token_embeddings(136)
    emb = model.model.embed_tokens.weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    _lm_fit(ctx, model, opt, gen, 200)
    ctx.check("head unchanged", torch.equal(head, model.lm_head.weight))
    ctx.check("embedding trained", not torch.equal(emb, model.model.embed_tokens.weight))
    ctx.check("the rest learned a little", _median(ctx.losses[-10:]) < ctx.losses[0] - 0.2)


@scenario("h41_hf_glm4_moe_lm", "adagrad", "healthy", heldout=True)
def h41_healthy_glm4_moe_adagrad(ctx: Context) -> None:
    gen = seeded(4104)
    model = _glm4_moe()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    _lm_fit(ctx, model, opt, gen, 200)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < ctx.losses[0] - 1.0)


# -- UperNet segmenter on a small ConvNeXt backbone ----------------------------------------------


def _upernet():
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(
        num_channels=1,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        patch_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        num_labels=3,
        use_auxiliary_head=False,
        pool_scales=[1, 2],
    )
    return UperNetForSemanticSegmentation(config)


def _scenes(gen: torch.Generator, batch: int = 8, size: int = 32):
    """Generated scenes: a bright disc and a dim square on noise; labels 0 background, 1 disc,
    2 square."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        c = torch.randint(6, size - 6, (batch, 4), generator=gen)
        r = torch.randint(3, 7, (batch, 2), generator=gen)
        disc = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 < r[
            :, 0, None, None
        ] ** 2
        square = ((yy - c[:, 2, None, None]).abs() < r[:, 1, None, None]) & (
            (xx - c[:, 3, None, None]).abs() < r[:, 1, None, None]
        )
        y = torch.where(disc, 1, torch.where(square, 2, 0))
        x = 0.3 * torch.randn(batch, 1, size, size, generator=gen)
        x = x + 1.0 * disc[:, None] + 0.5 * square[:, None]
        yield x, y


@scenario(
    "h41_hf_upernet_segmenter",
    "sgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=40,
    note="a hand-written L2 penalty subtracted instead of added",
)
def h41_l2_penalty_sign_upernet(ctx: Context) -> None:
    """From step 40 (after warm-up) a hand-written L2 penalty is added to the loss with the
    wrong sign: every weight grows a few percent each step and the per-pixel loss creeps up to
    to over five times its best by step ~150 and stays several times above it (no NaN: the
    ConvNeXt LayerNorms and the head's BatchNorms absorb most of the growth)."""
    gen = seeded(4105)
    model = _upernet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 40:
            return loss
        return loss - 0.4 * sum((w**2).sum() for w in weights)

    fit(
        ctx,
        model,
        opt,
        _scenes(gen),
        260,
        forward=lambda m, x: m(pixel_values=x).logits,
        classifier=False,
        extra_loss=penalty,
    )
    best = min(_median(ctx.losses[t - 5 : t]) for t in range(5, 60))
    late = _median(ctx.losses[-100:])
    ctx.check(f"loss climbed (best {best:.2f}, last 100 {late:.2f})", late > 2.5 * best)


# -- ViTDet backbone + linear head on digits -----------------------------------------------------


class VitDetDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import VitDetConfig, VitDetModel

        config = VitDetConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            image_size=8,
            pretrain_image_size=8,
            patch_size=2,
            num_channels=1,
        )
        self.backbone = VitDetModel(config)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x.reshape(-1, 1, 8, 8)).last_hidden_state
        return self.head(feats.mean((2, 3)))


@scenario("h41_hf_vitdet_classifier", "sg_lion", "healthy", heldout=True)
def h41_healthy_vitdet_lion(ctx: Context) -> None:
    gen = seeded(4106)
    model = VitDetDigits()
    opt = sgo.Lion(model.parameters(), lr=1e-3, weight_decay=0.1, fused=False)
    fit(ctx, model, opt, digit_batches(gen, 48), 200)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * ctx.losses[0])


# -- Graph WaveNet traffic forecaster ------------------------------------------------------------


class GraphWaveNet(nn.Module):
    """Gated dilated temporal convolutions + diffusion over a fixed and an adaptive adjacency,
    skip connections, a 1x1 output head. Input (batch, 1, nodes, time)."""

    def __init__(self, nodes: int, adj: torch.Tensor, dim: int = 16, horizon: int = 3) -> None:
        super().__init__()
        self.register_buffer("adj", adj)
        self.node_src = nn.Parameter(torch.randn(nodes, 4) * 0.5)
        self.node_dst = nn.Parameter(torch.randn(4, nodes) * 0.5)
        self.start = nn.Conv2d(1, dim, 1)
        self.filters = nn.ModuleList(
            nn.Conv2d(dim, dim, (1, 2), dilation=(1, d)) for d in (1, 2, 4)
        )
        self.gates = nn.ModuleList(nn.Conv2d(dim, dim, (1, 2), dilation=(1, d)) for d in (1, 2, 4))
        self.mix = nn.ModuleList(nn.Conv2d(3 * dim, dim, 1) for _ in range(3))
        self.skips = nn.ModuleList(nn.Conv2d(dim, 2 * dim, 1) for _ in range(3))
        self.end1 = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.end2 = nn.Conv2d(2 * dim, horizon, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adaptive = torch.softmax(F.relu(self.node_src @ self.node_dst), dim=1)
        h = self.start(x)
        skip = 0
        for filt, gate, mix, sk in zip(self.filters, self.gates, self.mix, self.skips, strict=True):
            res = h
            h = torch.tanh(filt(h)) * torch.sigmoid(gate(h))
            spread = [torch.einsum("bcnt,nm->bcmt", h, a) for a in (self.adj, adaptive)]
            h = mix(torch.cat([h, *spread], 1)) + res[..., -h.shape[-1] :]
            skip = sk(h[..., -1:]) + (skip[..., -1:] if torch.is_tensor(skip) else 0)
        out = self.end2(F.relu(self.end1(F.relu(skip))))
        return out[..., 0].transpose(1, 2)  # (batch, nodes, horizon)


def _traffic(gen: torch.Generator, nodes: int = 10, batch: int = 16, window: int = 12):
    """Generated speeds on a ring road: a daily cycle, a congestion wave moving along the ring,
    noise; standardised. Yields (x (batch, 1, nodes, window), y (batch, nodes, 3))."""
    t = torch.arange(4000, dtype=torch.float32)
    phase = torch.arange(nodes, dtype=torch.float32)[:, None] * 0.4
    speed = torch.sin(2 * math.pi * t / 96 - phase) + 0.5 * torch.sin(
        2 * math.pi * t / 31 - 2 * phase
    )
    speed = speed + 0.1 * torch.randn(speed.shape, generator=gen)
    speed = (speed - speed.mean()) / speed.std()
    while True:
        s = torch.randint(0, 4000 - window - 3, (batch,), generator=gen)
        idx = s[:, None] + torch.arange(window + 3)
        win = speed[:, idx].permute(1, 0, 2)  # batch, nodes, time
        yield win[:, None, :, :window], win[:, :, window:]


def _ring(nodes: int) -> torch.Tensor:
    adj = torch.zeros(nodes, nodes)
    for i in range(nodes):
        adj[i, (i + 1) % nodes] = adj[i, i - 1] = 0.5
    return adj


@scenario(
    "h41_graph_wavenet_traffic",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=0,
    note="linear warm-up to a peak rate typed 100x too large",
)
def h41_warmup_overshoot_graph_wavenet(ctx: Context) -> None:
    """Linear warm-up over 300 steps to a peak rate of 0.4 (meant 0.004): the run trains while
    the rate is small and breaks once it passes the stability limit, mid warm-up."""
    gen = seeded(4107)
    model = GraphWaveNet(10, _ring(10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.4 * min(1.0, (step + 1) / 300)

    fit(ctx, model, opt, _traffic(gen), 300, loss_fn=F.mse_loss, classifier=False, before=warmup)
    finite = _finite(ctx.losses)
    first_bad = next((i for i, f in enumerate(finite) if not f or ctx.losses[i] > 20), None)
    ctx.check(
        f"learned, then broke mid warm-up (step {first_bad})",
        first_bad is not None
        and first_bad > 60
        and min(ctx.losses[:first_bad]) < 0.5 * ctx.losses[0],
    )


@scenario(
    "h41_graph_wavenet_traffic",
    "adam",
    "data_outlier",
    diverges=160,
    heldout=True,
    onset=160,
    note="one batch from a feed that reports mm/s",
)
def h41_unit_glitch_batch_graph_wavenet(ctx: Context) -> None:
    """At step 160 one batch comes from a sensor feed that switched units (speeds x1000 for
    three sensors, inputs and targets alike): one huge loss, then training carries on."""
    gen = seeded(4108)
    model = GraphWaveNet(10, _ring(10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def glitch(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:
            x, y = x.clone(), y.clone()
            x[:, :, :3] *= 1000.0
            y[:, :3] *= 1000.0
        return x, y

    fit(ctx, model, opt, _traffic(gen), 260, loss_fn=F.mse_loss, classifier=False, alter=glitch)
    ctx.check("loss spiked at 160", ctx.losses[160] > 100 * max(ctx.losses[150:160]))
    ctx.check("finite after", all(_finite(ctx.losses)))


# -- TGN-style temporal-graph memory net ---------------------------------------------------------


class LogTimeEncoder(nn.Module):
    """cos(w log dt + b): a time encoding on a log scale (seconds to weeks)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.freq = nn.Linear(1, dim)

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.freq(torch.log(dt)[:, None]))


class TemporalMemoryNet(nn.Module):
    """Per-node memory updated by a GRU cell from each event's message (the other node's
    memory, the time encoding); a link predictor scores (source, destination) embeddings."""

    def __init__(self, nodes: int, dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(nodes, dim))
        self.register_buffer("last_seen", torch.zeros(nodes))
        self.node_feat = nn.Embedding(nodes, dim)
        self.time_enc = LogTimeEncoder(8)
        self.message = nn.Linear(2 * dim + 8, dim)
        self.updater = nn.GRUCell(dim, dim)
        self.embed = nn.Linear(dim + 8, dim)
        self.link = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def score(self, src, dst, t):
        dt = t - self.last_seen[src]
        enc = self.time_enc(dt)
        hs = self.embed(torch.cat([self.memory[src] + self.node_feat(src), enc], 1))
        hd = self.embed(torch.cat([self.memory[dst] + self.node_feat(dst), enc], 1))
        return self.link(torch.cat([hs, hd], 1))[:, 0], enc

    def update(self, src, dst, t, enc):
        msg = self.message(torch.cat([self.memory[src], self.memory[dst], enc], 1))
        new = self.updater(msg, self.memory[src])
        with torch.no_grad():  # memory carried across batches without gradient (TGN)
            self.memory[src] = new.detach()
            self.last_seen[src] = t


def _events(gen: torch.Generator, nodes: int = 24, batch: int = 32):
    """A generated interaction stream: node i talks mostly to i+1 and i+2 (mod nodes),
    timestamps strictly increasing; yields (src, dst, t, negative dst)."""
    t = 0.0
    while True:
        src = torch.randint(0, nodes, (batch,), generator=gen)
        hop = 1 + (torch.rand(batch, generator=gen) < 0.5).long()
        dst = (src + hop) % nodes
        gaps = torch.rand(batch, generator=gen) * 5 + 0.5
        times = t + torch.cumsum(gaps, 0)
        t = float(times[-1])
        neg = torch.randint(0, nodes, (batch,), generator=gen)
        yield src, dst, times, neg


def _tgn_loss(model: TemporalMemoryNet, batch):
    src, dst, t, neg = batch
    pos, enc = model.score(src, dst, t)
    negs, _ = model.score(src, neg, t)
    loss = F.binary_cross_entropy_with_logits(
        torch.cat([pos, negs]), torch.cat([torch.ones_like(pos), torch.zeros_like(negs)])
    )
    model.update(src, dst, t, enc)
    return loss


@scenario(
    "h41_tgn_temporal_memory",
    "radam",
    "nonfinite",
    where="time_enc",
    diverges=170,
    heldout=True,
    onset=170,
    note="two events share a timestamp",
)
def h41_zero_gap_log_time_tgn(ctx: Context) -> None:
    """At step 170 one event repeats the timestamp of its source's previous event (a duplicated
    log line): dt = 0, the log time encoding gives -inf, its cosine NaN, and the NaN enters the
    loss and, through the memory update, every later step."""
    gen = seeded(4109)
    model = TemporalMemoryNet(24)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    stream = _events(gen)

    def step_loss(step: int):
        src, dst, t, neg = next(stream)
        if step == 170:
            t = t.clone()
            t[0] = model.last_seen[src[0]]
        loss = _tgn_loss(model, (src, dst, t, neg))
        return loss, loss, None

    _train(ctx, model, opt, 220, step_loss)
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    ctx.check("learned before", _median(ctx.losses[160:170]) < ctx.losses[0] - 0.1)


# -- ICM curiosity module ------------------------------------------------------------------------


class CuriosityModule(nn.Module):
    """Intrinsic curiosity module: a feature net, an inverse model (which action took s to s')
    and a forward model (predict phi(s') from phi(s) and the action)."""

    def __init__(self, obs: int, actions: int, dim: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.actions, self.temperature = actions, temperature
        self.features = nn.Sequential(nn.Linear(obs, dim), nn.ELU(), nn.Linear(dim, dim))
        self.inverse = nn.Sequential(nn.Linear(2 * dim, dim), nn.ELU(), nn.Linear(dim, actions))
        self.forward_model = nn.Sequential(
            nn.Linear(dim + actions, dim), nn.ELU(), nn.Linear(dim, dim)
        )

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        s, s2 = pair.chunk(2, dim=1)
        return self.inverse(torch.cat([self.features(s), self.features(s2)], 1)) / self.temperature

    def losses(self, pair: torch.Tensor, a: torch.Tensor):
        s, s2 = pair.chunk(2, dim=1)
        f, f2 = self.features(s), self.features(s2)
        inv = F.cross_entropy(self.inverse(torch.cat([f, f2], 1)) / self.temperature, a)
        pred = self.forward_model(torch.cat([f.detach(), F.one_hot(a, self.actions).float()], 1))
        fwd = 0.5 * (pred - f2.detach()).pow(2).sum(1).mean()
        return inv, fwd


def _ring_world(gen: torch.Generator, n: int = 32, cells: int = 12):
    """A fixed set of ``n`` transitions on a ring of ``cells``: one-hot position, four actions
    (-1, +1, +3, stay); (s, s') concatenated, and the action."""
    pos = torch.randint(0, cells, (n,), generator=gen)
    a = torch.randint(0, 4, (n,), generator=gen)
    nxt = (pos + torch.tensor([-1, 1, 3, 0])[a]) % cells
    pair = torch.cat([F.one_hot(pos, cells), F.one_hot(nxt, cells)], 1).float()
    return pair, a


@scenario(
    "h41_icm_curiosity",
    "adamax",
    "softmax_collapse",
    where="inverse.2",
    diverges=None,
    heldout=True,
    note="inverse-model temperature 0.1 copied from a contrastive setup, small fixed buffer",
)
def h41_inverse_model_collapse_icm(ctx: Context) -> None:
    """The curiosity module is pre-trained on a small fixed replay buffer of 32 transitions for
    hundreds of epochs, its inverse model's logits divided by a temperature of 0.1 (copied from
    a contrastive loss): the action logits grow until float32 softmax gives the true action
    exactly 1.0 and those samples stop contributing gradient."""
    gen = seeded(4110)
    pair, a = _ring_world(gen)
    model = CuriosityModule(pair.shape[1] // 2, 4, temperature=0.1)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2, betas=(0.9, 0.9))

    def step_loss(step: int):
        inv, fwd = model.losses(pair, a)
        return inv, 0.8 * inv + 0.2 * fwd, a

    _train(ctx, model, opt, 600, step_loss)
    with torch.no_grad():
        frac = _collapsed(model(pair), a)
    ctx.check(f"softmax exactly 1.0 on {frac:.0%} of the buffer", frac >= 0.5)


def _collapsed(logits: torch.Tensor, y: torch.Tensor) -> float:
    p = torch.softmax(logits.float(), -1)
    return float((p.gather(1, y[:, None]) == 1.0).float().mean())


# -- ladder VAE ----------------------------------------------------------------------------------


class LadderVAE(nn.Module):
    """Two stochastic layers; the top-down pass merges the bottom-up estimate with the prior by
    precision weighting (Sønderby et al. 2016). Digits, Bernoulli likelihood."""

    def __init__(self, z1: int = 8, z2: int = 4, h: int = 64) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Linear(64, h), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Linear(h, h // 2), nn.ReLU())
        self.q1 = nn.Linear(h, 2 * z1)
        self.q2 = nn.Linear(h // 2, 2 * z2)
        self.p1 = nn.Sequential(nn.Linear(z2, h // 2), nn.ReLU(), nn.Linear(h // 2, 2 * z1))
        self.dec = nn.Sequential(nn.Linear(z1, h), nn.ReLU(), nn.Linear(h, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.enc1(x)
        d2 = self.enc2(d1)
        mu2, lv2 = self.q2(d2).chunk(2, 1)
        z2 = mu2 + torch.randn_like(mu2) * (0.5 * lv2).exp()
        mu_p, lv_p = self.p1(z2).chunk(2, 1)
        mu_q, lv_q = self.q1(d1).chunk(2, 1)
        prec_q, prec_p = (-lv_q).exp(), (-lv_p).exp()
        var = 1 / (prec_q + prec_p)
        mu1 = var * (mu_q * prec_q + mu_p * prec_p)
        z1 = mu1 + torch.randn_like(mu1) * var.sqrt()
        logits = self.dec(z1)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl2 = 0.5 * (mu2**2 + lv2.exp() - 1 - lv2).sum(1)
        kl1 = 0.5 * (lv_p - var.log() + (var + (mu1 - mu_p) ** 2) / lv_p.exp() - 1).sum(1)
        return (rec + kl1 + kl2).mean()


def _vae_fit(ctx: Context, model: LadderVAE, opt, gen, steps: int, before=None) -> None:
    batches = digit_batches(gen, 64)

    def step_loss(step: int):
        x, _ = next(batches)
        loss = model(x) / 64.0  # per pixel
        return loss, loss, None

    _train(ctx, model, opt, steps, step_loss, before=before)


@scenario(
    "h41_ladder_vae",
    "sgd_mom",
    "loss_of_plasticity",
    where=("enc2", "enc2.0", "enc2.1"),
    diverges=None,
    heldout=True,
    onset=150,
    note="resumed from a checkpoint whose enc2 bias got the log-variance bias",
)
def h41_bad_resume_bias_ladder_vae(ctx: Context) -> None:
    """At step 150 the run resumes from a checkpoint written by a conversion script that mapped
    the top encoder's bias onto a log-variance bias of -30: every ReLU unit of ``enc2`` is dead
    from then on and gets no gradient to come back; the top stochastic layer goes unused."""
    gen = seeded(4111)
    model = LadderVAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def resume(step: int) -> None:
        if step == 150:
            with torch.no_grad():
                model.enc2[0].bias.fill_(-30.0)

    _vae_fit(ctx, model, opt, gen, 300, before=resume)
    x, _ = digits()
    with torch.no_grad():
        dead = dead_fraction(model.enc2(model.enc1(x[:256])))
    ctx.check(f"enc2 dead ({dead:.0%})", dead == 1.0)
    ctx.check("learned before", _median(ctx.losses[140:150]) < 0.7 * ctx.losses[0])


@scenario("h41_ladder_vae", "adam", "healthy", heldout=True)
def h41_healthy_ladder_vae_adam(ctx: Context) -> None:
    gen = seeded(4112)
    model = LadderVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _vae_fit(ctx, model, opt, gen, 250)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.7 * ctx.losses[0])


# -- differentiable neural computer --------------------------------------------------------------


class DNC(nn.Module):
    """A reduced DNC: an LSTM controller, content-addressed memory with one write and one read
    head (erase and add vectors), the read vector fed back to the controller and to the
    output layer."""

    def __init__(self, inp: int, out: int, hidden: int = 32, slots: int = 8, width: int = 8):
        super().__init__()
        self.slots, self.width = slots, width
        self.controller = nn.LSTMCell(inp + width, hidden)
        # write key, strength, erase, add; read key, strength
        self.interface = nn.Linear(hidden, 4 * width + 2)
        self.output = nn.Linear(hidden + width, out)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        b, steps, _ = seq.shape
        h = c = seq.new_zeros(b, self.controller.hidden_size)
        mem = seq.new_full((b, self.slots, self.width), 1e-3)
        read = seq.new_zeros(b, self.width)
        outs = []
        w = self.width
        for t in range(steps):
            h, c = self.controller(torch.cat([seq[:, t], read], 1), (h, c))
            i = self.interface(h)
            wkey, wstr, erase, add = (
                i[:, :w],
                i[:, w : w + 1],
                i[:, w + 1 : 2 * w + 1],
                i[:, 2 * w + 1 : 3 * w + 1],
            )
            rkey, rstr = i[:, 3 * w + 1 : 4 * w + 1], i[:, 4 * w + 1 :]
            ww = self._address(mem, wkey, wstr)
            mem = (
                mem * (1 - ww[:, :, None] * torch.sigmoid(erase)[:, None])
                + ww[:, :, None] * add[:, None]
            )
            read = (self._address(mem, rkey, rstr)[:, :, None] * mem).sum(1)
            outs.append(self.output(torch.cat([h, read], 1)))
        return torch.stack(outs, 1)

    @staticmethod
    def _address(mem: torch.Tensor, key: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        sim = F.cosine_similarity(mem, key[:, None], dim=-1, eps=1e-6)
        return torch.softmax((1 + F.softplus(strength)) * sim, dim=1)


def _recall(gen: torch.Generator, batch: int = 16, items: int = 4, dim: int = 6):
    """Show ``items`` random binary vectors, then a delimiter, then ask for them back in order:
    inputs (batch, 2 * items + 1, dim + 1), targets (batch, items, dim)."""
    while True:
        pat = (torch.rand(batch, items, dim, generator=gen) < 0.5).float()
        x = torch.zeros(batch, 2 * items + 1, dim + 1)
        x[:, :items, :dim] = pat
        x[:, items, dim] = 1.0
        yield x, pat


@scenario(
    "h41_dnc_memory",
    "rmsprop",
    "exploding_gradients",
    where="output",
    diverges="auto",
    heldout=True,
    onset=60,
    note="decoupled weight decay on the output layer added, not subtracted",
)
def h41_output_decay_sign_dnc(ctx: Context) -> None:
    """A hand-written decoupled weight decay for the output layer (switched on at step 60) adds
    ``lr * wd * w`` instead of subtracting it: the output weights grow geometrically, the recall
    logits with them, and the gradients into the controller and interface grow step by step."""
    gen = seeded(4113)
    model = DNC(7, 6)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _recall(gen)

    def decay(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.output.weight.add_(model.output.weight, alpha=0.03)

    def step_loss(step: int):
        x, y = next(batches)
        out = model(x)[:, -y.shape[1] :]
        loss = F.binary_cross_entropy_with_logits(out, y)
        return loss, loss, None

    _train(ctx, model, opt, 320, step_loss, before=decay)
    g = ctx.grad_norms
    ctx.check(
        f"gradients grew ({_median(g[40:60]):.2f} -> {max(g[150:]):.2f})",
        max(g[150:]) > 20 * _median(g[40:60]),
    )


# -- EDM-preconditioned diffusion denoiser --------------------------------------------------------


class EDMDenoiser(nn.Module):
    """Karras et al. (2022) preconditioning around an MLP on 8x8 digits:
    D(x, s) = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, sigma_data: float = 0.5, dim: int = 128, c_in_bug: bool = False) -> None:
        super().__init__()
        self.sigma_data, self.c_in_bug = sigma_data, c_in_bug
        self.net = nn.Sequential(
            nn.Linear(65, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 64)
        )

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / sd if self.c_in_bug else 1 / (sigma**2 + sd**2).sqrt()
        f = self.net(torch.cat([c_in * noisy, sigma.log() / 4], 1))
        return c_skip * noisy + c_out * f.float()


def _edm_step_loss(
    model: EDMDenoiser, x: torch.Tensor, gen, p_mean: float, p_std: float, amp: bool
):
    x = 2 * x - 1
    sigma = (p_mean + p_std * torch.randn(len(x), 1, generator=gen)).exp()
    noisy = x + sigma * torch.randn(x.shape, generator=gen)
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        denoised = model(noisy, sigma)
    sd = model.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return (weight * (denoised.float() - x) ** 2).mean()


@scenario(
    "h41_edm_denoiser",
    "adam",
    "amp_overflow",
    diverges="auto",
    heldout=True,
    onset=0,
    note="c_in left out and the noise range widened over training, fp16 autocast",
)
def h41_unscaled_input_fp16_edm(ctx: Context) -> None:
    """The input scaling c_in was written as 1/sigma_data (the sigma term dropped) and a
    curriculum widens the log-normal noise distribution over training: the network sees inputs
    of size sigma, and under float16 autocast its activations overflow more and more often; the
    GradScaler skips those steps and its scale falls step after step."""
    gen = seeded(4114)
    model = EDMDenoiser(c_in_bug=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt, scaler=scaler)
    for step in range(300):
        x, _ = next(batches)
        p_std = 1.2 + 2.8 * min(1.0, step / 250)
        loss = _edm_step_loss(model, x, gen, -1.2, p_std, amp=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    bad = sum(not f for f in _finite(ctx.losses))
    ctx.check(
        f"overflowed ({bad} non-finite steps), scale {ctx.scales[-1]:.3g}",
        bad >= 10 and ctx.scales[-1] < 2.0**6,
    )


# -- Galerkin transformer neural operator ---------------------------------------------------------


class GalerkinAttention(nn.Module):
    """Softmax-free attention: Q (K^T V) / n with K and V layer-normalised (Cao 2021)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        hd = dim // heads
        self.k_norm, self.v_norm = nn.LayerNorm(hd), nn.LayerNorm(hd)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            f(x).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        k, v = self.k_norm(k), self.v_norm(v)
        y = q @ (k.transpose(-1, -2) @ v) / n
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class GalerkinLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = GalerkinAttention(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class GalerkinOperator(nn.Module):
    """Maps a(x) sampled on a grid (with the coordinate) to u(x)."""

    def __init__(self, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.lift = nn.Linear(2, dim)
        self.layers = nn.ModuleList(GalerkinLayer(dim) for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(0, 1, a.shape[1])[None, :, None].expand(a.shape[0], -1, 1)
        h = self.lift(torch.cat([a[..., None], grid], -1))
        for layer in self.layers:
            h = layer(h)
        return self.out(h)[..., 0]


def _poisson(gen: torch.Generator, batch: int = 16, n: int = 32):
    """-u'' = f on (0, 1), u(0) = u(1) = 0, f a random sum of four sines; solved by finite
    differences. Yields (f, u) on the interior grid, u scaled to unit size."""
    h = 1.0 / (n + 1)
    lap = (
        2 * torch.eye(n) - torch.diag(torch.ones(n - 1), 1) - torch.diag(torch.ones(n - 1), -1)
    ) / h**2
    xs = torch.linspace(h, 1 - h, n)
    k = torch.arange(1, 5, dtype=torch.float32)
    while True:
        coef = torch.randn(batch, 4, generator=gen)
        f = (coef[:, :, None] * torch.sin(math.pi * k[:, None] * xs)).sum(1)
        u = torch.linalg.solve(lap, f.T).T * 10.0
        yield f, u


@scenario(
    "h41_galerkin_operator",
    "adam",
    "adam_second_moment_poisoned",
    diverges="auto",
    heldout=True,
    onset=150,
    note="one fine-grid batch with the loss summed, not averaged",
)
def h41_summed_loss_batch_galerkin(ctx: Context) -> None:
    """At step 150 one batch comes from the fine-resolution loader, whose loss was written with
    ``reduction="sum"`` (and weighted by the grid size): one gradient ~1e5 times the usual
    fills Adam's second moment: the first step after it moves every weight by a few learning
    rates (the loss jumps), and for the rest of the run the steps are a small fraction of the
    gradient's call, so the loss, lower before, comes back only slowly."""
    gen = seeded(4115)
    model = GalerkinOperator()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn(pred: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, u)

    poisoned = [False]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 150:
            poisoned[0] = True
            return loss * 16 * 32 * 200.0  # summed over batch x grid, times the grid weight
        return loss

    fit(ctx, model, opt, _poisson(gen), 300, loss_fn=loss_fn, classifier=False, extra_loss=extra)
    pre, late = _median(ctx.losses[125:150]), _median(ctx.losses[250:])
    g_pre, g_late = _median(ctx.grad_norms[125:150]), _median(ctx.grad_norms[250:])
    ctx.check(
        f"still not back 100 steps on (loss {pre:.3f} -> {late:.3f}, grad {g_pre:.2f} -> {g_late:.2f})",
        poisoned[0] and late > 2 * pre and g_late > 3 * g_pre,
    )


@scenario("h41_galerkin_operator", "adamw", "healthy", heldout=True)
def h41_healthy_galerkin_adamw(ctx: Context) -> None:
    gen = seeded(4116)
    model = GalerkinOperator()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    fit(ctx, model, opt, _poisson(gen), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.3 * ctx.losses[0])
