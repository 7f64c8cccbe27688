"""Held-out scenarios, set 73 (``h73_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face InternLM3 (Llama-style), Sarvam-MoE, HY-V4 (MLA + MoE), Qwen3.5 text
(hybrid gated-delta / full attention) and HRM-text causal LMs and a RoCBert classifier, all from
tiny configs; hand-written: a rotary-embedding decoder with grouped-query attention, a
sequence-length curriculum on a small decoder, a decoder with gradient checkpointing on every
block, a mixture-of-experts classifier with expert-choice routing, GRPO-style policy gradient
with group-normalised advantages, sharpness-aware minimisation (two passes), Lookahead around
SGD, an EMA of the weights, stochastic weight averaging and ORPO preference optimisation.

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, RMSprop, Adagrad, ASGD, SGD with momentum, and
steadygrad's Lion, AdaBelief, AdEMAMix, StableSPAM and Grams (``fused=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    modular_data,
    scenario,
    seeded,
    text_batches,
)

VOCAB = 128


def hf_causal_lm(model_type: str, **overrides):
    """A tiny Hugging Face causal LM of ``model_type`` built from a config (no download)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


def update_ratio(before: list[torch.Tensor], params: list[torch.Tensor]) -> float:
    """|delta W| / |W| over a list of tensors, from a snapshot taken before the step."""
    num = sum(float((p.detach() - b).norm() ** 2) for p, b in zip(params, before, strict=True))
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num) / max(math.sqrt(den), 1e-12)


# -- Hugging Face InternLM3 (Llama-style) causal LM: attention-logit growth --------------------------


def llama_attention_logit_max(model: nn.Module, idx: torch.Tensor) -> float:
    """The largest |q.k|/sqrt(d) (after rotary embedding, causal part) over the layers of a
    Llama-style Hugging Face model, from its hidden states and each layer's projections."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with torch.no_grad():
        states = model(input_ids=idx, output_hidden_states=True).hidden_states
        b, t = idx.shape
        pos = torch.arange(t)[None].expand(b, t)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        top = 0.0
        for layer, x in zip(model.model.layers, states, strict=False):
            attn = layer.self_attn
            hd = attn.head_dim
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).reshape(b, t, -1, hd).transpose(1, 2)
            k = attn.k_proj(h).reshape(b, t, -1, hd).transpose(1, 2)
            cos, sin = model.model.rotary_emb(x, pos)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
    return top


def attention_entropy(model: nn.Module, idx: torch.Tensor) -> float:
    """Mean entropy (nats) of the attention rows of a Hugging Face model (eager attention)."""
    with torch.no_grad():
        maps = model(input_ids=idx, output_attentions=True).attentions
    ent = [-(a.clamp_min(1e-30).log() * a).sum(-1)[..., 4:].mean() for a in maps]
    return float(torch.stack(ent).mean())


@scenario(
    "h73_hf_internlm3_causal_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a parameter group with a 25x learning rate, no weight decay",
)
def h73_internlm3_qk_group_lr(ctx: Context) -> None:
    """An InternLM3 config fine-tune where a "fast attention" parameter group meant for a LoRA
    adapter ended up holding the full q_proj/k_proj weights at 25x the base learning rate, with
    no weight decay and no QK-norm: the pre-softmax logits grow and attention goes one-hot."""
    gen = seeded(7301)
    model = hf_causal_lm("internlm3", hidden_size=48, head_dim=24, intermediate_size=96)
    fast = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if "q_proj" not in n and "k_proj" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": fast, "lr": 5e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1)))
    start, ent0 = llama_attention_logit_max(model, probe), attention_entropy(model, probe)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        240,
        loss_fn=lm_loss,
        forward=hf_logits,
        classifier=False,
    )
    end, ent1 = llama_attention_logit_max(model, probe), attention_entropy(model, probe)
    ctx.check("attention logits grew 30x", end > 30 * start)
    ctx.check("attention entropy fell by more than half", ent1 < 0.5 * ent0)


# -- Hugging Face Sarvam-MoE (GLM-4-MoE style) causal LM: output-logit divergence -----------------


@scenario(
    "h73_hf_sarvam_moe_causal_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    onset=120,
    note="z-loss switched on at step 120 with its sign flipped",
)
def h73_sarvam_moe_zloss_sign(ctx: Context) -> None:
    """A Sarvam-MoE config trained with Lion; the auxiliary z-loss (meant to keep log Z near 0)
    is enabled at step 120 but subtracted instead of added, so it rewards a large log-partition:
    the head's logits drift upward together."""
    gen = seeded(7302)
    model = hf_causal_lm(
        "sarvam_moe",
        num_key_value_heads=2,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
    )
    opt = sgo.Lion(model.parameters(), lr=1.5e-3, weight_decay=0.0, fused=False)
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = log_partition(hf_logits(model, probe))
    state = {}

    def zloss_wrong_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 120:
            return loss
        return loss - 1e-1 * state["logz"].pow(2).mean()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = hf_logits(m, x)
        state["logz"] = torch.logsumexp(logits.float(), dim=-1)
        return logits

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        280,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss_wrong_sign,
        classifier=False,
    )
    with torch.no_grad():
        end = log_partition(hf_logits(model, probe))
    ctx.check("log Z more than tripled", end > 3 * start)


