"""Held-out scenarios, set 79 (``h79_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Ernie-4.5, GLM-MoE-DSA, DeepSeek-V4, Lara-Mini (hybrid linear attention +
MoE) and Bailing-Hybrid causal LMs built from tiny configs; hand-written KTO preference alignment
(desirable/undesirable completions against a reference model), sequence packing with
per-document attention masks, DP-SGD (per-sample clipping + Gaussian noise), iterative magnitude
pruning with lottery-ticket rewinding, sharpness-aware minimisation (SAM's two-step update),
FedProx (GRU) and SCAFFOLD (MLP) federated training over non-IID clients, multi-task learning with PCGrad and
with GradNorm, multi-task uncertainty weighting (learned log-variances), and a NeuMF-style neural
collaborative filtering recommender on generated interactions.

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, RMSprop, Adagrad, SGD, SGD with momentum, and
steadygrad.optim's Lion, Grams, AdaBelief, StableSPAM and AdEMAMix.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
    digits,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)

VOCAB = 128


# -- shared helpers -------------------------------------------------------------------------------


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _mean(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / max(len(values), 1)


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if math.isfinite(v))
    return values[len(values) // 2] if values else float("nan")


def _module_grad_norm(module: nn.Module) -> float:
    grads = [p.grad.float().norm() for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(grads)))


def _lm_train(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    steps: int,
    *,
    batch: int = 8,
    length: int = 32,
    lr_at=None,
    extra=None,
    before=None,
    after=None,
) -> None:
    """A plain causal-LM loop for a Hugging Face model on the byte stream."""
    ctx.attach(model, opt)
    batches = text_batches(gen, batch, length, VOCAB)
    for step in range(steps):
        x, y = next(batches)
        if before is not None:
            before(step)
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        out = model(input_ids=x)
        loss = lm_loss(out.logits, y)
        total = extra(step, loss, out) if extra is not None else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if after is not None:
            after(step, x)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _hf_attention_stats(model: nn.Module, attn_modules: list[nn.Module], idx: torch.Tensor):
    """Largest causal pre-softmax attention logit and mean attention entropy over the given
    Hugging Face attention modules (eager attention), from their own projections and RoPE."""
    from transformers.models.ernie4_5.modeling_ernie4_5 import apply_rotary_pos_emb

    seen: list[tuple[nn.Module, torch.Tensor, tuple, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append((module, hidden, kwargs["position_embeddings"], output[1]))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attn_modules]
    try:
        with torch.no_grad():
            model(input_ids=idx)
    finally:
        for h in handles:
            h.remove()
    top, entropies = 0.0, []
    t = idx.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for module, hidden, (cos, sin), weights in seen:
        shape = (*hidden.shape[:-1], -1, module.head_dim)
        q = module.q_proj(hidden).view(shape).transpose(1, 2)
        k = module.k_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        s = (q @ k.transpose(-1, -2)) * module.scaling
        top = max(top, float(s.masked_fill(~causal, 0).abs().amax()))
        if weights is not None:
            p = weights.float().clamp_min(1e-30)
            entropies.append(float(-(p * p.log()).sum(-1).mean()))
    return top, (sum(entropies) / len(entropies) if entropies else float("nan"))


# -- Hugging Face causal LMs ----------------------------------------------------------------------


def _ernie():
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    _quiet()
    config = Ernie4_5Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return Ernie4_5ForCausalLM._from_config(config, attn_implementation="eager")


@scenario(
    "h79_hf_ernie4_5_causal_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="checkpoint-conversion bug sets attention scaling to 1.0 (q assumed pre-scaled); lr 1e-2",
    onset=0,
)
def h79_ernie_unscaled_attention(ctx: Context) -> None:
    """A conversion script for a checkpoint format whose q_proj was pre-multiplied by
    1/sqrt(head_dim) sets every attention module's ``scaling`` to 1.0; the model is then trained
    from scratch (nothing is pre-scaled) with a high learning rate and no weight decay, and the
    q.k logits grow until the attention rows are one-hot."""
    gen = seeded(7901)
    model = _ernie()
    attn = [layer.self_attn for layer in model.model.layers]
    for module in attn:
        module.scaling = 1.0  # the bug: q_proj is not pre-scaled in a fresh model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe, _ = next(text_batches(torch.Generator().manual_seed(1), 8, 32, VOCAB))
    top0, ent0 = _hf_attention_stats(model, attn, probe)
    _lm_train(ctx, model, opt, gen, 300)
    top1, ent1 = _hf_attention_stats(model, attn, probe)
    ctx.check("max attention logit grew over 10x", top1 > 10 * top0)
    ctx.check("max attention logit over 50", top1 > 50)
    ctx.check("attention entropy fell below a quarter", ent1 < 0.25 * ent0)


def _glm_moe_dsa():
    from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM

    _quiet()
    config = GlmMoeDsaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        head_dim=16,
        index_topk=16,
        index_head_dim=16,
        index_n_heads=2,
        first_k_dense_replace=1,
        max_position_embeddings=64,
    )
    return GlmMoeDsaForCausalLM(config)


def _log_z(model: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.logsumexp(model(input_ids=idx).logits.float(), -1).mean())


@scenario(
    "h79_hf_glm_moe_dsa_causal_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss switched on at step 120 with the wrong sign (rewards large log Z)",
    onset=120,
)
def h79_glm_dsa_zloss_sign(ctx: Context) -> None:
    """PaLM-style z-loss (coef * log(Z)^2) switched on after a warm-up, but subtracted instead
    of added: the objective now rewards a large log-partition, and Lion's sign updates push the
    output logits up together."""
    gen = seeded(7902)
    model = _glm_moe_dsa()
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)
    probe, _ = next(text_batches(torch.Generator().manual_seed(2), 8, 32, VOCAB))
    z_at: dict[int, float] = {}

    def extra(step: int, loss: torch.Tensor, out) -> torch.Tensor:
        if step in (0, 119, 379):
            z_at[step] = float(torch.logsumexp(out.logits.detach().float(), -1).mean())
        if step < 120:
            return loss
        log_z = torch.logsumexp(out.logits.float(), -1)
        return loss - 1e-1 * log_z.pow(2).mean()  # the sign bug

    _lm_train(ctx, model, opt, gen, 380, extra=extra, batch=6, length=24)
    z_end = _log_z(model, probe)
    ctx.check("loss trained before the bug", _mean(ctx.losses[100:120]) < _mean(ctx.losses[:10]))
    ctx.check("log Z rose by over 6 after the bug", z_end > z_at[119] + 6)
    ctx.check("log Z was flat before the bug", abs(z_at[119] - z_at[0]) < 1.5)


def _deepseek_v4():
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    _quiet()
    config = DeepseekV4Config(
        vocab_size=VOCAB,
        hidden_size=32,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        q_lora_rank=16,
        num_experts_per_tok=2,
        n_routed_experts=4,
        max_position_embeddings=64,
        o_groups=1,
        o_lora_rank=16,
        index_n_heads=2,
        index_head_dim=16,
        index_topk=16,
        sliding_window=16,
        num_nextn_predict_layers=0,
        hc_mult=2,
    )
    return DeepseekV4ForCausalLM(config)


@scenario(
    "h79_hf_deepseek_v4_causal_lm",
    "sg_grams",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="EMA weights (decay 0.999, no warm-up) swapped in for an eval at step 180, never swapped back",
    onset=180,
)
def h79_deepseek_v4_ema_swap(ctx: Context) -> None:
    """An exponential moving average of the weights is kept for evaluation (decay 0.999, no
    bias correction or warm-up, so after 180 steps it is still mostly the initialisation). The
    eval at step 180 loads the EMA weights into the model and the swap back is missing: training
    continues from weights close to the initial ones, the loss jumps, then trains down again."""
    gen = seeded(7903)
    model = _deepseek_v4()
    opt = sgo.Grams(model.parameters(), lr=3e-3, fused=False)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def lr_at(step: int) -> float:
        return 3e-3 * min(1.0, (step + 1) / 30)

    def before(step: int) -> None:
        if step == 180:
            model.load_state_dict(ema)  # eval with the EMA weights; the swap back is missing

    def after(step: int, x) -> None:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(0.999).add_(v, alpha=0.001)

    _lm_train(
        ctx, model, opt, gen, 260, lr_at=lr_at, before=before, after=after, batch=6, length=16
    )
    pre = _mean(ctx.losses[165:180])
    ctx.check("loss trained before the swap", pre < 0.75 * _mean(ctx.losses[:5]))
    ctx.check("loss jumped by over 1 nat at the swap", _mean(ctx.losses[180:183]) > pre + 1.0)
    ctx.check("loss comes back down", _mean(ctx.losses[-15:]) < _mean(ctx.losses[180:183]) - 0.5)
    ctx.check("run stays finite", all(_finite(ctx.losses)))


def _lara_mini():
    from transformers import LaraMiniConfig, LaraMiniForCausalLM

    _quiet()
    config = LaraMiniConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts_per_tok=2,
        num_experts=4,
        max_position_embeddings=64,
        sliding_window=16,
        output_router_logits=True,
        eos_token_id=2,
    )
    return LaraMiniForCausalLM(config)


@scenario(
    "h79_hf_lara_mini_causal_lm",
    "radam",
    "gradient_spike",
    where=("model.layers.0.mlp.gate", "model.layers.1.mlp.gate"),
    diverges=None,
    heldout=True,
    note="router load-balancing coefficient schedule typo (1e+2 for 1e-2) on one step, 240",
    onset=240,
)
def h79_lara_router_aux_typo(ctx: Context) -> None:
    """The MoE load-balancing loss follows a step-keyed coefficient table; the entry for the
    transition step 240 was typed 1e+2 instead of 1e-2. For that one step the router's
    auxiliary gradient dwarfs the language-model gradient, then the table is back to normal."""
    gen = seeded(7904)
    model = _lara_mini()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    gates = [layer.mlp.gate for layer in model.model.layers]
    gate_norms: list[float] = []

    def coef(step: int) -> float:
        table = {240: 1e2}  # typo: 1e-2 was meant
        return table.get(step, 1e-2 if step >= 240 else 1e-3)

    def extra(step: int, loss: torch.Tensor, out) -> torch.Tensor:
        return loss + coef(step) * out.aux_loss

    def after(step: int, x) -> None:
        gate_norms.append(sum(_module_grad_norm(g) for g in gates))

    _lm_train(ctx, model, opt, gen, 360, extra=extra, after=after, batch=8, length=24)
    base = _median(gate_norms[200:240])
    ctx.check("router gradient at 240 over 100x its median", gate_norms[240] > 100 * base)
    ctx.check(
        "total gradient norm at 240 over 10x its median",
        ctx.grad_norms[240] > 10 * _median(ctx.grad_norms[200:240]),
    )
    ctx.check(
        "one-off: router gradient back under 5x from step 250 on",
        max(gate_norms[250:300]) < 5 * max(base, _median(gate_norms[250:300])),
    )
    ctx.check("run stays finite", all(_finite(ctx.losses)))


def _bailing_hybrid():
    from transformers import BailingHybridConfig, BailingHybridForCausalLM

    _quiet()
    config = BailingHybridConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        head_dim=16,
        n_group=1,
        topk_group=1,
        num_experts_per_tok=2,
        num_local_experts=4,
        first_k_dense_replace=1,
        layer_group_size=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=2,
        num_mtp_layers=0,
    )
    return BailingHybridForCausalLM(config)


@scenario(
    "h79_hf_bailing_hybrid_causal_lm",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="linear-attention + MLA hybrid MoE, AdEMAMix with warm-ups, short cosine schedule",
)
def h79_bailing_hybrid_healthy(ctx: Context) -> None:
    gen = seeded(7905)
    model = _bailing_hybrid()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, alpha_warmup=100, beta3_warmup=100, fused=False)

    def lr_at(step: int) -> float:
        return 2e-3 * min(1.0, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * step / 200))

    _lm_train(ctx, model, opt, gen, 150, lr_at=lr_at, batch=4, length=24)
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("run stays finite", all(_finite(ctx.losses)))


# -- multi-task learning --------------------------------------------------------------------------


class TwoTaskNet(nn.Module):
    """Shared trunk on 8x8 digits, a 10-way class head and a second head."""

    def __init__(self, width: int = 96, second: int = 1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.cls_head = nn.Linear(width, 10)
        self.aux_head = nn.Linear(width, second)

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        return self.cls_head(h), self.aux_head(h)


def _ink(x: torch.Tensor) -> torch.Tensor:
    """Regression target: the image's ink, standardised."""
    return ((x.mean(1) - 0.3) / 0.08)[:, None]


class UncertaintyWeightedNet(TwoTaskNet):
    """Kendall et al. multi-task weighting: a learned log-variance per task."""

    def __init__(self) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(2))


@scenario(
    "h79_multitask_learned_logvar",
    "adam",
    "softmax_collapse",
    where="cls_head",
    diverges=None,
    heldout=True,
    note="uncertainty weighting, log-variances unbounded, no weight decay, 256 fixed training digits",
    onset=0,
)
def h79_uncertainty_logvar_overfit(ctx: Context) -> None:
    """Classification + (noisily measured) ink regression with learned log-variance weights on
    a small fixed training set. Nothing bounds the classification log-variance: as the training CE shrinks
    the weight exp(-s) grows, the class head's logits keep growing and the float32 softmax on
    the training rows becomes exactly one-hot (CE exactly 0, no gradient left)."""
    gen = seeded(7906)
    x_all, y_all = digits()
    order = torch.randperm(len(y_all), generator=gen)[:256]
    x_train, y_train = x_all[order], y_all[order]
    model = UncertaintyWeightedNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    for _step in range(600):
        idx = torch.randint(0, 256, (64,), generator=gen)
        x, y = x_train[idx], y_train[idx]
        ctx.targets(y)
        logits, ink = model(x)
        ce = F.cross_entropy(logits, y)
        noisy_ink = _ink(x) + torch.randn(len(y), 1, generator=gen)  # a noisy auxiliary label
        mse = F.mse_loss(ink, noisy_ink)
        s = model.log_var
        total = torch.exp(-s[0]) * ce + s[0] + 0.5 * torch.exp(-s[1]) * mse + 0.5 * s[1]
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(ce + mse)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits, _ = model(x_train)
    frac = collapsed_fraction(logits, y_train)
    ctx.check("over half of the training rows exactly one-hot in float32", frac > 0.5)
    ctx.check("classification log-variance ran below -6", float(model.log_var[0]) < -6)