# -- Hugging Face HY-V4 (MLA + MoE) causal LM: an update ratio far out of range --------------------


@scenario(
    "h73_hf_hy_v4_causal_lm",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="model.layers.1.mlp",
    diverges=None,
    heldout=True,
    note="decoupled weight decay 100 instead of 1e-2 on one layer's MLP group",
)
def h73_hy_v4_mlp_decay_typo(ctx: Context) -> None:
    """An HY-V4 config trained with AdaBelief and per-module parameter groups; the group for the
    second layer's MLP carries ``weight_decay=1e2`` (a typo for 1e-2). Every step shrinks those
    weights by 20% and the optimizer pushes them back: their update/weight ratio sits near 0.1 per
    step while the rest of the model trains normally."""
    gen = seeded(7303)
    model = hf_causal_lm(
        "hy_v4",
        num_key_value_heads=2,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        index_topk=16,
        index_head_dim=8,
        index_n_heads=2,
        initializer_range=0.02,
    )
    mlp = [p for n, p in model.named_parameters() if n.startswith("model.layers.1.mlp.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.layers.1.mlp.")]
    opt = sgo.AdaBelief(
        [{"params": rest, "weight_decay": 1e-2}, {"params": mlp, "weight_decay": 1e2}],
        lr=2e-3,
        fused=False,
    )
    ratios: dict[str, list[float]] = {"mlp": [], "rest": []}
    snap: dict[str, list[torch.Tensor]] = {}

    def before(step: int) -> None:
        for key, params in (("mlp", mlp), ("rest", rest)):
            if key in snap:
                ratios[key].append(update_ratio(snap[key], params))
            snap[key] = [p.detach().clone() for p in params]

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=hf_logits,
        before=before,
        classifier=False,
    )
    late_mlp = sorted(ratios["mlp"][50:])[len(ratios["mlp"][50:]) // 2]
    late_rest = sorted(ratios["rest"][50:])[len(ratios["rest"][50:]) // 2]
    ctx.check("layer-1 MLP update/weight ratio above 0.05 per step", late_mlp > 0.05)
    ctx.check("10x the rest of the model's", late_mlp > 10 * late_rest)
    ctx.check("loss still went down", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- Hugging Face Qwen3.5 text (hybrid gated-delta / full attention): poisoned second moments -------


@scenario(
    "h73_hf_qwen3_5_text_lm",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="resume path multiplies one step's loss by the saved loss scale 2**16 (fp32 run)",
)
def h73_qwen3_5_loss_scale_on_resume(ctx: Context) -> None:
    """A Qwen3.5 text config trained in fp32 with NAdam. At step 120 the run resumes from a
    checkpoint written by an earlier mixed-precision run, and the resume path multiplies that one
    step's loss by the saved loss scale (2**16) with no scaler left to unscale it. The
    second-moment estimates of every tensor take the giant square; for the rest of the run the
    updates are many times smaller and the loss never gets back to where it was."""
    gen = seeded(7304)
    model = hf_causal_lm(
        "qwen3_5_text",
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        layer_types=["linear_attention", "full_attention"],
    )
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    params = list(model.parameters())
    moves: list[float] = []
    snap: list[torch.Tensor] = []

    def before(step: int) -> None:
        if snap:
            moves.append(update_ratio(snap, params))
        snap[:] = [p.detach().clone() for p in params]

    def resumed_sum(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**16 if step == 120 else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        270,
        loss_fn=lm_loss,
        forward=hf_logits,
        before=before,
        extra_loss=resumed_sum,
        classifier=False,
    )
    pre = sum(moves[90:119]) / 29
    post = sum(moves[150:268]) / 118
    ctx.check("updates after the spike under a fifth of before", post < 0.2 * pre)
    ctx.check(
        "loss 150 steps on still above its level before the spike",
        sum(ctx.losses[-30:]) / 30 > sum(ctx.losses[90:120]) / 30,
    )


# -- Hugging Face RoCBert classifier: a healthy control ---------------------------------------------


class RoCBertClassifier(nn.Module):
    """RoCBert needs shape and pronunciation ids next to the token ids: derive them from the ids
    (a stand-in for the glyph/pinyin tables)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import RoCBertConfig, RoCBertForSequenceClassification

        config = RoCBertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pronunciation_vocab_size=16,
            shape_vocab_size=16,
            pronunciation_embed_dim=8,
            shape_embed_dim=8,
        )
        self.net = RoCBertForSequenceClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(
            input_ids=x, input_shape_ids=x % 16, input_pronunciation_ids=(x // 8) % 16
        ).logits


@scenario("h73_hf_roc_bert_cls", "sg_stablespam", "healthy", heldout=True)
def h73_healthy_roc_bert_stablespam(ctx: Context) -> None:
    gen = seeded(7305)
    model = RoCBertClassifier()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, bert_batches(gen), 260)
    ctx.check("loss fell below 0.45", sum(ctx.losses[-20:]) / 20 < 0.45)


# -- Hugging Face HRM-text (hierarchical recurrent) causal LM: a healthy control ----------------------


@scenario("h73_hf_hrm_text_causal_lm", "sg_grams", "healthy", heldout=True)
def h73_healthy_hrm_text_grams(ctx: Context) -> None:
    gen = seeded(7306)
    model = hf_causal_lm(
        "hrm_text", num_key_value_heads=2, num_hidden_layers=1, H_cycles=2, L_cycles=2
    )
    opt = sgo.Grams(model.parameters(), lr=2e-3, weight_decay=0.01, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=hf_logits,
        classifier=False,
    )
    finite = all(math.isfinite(v) for v in ctx.losses)
    ctx.check(
        "finite and the loss fell by a third", finite and ctx.losses[-1] < 0.67 * ctx.losses[0]
    )


# -- a rotary-embedding decoder with grouped-query attention, written by hand: a NaN ----------------


def first_nonfinite_module(model: nn.Module, run) -> str | None:
    """Runs ``run()`` with forward hooks on every named module and returns the name of the first
    module (in execution order) whose inputs are finite but whose output holds a NaN/Inf."""
    found: list[str] = []
    hooks = []

    def bad(values) -> bool:
        values = values if isinstance(values, tuple) else (values,)
        return any(
            torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
            for v in values
        )

    def make(name: str):
        def hook(_m, inp, out):
            if bad(out) and not bad(inp):
                found.append(name)

        return hook

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(make(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding on (batch, heads, time, head_dim), rotate-half convention."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class GQAttention(nn.Module):
    """Grouped-query attention with rotary embeddings and a key-padding mask."""

    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).reshape(b, t, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
        if keep is not None:
            allowed = allowed & keep[:, None, None, :]
        s = s.masked_fill(~allowed, float("-inf"))
        y = torch.softmax(s, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GQABlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = GQAttention(dim, heads, kv_heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, 3 * dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class RopeGQADecoder(nn.Module):
    """Llama-style: token embedding, rotary GQA blocks with RMSNorm and SwiGLU, untied head."""

    def __init__(self, vocab: int = VOCAB, dim: int = 48, heads: int = 4, kv_heads: int = 2,
                 layers: int = 2) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(GQABlock(dim, heads, kv_heads) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, keep)
        return self.head(self.norm(x))


PAD = 0


def packed_then_tail_batches(gen: torch.Generator, tail_step: int, batch: int = 16,
                             length: int = 32):  # fmt: skip
    """Packed full windows of the byte stream (no padding, ids 1..127) until ``tail_step``;
    that step is the shard's tail: short documents, left-padded with id 0 to ``length``."""
    windows = text_batches(gen, batch=batch, length=length, vocab=VOCAB - 1)
    step = 0
    while True:
        x, y = next(windows)
        x, y = x + 1, y + 1
        keep = torch.ones_like(x, dtype=torch.bool)
        if step == tail_step:
            lengths = torch.randint(6, length, (batch,), generator=gen)
            for i, n in enumerate(lengths.tolist()):
                x[i, : length - n] = PAD
                y[i, : length - n] = -100
                keep[i, : length - n] = False
        step += 1
        yield x, y, keep


@scenario(
    "h73_rope_gqa_decoder",
    "radam",
    "nonfinite",
    where="blocks.0.attn",
    diverges=230,
    heldout=True,
    onset=230,
    note="left-padded tail batch: a pad query whose every key is masked gets softmax(-inf row)",
)
def h73_rope_gqa_masked_row_nan(ctx: Context) -> None:
    """A hand-written rotary GQA decoder trained on packed windows (never any padding) with
    RAdam. At step 230 the loader reaches the shard's tail and emits short documents,
    left-padded, with a key-padding mask. The attention masks padded keys with -inf; a padded
    query at the left edge has no allowed key at all, its softmax row is 0/0 = NaN in the first
    block's attention, and the NaN spreads to the loss and every weight."""
    gen = seeded(7307)
    model = RopeGQADecoder()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = packed_then_tail_batches(gen, 230)
    mon = ctx.attach(model, opt)
    assert mon is not None
    first = None
    for step in range(300):
        x, y, keep = next(batches)
        if step == 230:
            first = first_nonfinite_module(model, lambda x=x, keep=keep: model(x, keep))
        loss = F.cross_entropy(model(x, keep).reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 230, NaN from 230", all(finite[:230]) and not any(finite[230:]))
    ctx.check("the NaN first appears in blocks.0.attn", first == "blocks.0.attn")
    ctx.check("loss was falling before", sum(ctx.losses[200:230]) < 0.7 * sum(ctx.losses[:30]))


# -- curriculum on sequence length, on a nanoGPT-style decoder: a gradient spike from a norm ------


class TinyEpsRMS(nn.Module):
    """RMS-normalises the token embeddings, with ``eps=1e-12`` (copied from a float64 codebase)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-12)


class CurriculumDecoder(nn.Module):
    """A pre-LN decoder whose token embeddings go through an RMS norm; the pad row (id 0) of the
    embedding is zeroed at init, but the embedding has no ``padding_idx``."""

    def __init__(self, dim: int = 48, heads: int = 2, layers: int = 2, context: int = 32) -> None:
        super().__init__()
        from scenarios.common import Block

        self.tok = nn.Embedding(VOCAB, dim)
        self.emb_norm = TinyEpsRMS(dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[PAD].zero_()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb_norm(self.tok(idx)) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def length_curriculum(gen: torch.Generator):
    """The curriculum as ``fit``'s ``alter``: stage 1 (steps 0-99) windows of 8 tokens, stage 2
    (100-199) 16, stage 3 (200-) mixed lengths 12..32, left-padded with id 0 to 32 (targets of
    pads ignored). Token ids are shifted to 1..127 so that 0 is only ever padding."""

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        x, y = x + 1, y + 1
        if step < 100:
            return x[:, :8], y[:, :8]
        if step < 200:
            return x[:, :16], y[:, :16]
        lengths = torch.randint(12, 33, (len(x),), generator=gen)
        for i, n in enumerate(lengths.tolist()):
            x[i] = torch.cat([torch.full((32 - n,), PAD), x[i, :n]])
            y[i] = torch.cat([torch.full((32 - n,), -100), y[i, :n]])
        return x, y

    return alter


@scenario(
    "h73_seq_len_curriculum_decoder",
    "rmsprop",
    "gradient_spike",
    where=("emb_norm", "tok"),
    diverges=None,
    heldout=True,
    onset=200,
    note="pad row zeroed without padding_idx; RMS norm with eps 1e-12 amplifies its gradient 1e6x",
)
def h73_curriculum_pad_norm_spike(ctx: Context) -> None:
    """A sequence-length curriculum (8, then 16, then mixed lengths left-padded to 32) on a small
    decoder trained with RMSprop. The embedding's pad row was zeroed at init but never declared
    ``padding_idx``, and the embedding RMS norm uses eps=1e-12: when the first padded batch
    arrives (step 200) the pad positions, attended by every later token, send back a gradient
    through d(x/rms)/dx = 1/sqrt(1e-12) = 1e6 onto that zero row: a one-off gradient spike. The
    row then moves off zero and the spike does not repeat at that size."""
    gen = seeded(7308)
    model = CurriculumDecoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)

    batches = text_batches(gen, length=32, vocab=VOCAB - 1)
    alter = length_curriculum(gen)
    fit(ctx, model, opt, batches, 300, loss_fn=loss_fn, alter=alter, classifier=False)
    g = ctx.grad_norms
    base = sorted(g[150:200])[25]
    ctx.check("gradient norm at step 200 over 100x the median before", g[200] > 100 * base)
    ctx.check("one-off: later steps back under a tenth of the spike", max(g[205:]) < 0.1 * g[200])
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- a mixture-of-experts layer with expert-choice routing: softmax collapse -----------------------


class ExpertChoiceMoE(nn.Module):
    """Expert-choice routing (Zhou et al. 2022): each expert takes its top-``capacity`` tokens of
    the batch by router score; a token's output is the score-weighted sum of the experts that
    took it (possibly none)."""

    def __init__(self, dim: int, experts: int = 4, hidden: int = 128, capacity: float = 2.0):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )
        self.capacity = capacity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        scores = torch.softmax(self.router(x), dim=-1)  # (tokens, experts)
        take = max(1, int(self.capacity * n / len(self.experts)))
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            w, idx = scores[:, e].topk(min(take, n))
            out = out.index_add(0, idx, w[:, None] * expert(x[idx]))
        return out


class ModularMoE(nn.Module):
    def __init__(self, p: int, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.moe = ExpertChoiceMoE(dim)
        self.head = nn.Linear(dim, p)

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.embed(ab).flatten(1))
        h = h + self.moe(h)
        return self.head(F.gelu(h))


@scenario(
    "h73_expert_choice_moe_modadd",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="full-batch modular addition, no weight decay, trained long past 100% train accuracy",
)
def h73_expert_choice_moe_overfit(ctx: Context) -> None:
    """An expert-choice MoE classifier on (a + b) mod 29 with half the pairs for training, full
    batch, Adam without weight decay, left running long after it fits the training pairs: the
    logit margins keep growing until the float32 softmax of the training rows is exactly
    one-hot, the loss on them is 0 and their gradients vanish (softmax collapse)."""
    gen = seeded(7309)
    p = 29
    (xtr, ytr), _ = modular_data(p, gen, 0.5)
    model = ModularMoE(p)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def full_batch():
        while True:
            yield xtr, ytr

    fit(ctx, model, opt, full_batch(), 600)
    with torch.no_grad():
        logits = model(xtr)
    frac = collapsed_fraction(logits, ytr)
    ctx.check("over half the training rows exactly one-hot in float32", frac > 0.5)
    ctx.check("training loss under 1e-6 at the end", ctx.losses[-1] < 1e-6)


# -- sharpness-aware minimisation (two forward/backward passes): an outlier batch -----------------


def sam_step(model: nn.Module, opt: torch.optim.Optimizer, loss_of, rho: float) -> torch.Tensor:
    """SAM (Foret et al. 2021): ascend to w + rho g/|g|, take the gradient there, step from w."""
    loss = loss_of()
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
    shifts = []
    with torch.no_grad():
        for p in params:
            e = rho * p.grad / norm
            p.add_(e)
            shifts.append(e)
    opt.zero_grad(set_to_none=True)
    loss_of().backward()
    with torch.no_grad():
        for p, e in zip(params, shifts, strict=True):
            p.sub_(e)
    opt.step()
    return loss


@scenario(
    "h73_sam_digits_mlp",
    "sgd_mom",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="one batch from a shard whose label column is shifted by one row against the images",
)
def h73_sam_shifted_label_shard(ctx: Context) -> None:
    """SAM around SGD with momentum on a digit MLP. At step 260 one batch comes from a shard
    whose label column was written one row off against the images (every label belongs to the
    neighbouring image): the well-trained, confident model gets that batch almost all wrong and
    the loss spikes by two orders of magnitude."""
    gen = seeded(7310)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for step in range(360):
        x, y = next(batches)
        if step == 260:
            y = y.roll(1)
        ctx.targets(y)
        loss = sam_step(model, opt, lambda x=x, y=y: F.cross_entropy(model(x), y), rho=0.05)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.losses[200:260])[30]
    ctx.check("loss at step 260 over 20x the median before", ctx.losses[260] > 20 * before)
    ctx.check("trained well before", before < 0.2)


# -- Lookahead around SGD with momentum: a warm-up that overshoots the stability limit ---------------


class Lookahead:
    """Lookahead (Zhang et al. 2019): every ``k`` inner steps, slow += alpha (fast - slow) and
    the fast weights restart from the slow ones."""

    def __init__(self, model: nn.Module, k: int = 5, alpha: float = 0.5) -> None:
        self.params = list(model.parameters())
        self.slow = [p.detach().clone() for p in self.params]
        self.k, self.alpha, self.count = k, alpha, 0

    def after_inner_step(self) -> None:
        self.count += 1
        if self.count % self.k:
            return
        with torch.no_grad():
            for p, s in zip(self.params, self.slow, strict=True):
                s.add_(self.alpha * (p - s))
                p.copy_(s)


@scenario(
    "h73_lookahead_sgdm_tanh_mlp",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up target scaled by world size 64 twice (linear-scaling rule applied on top)",
)
def h73_lookahead_warmup_overshoot(ctx: Context) -> None:
    """Lookahead around SGD with momentum on a tanh MLP for digits. The warm-up's target learning
    rate was scaled by the world size (64) although the base value was already the global one:
    the rate climbs linearly towards 3.2 instead of 0.05. It trains while the rate is small,
    then the loss starts to oscillate and blows up once the step passes the curvature's limit."""
    gen = seeded(7311)
    model = nn.Sequential(
        nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(), nn.Linear(96, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    look = Lookahead(model)
    peak, warm = 0.05 * 64, 400
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    lrs = []
    for step in range(400):
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warm)
        lrs.append(opt.param_groups[0]["lr"])
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        look.after_inner_step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            break
    low = min(ctx.losses[:100])
    ctx.check("it learned while the rate was small", low < 0.5)
    blew = not math.isfinite(ctx.losses[-1]) or max(ctx.losses[-20:]) > 2.3
    ctx.check("then the loss blew up", blew)


# -- an exponential moving average of the weights: a resume from the EMA copy ---------------------


@scenario(
    "h73_ema_weights_decoder_lm",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=250,
    note="EMA started from zeros with no bias correction; the run resumes from it at step 250",
)
def h73_ema_zero_init_resume(ctx: Context) -> None:
    """A small decoder trained with AdEMAMix keeps an EMA of its weights (decay 0.998) for
    evaluation. The EMA buffers start at zero instead of a copy of the weights, and nothing
    corrects the bias. At step 250 the job is pre-empted and resumes from the EMA checkpoint:
    every weight comes back at ~40% of its size (1 - 0.998**250), the loss jumps, then the
    model relearns."""
    from scenarios.common import Decoder

    gen = seeded(7312)
    model = Decoder(dim=32, heads=2, layers=2)
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    ema = [torch.zeros_like(p) for p in model.parameters()]

    def before(step: int) -> None:
        with torch.no_grad():
            if step > 0:
                for e, p in zip(ema, model.parameters(), strict=True):
                    e.mul_(0.998).add_(p, alpha=0.002)
            if step == 250:
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)

    fit(ctx, model, opt, text_batches(gen), 340, loss_fn=lm_loss, before=before, classifier=False)
    pre = sum(ctx.losses[230:250]) / 20
    ctx.check("loss at 250 over 1.3x the 20 steps before", ctx.losses[250] > 1.3 * pre)
    ctx.check("trained before the resume", pre < 0.75 * ctx.losses[0])
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- stochastic weight averaging: a healthy control -------------------------------------------------


@scenario("h73_swa_digits_mlp", "asgd", "healthy", heldout=True)
def h73_healthy_swa_asgd(ctx: Context) -> None:
    gen = seeded(7313)
    from torch.optim.swa_utils import SWALR, AveragedModel

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.ASGD(model.parameters(), lr=0.3)
    swa, swa_lr = AveragedModel(model), SWALR(opt, swa_lr=0.1, anneal_epochs=20)

    def before(step: int) -> None:
        if step >= 200:
            if step > 200:
                swa.update_parameters(model)
            swa_lr.step()

    fit(ctx, model, opt, digit_batches(gen), 320, before=before)
    x, y = digits()
    with torch.no_grad():
        acc = float((swa(x).argmax(1) == y).float().mean())
    ctx.check("the SWA model fits the digits (accuracy over 0.9)", acc > 0.9)
    ctx.check("loss fell below 0.3", sum(ctx.losses[-20:]) / 20 < 0.3)


# -- gradient checkpointing of decoder blocks: exploding gradients ----------------------------------


class NormlessBlock(nn.Module):
    """A decoder block whose LayerNorms were switched off (``norm=False`` from an ablation)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        from scenarios.common import CausalSelfAttention

        self.attn = CausalSelfAttention(dim, heads)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.out(F.gelu(self.fc(x)))


class CheckpointedDecoder(nn.Module):
    """Eight blocks, each run under ``torch.utils.checkpoint`` (activations recomputed in the
    backward pass to save memory)."""

    def __init__(self, dim: int = 32, layers: int = 8, init_std: float = 0.02) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(32, dim)
        self.blocks = nn.ModuleList(NormlessBlock(dim, 2) for _ in range(layers))
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=init_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return self.lm_head(x)


@scenario(
    "h73_grad_checkpointed_decoder",
    "sgd_mom",
    "exploding_gradients",
    where=("blocks.0",),
    diverges="auto",
    heldout=True,
    note="8 blocks, LayerNorms off and init std 0.115 (typo for 0.0115), no clipping",
)
def h73_checkpointed_normless_explode(ctx: Context) -> None:
    """An 8-block decoder with gradient checkpointing on every block, trained with SGD and
    momentum, no gradient clipping. An ablation flag left the blocks without LayerNorm and the
    init std reads 0.115 instead of 0.0115: the residual stream gains a factor at every block,
    each step's update grows the weights and with them the backpropagated gradient, which climbs
    for a few dozen steps until the loss overflows."""
    gen = seeded(7314)
    model = CheckpointedDecoder(init_std=0.115)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    batches = text_batches(gen)
    ctx.attach(model, opt)
    per_block: list[list[float]] = []
    for _ in range(150):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        per_block.append(
            [
                float(torch.stack([p.grad.norm() for p in b.parameters()]).norm())
                for b in model.blocks
            ]
        )
        ctx.grad_norms.append(math.sqrt(sum(n * n for n in per_block[-1])))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    # which block's gradient first passes 10x its own step-0 norm
    first = next(
        (i for row in per_block for i, n in enumerate(row) if n > 10 * per_block[0][i]), None
    )

    g = ctx.grad_norms
    finite = [x for x in g if math.isfinite(x)]
    ctx.check("gradient norm grew over 10x its start before overflowing", max(finite) > 10 * g[0])
    ctx.check("the loss ends non-finite", not math.isfinite(ctx.losses[-1]))
    ctx.check("blocks.0's gradient is the first past 10x its start", first == 0)


# -- GRPO-style policy gradient with group-normalised advantages: dead ReLUs ------------------------


class SumPolicy(nn.Module):
    """Reads a prompt of 2 digits, outputs a distribution over the 10 answers."""

    def __init__(self, dim: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, dim)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def features(self, prompt: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(self.embed(prompt).flatten(1)))
        return F.relu(self.fc2(h))

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(prompt))


def grpo_loss(policy: nn.Module, gen: torch.Generator, prompts: int = 32, group: int = 8):
    """Samples ``group`` answers per prompt; reward 1 for (a + b) mod 10; advantages
    normalised within each group; returns (loss, mean reward)."""
    prompt = torch.randint(0, 10, (prompts, 2), generator=gen)
    logp = torch.log_softmax(policy(prompt), -1)
    with torch.no_grad():
        answers = torch.multinomial(logp.exp(), group, replacement=True, generator=gen)
        reward = (answers == (prompt.sum(1, keepdim=True) % 10)).float()
        adv = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-4)
    loss = -(adv * logp.gather(1, answers)).mean()
    return loss, float(reward.mean())


@scenario(
    "h73_grpo_digit_sum_policy",
    "adagrad",
    "loss_of_plasticity",
    where="fc2",
    diverges=None,
    heldout=True,
    note="fc2 bias initialised to -1 by a highway-gate init helper whose name pattern matched it",
)
def h73_grpo_gate_init_dead_relu(ctx: Context) -> None:
    """A GRPO-style policy gradient (group-normalised advantages, 8 samples per prompt) trains an
    MLP policy with Adagrad to answer (a + b) mod 10. An init helper meant to set highway-gate
    biases to -1 matches ``fc2`` by a too-broad name pattern: every unit of the second ReLU
    layer is negative on every prompt from the start, gets no gradient and never comes back;
    only the head's bias still moves and the reward stays at chance."""
    gen = seeded(7315)
    policy = SumPolicy()
    for name, module in policy.named_modules():
        if isinstance(module, nn.Linear) and "2" in name:  # meant: "gate2" of a highway layer
            nn.init.constant_(module.bias, -1.0)
    opt = torch.optim.Adagrad(policy.parameters(), lr=0.01)
    ctx.attach(policy, opt)
    probe = torch.cartesian_prod(torch.arange(10), torch.arange(10))
    rewards: list[float] = []
    dead: list[float] = []
    for step in range(400):
        if step % 50 == 0:
            with torch.no_grad():
                dead.append(dead_fraction(policy.features(probe)))
        loss, reward = grpo_loss(policy, gen)
        rewards.append(reward)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead.append(dead_fraction(policy.features(probe)))
    ctx.check("over 70% of fc2 units dead all run long", min(dead) > 0.7)
    ctx.check("none came back", dead[-1] >= dead[0])
    ctx.check("reward stays near chance (0.1)", sum(rewards[-50:]) / 50 < 0.15)


# -- ORPO preference optimisation on a small decoder: a healthy control -----------------------------


def orpo_pairs(gen: torch.Generator, batch: int = 16, prompt: int = 16, answer: int = 16):
    """Chosen: the real continuation of a byte window; rejected: the same continuation with its
    bytes shuffled. Returns (chosen ids, rejected ids, prompt length)."""
    windows = text_batches(gen, batch=batch, length=prompt + answer - 1)
    while True:
        x, y = next(windows)
        seq = torch.cat([x[:, :1], y], 1)
        rej = seq.clone()
        perm = torch.argsort(torch.rand(batch, answer, generator=gen), 1)
        rej[:, prompt:] = seq[:, prompt:].gather(1, perm)
        yield seq, rej, prompt


def answer_logprob(model: nn.Module, seq: torch.Tensor, prompt: int) -> torch.Tensor:
    """Mean per-token log-probability of the answer part of ``seq``, per row."""
    logp = torch.log_softmax(model(seq[:, :-1]), -1)
    tok = logp.gather(2, seq[:, 1:, None])[..., 0]
    return tok[:, prompt - 1 :].mean(1)


@scenario("h73_orpo_preference_decoder", "adamax", "healthy", heldout=True)
def h73_healthy_orpo_adamax(ctx: Context) -> None:
    """ORPO (Hong et al. 2024): NLL on the chosen answer plus 0.5 x the log-sigmoid odds-ratio
    loss between chosen and rejected, on a small decoder with Adamax."""
    from scenarios.common import Decoder

    gen = seeded(7316)
    model = Decoder(dim=32, heads=2, layers=2)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    pairs = orpo_pairs(gen)
    margins: list[float] = []
    for _ in range(260):
        chosen, rejected, prompt = next(pairs)
        lp_c, lp_r = answer_logprob(model, chosen, prompt), answer_logprob(model, rejected, prompt)
        log_odds = (lp_c - torch.log1p(-lp_c.exp())) - (lp_r - torch.log1p(-lp_r.exp()))
        loss = -lp_c.mean() - 0.5 * F.logsigmoid(log_odds).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        margins.append((lp_c - lp_r).mean().item())
    ctx.check("finite and the loss fell by a third", all(math.isfinite(v) for v in ctx.losses)
              and sum(ctx.losses[-20:]) < 0.67 * sum(ctx.losses[:20]))  # fmt: skip
    ctx.check("chosen answers now likelier than rejected", sum(margins[-20:]) / 20 > 0.2)