def _pcgrad_combine(grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """PCGrad (Yu et al. 2020) for two tasks: project each task's gradient off the other's
    when they conflict, then sum."""
    g1 = torch.cat([g.flatten() for g in grads[0]])
    g2 = torch.cat([g.flatten() for g in grads[1]])
    p1, p2 = g1.clone(), g2.clone()
    dot = torch.dot(g1, g2)
    if dot < 0:
        p1 = g1 - dot / g2.pow(2).sum().clamp_min(1e-20) * g2
        p2 = g2 - dot / g1.pow(2).sum().clamp_min(1e-20) * g1
    flat = p1 + p2
    out, i = [], 0
    for g in grads[0]:
        out.append(flat[i : i + g.numel()].view_as(g))
        i += g.numel()
    return out


@scenario(
    "h79_multitask_pcgrad",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="resume at step 180 skips the GradScaler unscale once: every gradient 65536x for one step",
    onset=180,
)
def h79_pcgrad_unscaled_resume(ctx: Context) -> None:
    """Digit class + ink regression with PCGrad on the shared trunk, NAdam. The run resumes
    at step 180 from an fp16 checkpoint whose GradScaler state (scale 65536) was restored, and
    the first step after the resume goes through a code path that backpropagates the scaled
    loss but calls optimizer.step() directly, without unscaling. One step of 65536x gradients
    fills every second moment; afterwards the updates are tiny and training stalls."""
    gen = seeded(7907)
    model = TwoTaskNet()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    shared = list(model.trunk.parameters())
    heads = list(model.cls_head.parameters()) + list(model.aux_head.parameters())
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    update_sizes: list[float] = []
    for step in range(480):
        x, y = next(batches)
        ctx.targets(y)
        logits, ink = model(x)
        ce = F.cross_entropy(logits, y)
        mse = F.mse_loss(ink, _ink(x))
        scale = 65536.0 if step == 180 else 1.0  # the resume path: scaled, never unscaled
        g_ce = torch.autograd.grad(scale * ce, shared + heads, retain_graph=True, allow_unused=True)
        g_mse = torch.autograd.grad(scale * mse, shared + heads, allow_unused=True)
        g_ce = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(shared + heads, g_ce, strict=True)
        ]
        g_mse = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(shared + heads, g_mse, strict=True)
        ]
        n = len(shared)
        combined = _pcgrad_combine([list(g_ce[:n]), list(g_mse[:n])])
        for p, g in zip(shared, combined, strict=True):
            p.grad = g.clone()
        for p, a, b in zip(heads, g_ce[n:], g_mse[n:], strict=True):
            p.grad = a + b
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        update_sizes.append(
            float(
                sum(
                    (p.detach() - b).norm() for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        ctx.step(ce + mse)
        opt.zero_grad(set_to_none=True)
    pre = _mean(ctx.losses[160:180])
    ctx.check(
        "one gradient over 1000x the median at 180",
        ctx.grad_norms[180] > 1000 * _median(ctx.grad_norms[:180]),
    )
    ctx.check(
        "stall: 300 steps later the loss is still over twice its pre-spike level",
        _mean(ctx.losses[460:480]) > 2 * pre,
    )
    ctx.check(
        "the gradients afterwards are over 10x larger than before",
        _median(ctx.grad_norms[250:480]) > 10 * _median(ctx.grad_norms[100:180]),
    )
    ctx.check(
        "yet the updates afterwards are under half of before",
        _median(update_sizes[250:480]) < 0.5 * _median(update_sizes[100:180]),
    )
    ctx.check("run stays finite", all(_finite(ctx.losses)))


@scenario(
    "h79_multitask_gradnorm",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="GradNorm (alpha 1.5) task weights on the last shared layer, renormalised each step",
)
def h79_gradnorm_healthy(ctx: Context) -> None:
    gen = seeded(7908)
    model = TwoTaskNet()
    weights = nn.Parameter(torch.ones(2))
    opt = sgo.StableSPAM(
        [{"params": list(model.parameters())}, {"params": [weights], "lr": 2e-2}],
        lr=2e-3,
        fused=False,
    )
    last_shared = model.trunk[2].weight
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    initial = None
    for _step in range(400):
        x, y = next(batches)
        ctx.targets(y)
        logits, ink = model(x)
        losses = torch.stack([F.cross_entropy(logits, y), F.mse_loss(ink, _ink(x))])
        if initial is None:
            initial = losses.detach()
        norms = torch.stack(
            [
                torch.autograd.grad(weights[i] * losses[i], last_shared, create_graph=True)[
                    0
                ].norm()
                for i in range(2)
            ]
        )
        ratio = losses.detach() / initial
        target = (norms.mean() * (ratio / ratio.mean()) ** 1.5).detach()
        w_grad = torch.autograd.grad((norms - target).abs().sum(), weights, retain_graph=True)[0]
        (weights.detach() * losses).sum().backward()
        weights.grad = w_grad
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            weights.clamp_(min=1e-3)
            weights.mul_(2 / weights.sum())
        ctx.step(losses.sum())
        opt.zero_grad(set_to_none=True)
        weights.grad = None
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("task weights stay positive and finite", bool(torch.isfinite(weights).all()))
    ctx.check("run stays finite", all(_finite(ctx.losses)))


# -- sharpness-aware minimisation -----------------------------------------------------------------


def _digit_mlp(width: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def _sam_step(model: nn.Module, opt, x, y, rho: float) -> torch.Tensor:
    """SAM (Foret et al. 2021) by hand: ascend to w + rho g/|g|, take the gradient there, come
    back to w and let the base optimizer step with that gradient."""
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    eps = []
    with torch.no_grad():
        for p in params:
            e = rho * p.grad / (norm + 1e-12)
            p.add_(e)
            eps.append(e)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, e in zip(params, eps, strict=True):
            p.sub_(e)
    return loss


@scenario(
    "h79_sam_by_hand_digits",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up without min(1, .): the LR keeps climbing past the 0.1 peak after step 30",
    onset=30,
)
def h79_sam_warmup_never_stops(ctx: Context) -> None:
    """SAM with SGD + momentum on digits. The warm-up is written ``lr = peak * step / warmup``
    and the ``min(1, ...)`` was dropped, so past step 30 the learning rate keeps growing
    linearly; the run trains well until the step outgrows the curvature, then oscillates and
    blows up."""
    gen = seeded(7909)
    model = _digit_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    lrs = []
    for step in range(450):
        x, y = next(batches)
        lr = 0.1 * (step + 1) / 30  # min(1.0, ...) missing
        for group in opt.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        ctx.targets(y)
        loss = _sam_step(model, opt, x, y, rho=0.05)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    best = min(ctx.losses)
    ctx.check("trained well first", min(ctx.losses[:100]) < 0.3 * _mean(ctx.losses[:5]))
    bad = [
        i for i, v in enumerate(ctx.losses) if not math.isfinite(v) or v > 10 * max(best, 0.05) + 2
    ]
    ctx.check("loss blew up later", bool(bad) and bad[0] > 100)
    ctx.check("it blew up only once the LR was past 2x its peak", bool(bad) and lrs[bad[0]] > 0.2)


# -- federated: FedProx and SCAFFOLD --------------------------------------------------------------


class SequenceGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _client_sequences(gen: torch.Generator, client: int, batch: int = 32, length: int = 30):
    """Non-IID clients: each sees its own offset and scale of the signal; the label is the sign
    of the sequence mean (before the client's offset)."""
    offset = (0.0, 0.3, -0.2, 0.5)[client]
    scale = (0.5, 1.0, 1.5, 2.0)[client]
    x = torch.randn(batch, length, 1, generator=gen) + 0.3 * torch.randn(batch, 1, 1, generator=gen)
    y = (x.mean((1, 2)) > 0).long()
    return scale * x + offset, y


@scenario(
    "h79_fedprox_noniid_gru",
    "sgd",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="FedProx (mu 0.01), 4 non-IID clients; in round 30 client 2 uploads readings in mV, not V",
    onset=488,
)
def h79_fedprox_client_units(ctx: Context) -> None:
    """FedProx over four clients with differently scaled sequences, a GRU classifier and local
    SGD. In round 30 one client's sensor pipeline sends its readings in millivolts instead of
    volts (x1000): that client's local steps see wildly out-of-range inputs and the loss spikes;
    the next rounds are clean again."""
    gen = seeded(7910)
    model = SequenceGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mu, local_steps = 0.01, 4
    ctx.attach(model, opt)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    step, bad_steps = 0, []
    for rnd in range(40):
        updates = []
        for client in range(4):
            model.load_state_dict(global_state)
            anchor = [p.detach().clone() for p in model.parameters()]
            for _ in range(local_steps):
                x, y = _client_sequences(gen, client)
                if rnd == 30 and client == 2:
                    x = x * 1000.0  # millivolts
                    bad_steps.append(step)
                loss = F.cross_entropy(model(x), y)
                prox = sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                (loss + 0.5 * mu * prox).backward()
                ctx.grad_norms.append(grad_norm(model))
                opt.step()
                ctx.step(loss)
                opt.zero_grad(set_to_none=True)
                step += 1
            updates.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        global_state = {k: sum(u[k] for u in updates) / len(updates) for k in global_state}
    before = _mean(ctx.losses[420:488])
    ctx.check("the bad client's first step is 488", bad_steps[:1] == [488])
    ctx.check("trained before", before < 0.7 * _mean(ctx.losses[:20]))
    ctx.check(
        "loss spiked over 3x on the bad client's steps", max(ctx.losses[488:492]) > 3 * before
    )
    ctx.check("back to normal afterwards", _mean(ctx.losses[560:640]) < 1.5 * before)
    ctx.check("run stays finite", all(_finite(ctx.losses)))


def _digit_clients(gen: torch.Generator, clients: int = 4):
    """Label-skewed split of the digits: client c gets mostly classes {c, c+1, c+2} (mod 10)
    plus a little of everything."""
    x, y = digits()
    out = []
    for c in range(clients):
        main = torch.isin(y, torch.tensor([(3 * c + i) % 10 for i in range(3)]))
        keep = main | (torch.rand(len(y), generator=gen) < 0.08)
        out.append((x[keep], y[keep]))
    return out


@scenario(
    "h79_scaffold_noniid_digits",
    "sgd",
    "healthy",
    heldout=True,
    note="SCAFFOLD control variates, 4 label-skewed clients, 5 local SGD steps per round",
)
def h79_scaffold_healthy(ctx: Context) -> None:
    gen = seeded(7911)
    clients = _digit_clients(gen)
    model = _digit_mlp(64)
    lr, local_steps = 0.3, 5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    params = list(model.parameters())
    server = [p.detach().clone() for p in params]
    c_global = [torch.zeros_like(p) for p in params]
    c_local = [[torch.zeros_like(p) for p in params] for _ in clients]
    for _round in range(20):
        deltas, c_deltas = [], []
        for i, (cx, cy) in enumerate(clients):
            with torch.no_grad():
                for p, s in zip(params, server, strict=True):
                    p.copy_(s)
            for _ in range(local_steps):
                idx = torch.randint(0, len(cy), (64,), generator=gen)
                x, y = cx[idx], cy[idx]
                ctx.targets(y)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                with torch.no_grad():
                    for p, cg, cl in zip(params, c_global, c_local[i], strict=True):
                        p.grad.add_(cg - cl)
                ctx.grad_norms.append(grad_norm(model))
                opt.step()
                ctx.step(loss)
                opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                new_c = [
                    cl - cg + (s - p) / (local_steps * lr)
                    for p, s, cg, cl in zip(params, server, c_global, c_local[i], strict=True)
                ]
                deltas.append([p.detach() - s for p, s in zip(params, server, strict=True)])
                c_deltas.append([n - o for n, o in zip(new_c, c_local[i], strict=True)])
                c_local[i] = new_c
        with torch.no_grad():
            for j in range(len(params)):
                server[j] += sum(d[j] for d in deltas) / len(deltas)
                c_global[j] += sum(d[j] for d in c_deltas) / len(c_deltas)
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.4 * _mean(ctx.losses[:20]))
    ctx.check("run stays finite", all(_finite(ctx.losses)))


# -- neural collaborative filtering ---------------------------------------------------------------


class NeuMF(nn.Module):
    """NCF (He et al. 2017): a GMF path and an MLP tower over separate user/item embeddings."""

    def __init__(self, users: int, items: int, dim: int = 16) -> None:
        super().__init__()
        self.gmf_user = nn.Embedding(users, dim)
        self.gmf_item = nn.Embedding(items, dim)
        self.mlp_user = nn.Embedding(users, dim)
        self.mlp_item = nn.Embedding(items, dim)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.1)
        self.tower = nn.Sequential(
            nn.Linear(2 * dim, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 16),
            nn.ReLU(),
        )
        self.predict = nn.Linear(dim + 16, 1)

    def tower_in(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mlp_user(u), self.mlp_item(i)], -1)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(u) * self.gmf_item(i)
        return self.predict(torch.cat([gmf, self.tower(self.tower_in(u, i))], -1)).squeeze(-1)


def _interactions(gen: torch.Generator, users: int = 300, items: int = 200, dim: int = 6):
    """Generated implicit feedback from a latent-factor model: (user, item) -> clicked."""
    pu = torch.randn(users, dim, generator=gen)
    qi = torch.randn(items, dim, generator=gen)

    def batch(n: int = 256):
        u = torch.randint(0, users, (n,), generator=gen)
        i = torch.randint(0, items, (n,), generator=gen)
        score = (pu[u] * qi[i]).sum(-1) / math.sqrt(dim)
        return u, i, (score + 0.3 * torch.randn(n, generator=gen) > 1.0).float()

    return batch


@scenario(
    "h79_ncf_neumf_generated",
    "adagrad",
    "loss_of_plasticity",
    where=("tower.2", "tower.4"),
    diverges=None,
    heldout=True,
    note="Adagrad lr 0.5 (the sparse-embedding setting) applied to the dense tower too",
    onset=0,
)
def h79_ncf_adagrad_dead_tower(ctx: Context) -> None:
    """NeuMF on generated clicks. The Adagrad learning rate meant for the embedding tables
    (0.5) is applied to every parameter: Adagrad's first steps move each weight by about the
    learning rate, which throws most ReLU units of the MLP tower below zero for every input;
    they never come back, and the model keeps learning through the GMF path only."""
    gen = seeded(7912)
    batch = _interactions(gen)
    model = NeuMF(300, 200)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    eval_u = torch.arange(300).repeat_interleave(20)
    eval_i = torch.randint(0, 200, (6000,), generator=gen)

    def dead_units() -> list[torch.Tensor]:
        with torch.no_grad():
            h, out = model.tower_in(eval_u, eval_i), []
            for k in (0, 2, 4):
                h = model.tower[k](h)
                out.append((h <= 0).all(0))
                h = F.relu(h)
        return out

    dead0 = dead_units()
    for step in range(400):
        u, i, y = batch()
        loss = F.binary_cross_entropy_with_logits(model(u, i), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 50:
            dead50 = dead_units()
    dead_end = dead_units()
    ctx.check(
        "tower.2: dead share at least doubled since init",
        float(dead_end[1].float().mean()) >= 2 * float(dead0[1].float().mean()),
    )
    for k, name in ((1, "tower.2"), (2, "tower.4")):
        ctx.check(f"{name}: over 35% dead at the end", float(dead_end[k].float().mean()) > 0.35)
        stayed = float((dead_end[k] & dead50[k]).sum()) / max(float(dead50[k].sum()), 1.0)
        ctx.check(f"{name}: 80% of the units dead at step 50 still dead", stayed >= 0.8)
    ctx.check("loss still went down (GMF path)", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]))


# -- KTO preference alignment ---------------------------------------------------------------------


KTO_VOCAB, SEP = 24, 1


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(KTO_VOCAB, 32)
        self.rnn = nn.GRU(32, 64, batch_first=True)
        self.head = nn.Linear(64, KTO_VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(idx))[0])


def _kto_batch(gen: torch.Generator, n: int = 32, length: int = 6):
    """Prompt, separator, completion. Desirable completions are the prompt sorted; undesirable
    ones are the prompt sorted with two tokens swapped or a random sequence."""
    prompt = torch.randint(2, KTO_VOCAB, (n, length), generator=gen)
    good = prompt.sort(-1).values
    bad = good.clone()
    j = torch.randint(0, length - 1, (n,), generator=gen)
    rows = torch.arange(n)
    bad[rows, j], bad[rows, j + 1] = good[rows, j + 1], good[rows, j]
    noise = torch.rand(n, generator=gen) < 0.5
    bad[noise] = torch.randint(2, KTO_VOCAB, (int(noise.sum()), length), generator=gen)
    desirable = torch.rand(n, generator=gen) < 0.5
    completion = torch.where(desirable[:, None], good, bad)
    seq = torch.cat([prompt, torch.full((n, 1), SEP), completion], 1)
    return seq, desirable


def _completion_logp(model: nn.Module, seq: torch.Tensor, start: int) -> torch.Tensor:
    logits = model(seq[:, :-1])
    logp = torch.log_softmax(logits.float(), -1).gather(-1, seq[:, 1:, None]).squeeze(-1)
    return logp[:, start - 1 :].sum(-1)


@scenario(
    "h79_kto_reference_model",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="embed",
    diverges=None,
    heldout=True,
    note="reference model shares the policy's embedding to save memory; ref.requires_grad_(False) freezes it",
    onset=0,
)
def h79_kto_shared_frozen_embedding(ctx: Context) -> None:
    """KTO (Ethayarajh et al. 2024) after a short SFT warm start. To save memory the reference
    model reuses the policy's embedding table (``ref.embed = policy.embed``) and is then frozen
    with ``ref.requires_grad_(False)``, which freezes the policy's embedding as well: from the
    first KTO step that tensor gets no update at all while the rest of the policy trains."""
    gen = seeded(7913)
    policy = TinyLM()
    sft = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(80):  # SFT warm start on desirable completions, before monitoring
        seq, desirable = _kto_batch(gen)
        seq = seq[desirable]
        F.cross_entropy(policy(seq[:, :-1]).transpose(1, 2), seq[:, 1:]).backward()
        sft.step()
        sft.zero_grad(set_to_none=True)
    ref = copy.deepcopy(policy)
    ref.embed = policy.embed  # the memory saving
    ref.requires_grad_(False)  # ... which freezes policy.embed too
    opt = sgo.AdaBelief(policy.parameters(), lr=1e-3, fused=False)
    ctx.attach(policy, opt)
    embed_before = policy.embed.weight.detach().clone()
    rnn_before = policy.rnn.weight_hh_l0.detach().clone()
    beta, start = 0.1, 7
    margins = []
    for _step in range(240):
        seq, desirable = _kto_batch(gen)
        r = _completion_logp(policy, seq, start) - _completion_logp(ref, seq, start).detach()
        with torch.no_grad():  # KL estimate from mismatched prompt/completion pairs
            shuffled = torch.cat([seq[:, :start], seq.roll(1, 0)[:, start:]], 1)
            kl = _completion_logp(policy, shuffled, start) - _completion_logp(ref, shuffled, start)
            z0 = kl.mean().clamp(min=0)
        loss_d = 1 - torch.sigmoid(beta * (r - z0))
        loss_u = 1 - torch.sigmoid(beta * (z0 - r))
        loss = torch.where(desirable, loss_d, loss_u).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(policy))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        margins.append(float(r[desirable].mean() - r[~desirable].mean()))
    ctx.check("policy embedding never changed", torch.equal(policy.embed.weight, embed_before))
    ctx.check(
        "the rest of the policy trained", not torch.equal(policy.rnn.weight_hh_l0, rnn_before)
    )
    ctx.check("reward margin grew", _mean(margins[-30:]) > _mean(margins[:30]) + 1.0)


# -- DP-SGD ---------------------------------------------------------------------------------------


def _dp_grads(model: nn.Module, x, y, clip: float, sigma: float, gen: torch.Generator):
    """Per-sample gradients (torch.func), each clipped to ``clip``, summed, Gaussian noise of
    std ``sigma * clip`` added, divided by the batch size; written into ``p.grad``."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.linalg.vector_norm(
        torch.stack([g.flatten(1).norm(dim=1) for g in per.values()], 1), dim=1
    )
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    for name, p in model.named_parameters():
        g = (per[name] * factor.view(-1, *([1] * (per[name].dim() - 1)))).sum(0)
        noise = torch.randn(g.shape, generator=gen) * sigma * clip
        p.grad = (g + noise) / len(y)
    return norms


@scenario(
    "h79_dpsgd_per_sample_clip",
    "rmsprop",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="DP-SGD (C=1, sigma=1) with RMSprop; step 260 gets a shard exported with 1-indexed labels and raw pixel counts",
    onset=260,
)
def h79_dpsgd_unscaled_shard(ctx: Context) -> None:
    """DP-SGD on digits: per-sample gradients clipped to norm 1, Gaussian noise, RMSprop.
    The batch at step 260 comes from a shard written by an old export script: raw 0..16 pixel
    counts instead of 0..1 and labels 1..10 stored mod 10 (every label shifted by one). Its loss
    spikes (per-sample clipping keeps the update bounded), then the run goes on."""
    gen = seeded(7914)
    noise_gen = torch.Generator().manual_seed(79140)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    for step in range(400):
        x, y = next(batches)
        if step == 260:
            x, y = x * 16.0, (y + 1) % 10  # the old export: raw counts, shifted labels
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        _dp_grads(model, x, y, clip=1.0, sigma=1.0, gen=noise_gen)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _mean(ctx.losses[240:260])
    ctx.check("trained before the bad shard", before < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("loss at 260 over 3x the steps before", ctx.losses[260] > 3 * before)
    ctx.check("recovers after", _mean(ctx.losses[280:300]) < 1.5 * before)


# -- sequence packing with per-document attention masks -------------------------------------------


class PackedAttention(nn.Module):
    """Causal self-attention restricted to the query's own document, written by hand (the
    mask is a per-row block-diagonal)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        y = torch.softmax(s, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PackedBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PackedAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


class PackedDecoder(nn.Module):
    def __init__(self, dim: int = 48, heads: int = 2, layers: int = 2, context: int = 64):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(PackedBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor):
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.ln_f(x))


PAD = 0


def _packed_epoch(gen: torch.Generator, docs: list[torch.Tensor], context: int = 64):
    """Documents shuffled and concatenated, cut into rows of ``context``; a document crossing a
    row boundary continues in the next row as its own segment. The final partial row of the
    epoch is padded (doc id -1). Returns (tokens, doc ids, positions within document)."""
    order = torch.randperm(len(docs), generator=gen).tolist()
    tokens, ids, pos = [], [], []
    for n, j in enumerate(order):
        d = docs[j]
        tokens.append(d)
        ids.append(torch.full((len(d),), n))
        pos.append(torch.arange(len(d)))
    tokens, ids, pos = torch.cat(tokens), torch.cat(ids), torch.cat(pos)
    rows = math.ceil(len(tokens) / context)
    pad = rows * context - len(tokens)
    tokens = torch.cat([tokens, torch.full((pad,), PAD)])
    ids = torch.cat([ids, torch.full((pad,), -1)])
    pos = torch.cat([pos, torch.zeros(pad, dtype=torch.long)])
    tokens, ids, pos = (z.view(rows, context) for z in (tokens, ids, pos))
    pos = pos.clamp(max=context - 1)
    return tokens, ids, pos


def _documents(max_len: int = 60) -> list[torch.Tensor]:
    """Lines of the byte stream as documents (folded into the vocabulary, 1..127)."""
    data = text_bytes() % VOCAB
    cuts = (data == 10).nonzero().flatten().tolist()
    docs, start = [], 0
    for c in cuts:
        if c + 1 - start >= 4:
            docs.append(data[start : c + 1][:max_len].clamp(min=1))
        start = c + 1
    return docs


def _doc_mask(ids: torch.Tensor, buggy: bool) -> torch.Tensor:
    t = ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same = ids[:, :, None] == ids[:, None, :]
    allowed = same & causal
    if buggy:  # padding keys and padding queries both excluded: pad rows attend to nothing
        real = ids >= 0
        allowed = allowed & real[:, :, None] & real[:, None, :]
    return allowed


def _packed_run(ctx: Context, seed: int, opt_fn, buggy: bool, steps: int, batch: int):
    gen = seeded(seed)
    docs = _documents()
    model = PackedDecoder()
    opt = opt_fn(model.parameters())
    ctx.attach(model, opt)
    first_bad: list[str] = []

    def watch(name):
        def hook(module, args, output):
            inputs_ok = all(bool(torch.isfinite(a).all()) for a in args if a.is_floating_point())
            if not first_bad and inputs_ok and not bool(torch.isfinite(output).all()):
                first_bad.append(name)  # the module that turned finite inputs into NaN

        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in model.named_modules() if n]
    step, epoch_ends = 0, []
    while step < steps:
        tokens, ids, pos = _packed_epoch(gen, docs)
        order = torch.cat(
            [torch.randperm(len(tokens) - 1, generator=gen), torch.tensor([len(tokens) - 1])]
        )
        for i in range(0, len(order), batch):
            if step >= steps:
                break
            rows = order[i : i + batch]
            if (ids[rows] < 0).any():
                epoch_ends.append(step)
            x, d, p = tokens[rows], ids[rows], pos[rows]
            target = torch.where((d[:, 1:] == d[:, :-1]) & (d[:, 1:] >= 0), x[:, 1:], -100)
            logits = model(x[:, :-1], p[:, :-1], _doc_mask(d[:, :-1], buggy))
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100)
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
            ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(float(loss)):
                step = steps
                break
    for h in handles:
        h.remove()
    return first_bad, epoch_ends


@scenario(
    "h79_packed_sequences_doc_mask",
    "adamax",
    "nonfinite",
    where="blocks.0.attn",
    diverges=157,
    heldout=True,
    note="the epoch's last pack is padded; the mask excludes pad queries too, so their softmax row is all -inf",
    onset=157,
)
def h79_packing_pad_rows_nan(ctx: Context) -> None:
    """A decoder trained on packed documents with a hand-written per-document causal mask.
    Packs are full rows except the last one of the epoch, which is padded; the mask drops
    padding as keys *and* as queries, so a padding query has no key left, its softmax row is
    all -inf and the attention module returns NaN the first time a padded pack comes up."""
    first_bad, ends = _packed_run(
        ctx, 7916, lambda p: torch.optim.Adamax(p, lr=2e-3), buggy=True, steps=300, batch=5
    )
    ctx.check("the first padded pack is step 157", ends[:1] == [157])
    ctx.check("first NaN in blocks.0.attn", first_bad[:1] == ["blocks.0.attn"])
    finite = _finite(ctx.losses)
    ctx.check(
        "finite until the padded pack, not at it", all(finite[: ends[0]]) and not finite[ends[0]]
    )


# -- iterative magnitude pruning with lottery-ticket rewinding ------------------------------------


@scenario(
    "h79_imp_lottery_rewind",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="3 rounds of 120 steps; prune 40% of remaining weights globally, rewind to step 30",
)
def h79_imp_rewind_healthy(ctx: Context) -> None:
    gen = seeded(7917)
    model = _digit_mlp(128)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    masks = [torch.ones_like(w) for w in weights]
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    rewind = None
    for step in range(360):
        if step == 30:
            rewind = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step in (120, 240):
            with torch.no_grad():
                alive = torch.cat([w[m.bool()].abs() for w, m in zip(weights, masks, strict=True)])
                cut = alive.kthvalue(int(0.4 * len(alive))).values
                masks = [m * (w.abs() > cut).float() for w, m in zip(weights, masks, strict=True)]
                model.load_state_dict(rewind)
                for w, m in zip(weights, masks, strict=True):
                    w.mul_(m)
            opt.state.clear()
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for w, m in zip(weights, masks, strict=True):
            w.grad.mul_(m)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for w, m in zip(weights, masks, strict=True):
                w.mul_(m)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    density = float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))
    ctx.check("pruned to about 36% density", 0.3 < density < 0.42)
    ctx.check("loss went down", _mean(ctx.losses[-20:]) < 0.3 * _mean(ctx.losses[:10]))
    ctx.check("run stays finite", all(_finite(ctx.losses)))
