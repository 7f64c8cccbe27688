"""Held-out scenarios, set 87 (``h87_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held or its healthy control trained normally).

Families: Hugging Face CPM-Ant, Kimi Linear, Qwen4-Exp text, Apertus 1.5 text causal LMs and a
T5Gemma 2 encoder-decoder, all from tiny configs; hand-written: an odds-ratio preference trainer,
a retrieval-augmented LM with a frozen retriever, a speculative-decoding draft model distilled
from a teacher, a mixture-of-depths router LM, a byte-level LM with patching, a top-k sparse
autoencoder on activations, a gated linear-attention RNN, a character CNN classifier, a low-rank
adapter fine-tune, a T5-style multi-task span-corruption denoiser and a contrastive sentence
encoder with in-batch negatives.

Optimizers: sg_lion, adamw, nadam, rmsprop, adamax, radam, sg_grams, sg_ademamix,
sg_stablespam, sgd_mom, asgd, adadelta, sg_adabelief, adagrad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)


def _finite(values) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _hf_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x, use_cache=False).logits


# -- Hugging Face models from tiny configs ------------------------------------------------------


def _cpmant():
    from transformers import CpmAntConfig, CpmAntForCausalLM

    config = CpmAntConfig(
        vocab_size=128,
        hidden_size=32,
        num_attention_heads=2,
        dim_head=16,
        dim_ff=64,
        num_hidden_layers=2,
        position_bias_num_buckets=32,
        position_bias_max_distance=64,
        prompt_length=0,
        init_std=0.02,
        tie_word_embeddings=False,
    )
    return CpmAntForCausalLM(config)


@scenario(
    "h87_hf_cpmant_causal_lm",
    "sg_grams",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss weight 0.2 (meant 2e-4) added with the wrong sign",
    onset=0,
)
def h87_cpmant_zloss_wrong_sign(ctx: Context) -> None:
    """A CPM-Ant LM with an auxiliary z-loss whose weight was copied as 0.2 (meant 2e-4) and
    whose sign was flipped when the term moved into a helper: every step pushes log Z up."""
    from steadygrad.optim import Grams

    gen = seeded(8701)
    model = _cpmant()
    opt = Grams(model.parameters(), lr=2e-3)
    seen: dict[str, torch.Tensor] = {}
    logz: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x, use_cache=False).logits
        seen["logits"] = logits
        return logits

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        lz = torch.logsumexp(seen["logits"].float(), dim=-1)
        logz.append(float(lz.mean().detach()))
        return loss - 0.2 * (lz**2).mean()  # should be +2e-4

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=16),
        200,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    finite_lz = [v for v in logz if math.isfinite(v)]
    ctx.check("mean log Z grew by over 20 nats", max(finite_lz) > logz[0] + 20)
    ctx.check("log Z grew from the start", not finite_lz[50:] or finite_lz[50] > logz[0] + 2)


def _qwen4():
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    config = Qwen4ExpTextConfig(
        vocab_size=128,
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
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        hc_lowrank=8,
        ngram_vocab_size_base=1000,
        heads_per_ngram=2,
        split_ngram_parts=4,
    )
    return Qwen4ExpForCausalLM(config)


@scenario(
    "h87_hf_qwen4_exp_text_lm",
    "adamw",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="one step backpropagated with a 2**16 manual loss scale that was never unscaled",
    onset=150,
)
def h87_qwen4_unscaled_loss_once(ctx: Context) -> None:
    """A Qwen4-Exp text LM trained with AdamW; on the first step after a resume (step 150) the
    manual fp16-style loss scale of 65536 is applied but the gradients are not unscaled. Every
    second moment fills with a gradient 65536x too large and the run then barely moves."""
    gen = seeded(8702)
    model = _qwen4()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    moves: list[float] = []
    prev: list[torch.Tensor] = []
    dense = [p for n, p in model.named_parameters() if "embed" not in n]

    def before(step: int) -> None:
        now = [p.detach().clone() for p in dense]
        if prev:
            moves.append(float(sum((a - b).norm() ** 2 for a, b in zip(now, prev, strict=True))))
        prev[:] = now

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 150 else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        320,
        loss_fn=lm_loss,
        forward=_hf_forward,
        extra_loss=extra,
        before=before,
        classifier=False,
    )
    before_mv = sum(moves[100:149]) / 49
    after_mv = sum(moves[220:318]) / len(moves[220:318])
    ctx.check("dense-layer updates 25x smaller long after the spike", after_mv < 0.04 * before_mv)
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss stayed above its pre-spike level", sum(ctx.losses[-50:]) / 50 > pre)
    ctx.check("all finite", all(_finite(ctx.losses)))


def _apertus():
    from transformers.models.apertus1p5.configuration_apertus1p5 import Apertus1p5TextConfig
    from transformers.models.apertus1p5.modeling_apertus1p5 import Apertus1p5TextForCausalLM

    config = Apertus1p5TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Apertus1p5TextForCausalLM(config)


@scenario(
    "h87_hf_apertus1p5_text_causal_lm",
    "nadam",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up target typed 3e-1 instead of 3e-3",
    onset=0,
)
def h87_apertus_warmup_typo(ctx: Context) -> None:
    """An Apertus 1.5 text LM whose linear warm-up climbs to 0.3 instead of 0.003: the loss
    first falls, then oscillates and blows up once the step outgrows the curvature."""
    gen = seeded(8703)
    model = _apertus()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-5)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 3e-1 * min(1.0, (step + 1) / 200)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        260,
        loss_fn=lm_loss,
        forward=_hf_forward,
        before=before,
        classifier=False,
    )
    losses = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    low = min(losses[:100])
    ctx.check("loss first fell", low < losses[0] - 0.5)
    ctx.check("then blew up above the start", max(losses[100:]) > losses[0] + 1.0)


def _t5gemma2():
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    text = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        max_position_embeddings=64,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    config = T5Gemma2Config(
        encoder=dict(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=125,
            eoi_token_index=126,
            image_token_index=127,
        ),
        decoder=text,
    )
    return T5Gemma2ForConditionalGeneration(config)


@scenario(
    "h87_hf_t5gemma2_reverse_seq2seq",
    "rmsprop",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch whose targets came from a different shard (misaligned rows)",
    onset=220,
)
def h87_t5gemma2_misaligned_batch(ctx: Context) -> None:
    """A T5Gemma 2 encoder-decoder learning to reverse 12 tokens; at step 220 one batch is
    read with source and target files out of step, so its targets have nothing to do with its
    inputs and are drawn from an unseen token range."""
    gen = seeded(8704)
    model = _t5gemma2()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    for step in range(320):
        x = torch.randint(3, 40, (32, 12), generator=gen)
        y = x.flip(1)
        if step == 220:
            y = torch.randint(60, 124, (32, 12), generator=gen)
        dec_in = torch.cat([torch.full((32, 1), 2), y[:, :-1]], 1)
        logits = model(input_ids=x, decoder_input_ids=dec_in, use_cache=False).logits
        loss = lm_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    med = sorted(ctx.losses[200:220])[10]
    ctx.check("loss spiked 2x on the bad batch", ctx.losses[220] > 2 * med)
    ctx.check("recovered afterwards", sum(ctx.losses[300:]) / 20 < ctx.losses[220])


def _kimi():
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    config = KimiLinearConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        num_experts_per_tok=2,
        num_local_experts=4,
        use_cache=False,
        linear_head_dim=16,
        linear_num_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return KimiLinearForCausalLM(config)


@scenario("h87_hf_kimi_linear_causal_lm", "adamw", "healthy", heldout=True)
def h87_kimi_linear_healthy(ctx: Context) -> None:
    gen = seeded(8705)
    model = _kimi()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        160,
        loss_fn=lm_loss,
        forward=_hf_forward,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 1.0)


# -- an odds-ratio preference trainer --------------------------------------------------------------


class SeqLogProb(nn.Module):
    """Mean token log-probability over the response positions: sum(mask*lp) / sum(mask)."""

    def forward(self, token_lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (token_lp * mask).sum(1) / mask.sum(1)


class PrefPolicy(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)
        self.seq_logp = SeqLogProb()

    def token_logprobs(self, seq: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(seq[:, :-1]))
        lp = F.log_softmax(self.head(h), -1)
        return lp.gather(-1, seq[:, 1:, None]).squeeze(-1)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor):
        lp = self.token_logprobs(seq)
        return lp, self.seq_logp(lp, mask)


def _pref_batch(gen: torch.Generator, batch: int = 32, prompt: int = 8, resp: int = 8):
    """Chosen response: the prompt's tokens sorted; rejected: random tokens."""
    p = torch.randint(1, 64, (batch, prompt), generator=gen)
    chosen = torch.cat([p, p.sort(1).values[:, :resp]], 1)
    rejected = torch.cat([p, torch.randint(1, 64, (batch, resp), generator=gen)], 1)
    mask = torch.zeros(batch, prompt + resp - 1)
    mask[:, prompt - 1 :] = 1.0
    return chosen, rejected, mask


@scenario(
    "h87_odds_ratio_preference_trainer",
    "adamax",
    "nonfinite",
    where="seq_logp",
    diverges=140,
    heldout=True,
    note="a pair whose response was truncated to length 0: 0/0 in the per-sequence mean",
    onset=140,
)
def h87_odds_ratio_empty_response(ctx: Context) -> None:
    """An odds-ratio preference objective (NLL on the chosen response plus -log sigmoid of the
    log odds-ratio); at step 140 the collator truncates one over-long prompt so that its chosen
    response keeps no tokens, and the masked mean divides 0 by 0."""
    gen = seeded(8706)
    model = PrefPolicy()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    nan_at: dict[str, int] = {}

    def log_odds(lp: torch.Tensor) -> torch.Tensor:
        return lp - torch.log1p(-torch.exp(lp).clamp(max=1 - 1e-6))

    for step in range(180):
        chosen, rejected, mask = _pref_batch(gen)
        mask_c = mask.clone()
        if step == 140:
            mask_c[5] = 0.0  # response truncated away
        tok_c, lp_c = model(chosen, mask_c)
        tok_r, lp_r = model(rejected, mask)
        if not torch.isfinite(lp_c).all() and "seq_logp" not in nan_at:
            nan_at["seq_logp"] = step
            ctx.check("token log-probs were finite there", bool(torch.isfinite(tok_c).all()))
        nll = -lp_c.mean()
        ratio = log_odds(lp_c) - log_odds(lp_r)
        loss = nll - 0.2 * F.logsigmoid(ratio).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = _finite(ctx.losses)
    ctx.check("finite before 140", all(finite[:140]))
    ctx.check("NaN from seq_logp at 140", nan_at.get("seq_logp") == 140 and not finite[140])
    ctx.check("loss fell before the fault", ctx.losses[130] < ctx.losses[0])


# -- retrieval-augmented LM with a frozen retriever ------------------------------------------------


class FrozenRetriever(nn.Module):
    """A frozen bag-of-bytes encoder and a fixed passage bank; returns the top passage vector."""

    def __init__(self, vocab: int, dim: int, passages: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.requires_grad_(False)
        with torch.no_grad():
            self.register_buffer("bank", self.embed(passages).mean(1))

    def forward(self, ctx_tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = self.embed(ctx_tokens).mean(1)
            idx = (q @ self.bank.T).argmax(-1)
            return self.bank[idx]


class RagLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 48, window: int = 8) -> None:
        super().__init__()
        data = text_bytes() % vocab
        starts = torch.arange(0, 64 * 97, 97)
        passages = data[starts[:, None] + torch.arange(16)]
        self.window = window
        self.retriever = FrozenRetriever(vocab, dim, passages)
        self.tok = nn.Embedding(vocab, dim)
        self.reader = nn.Sequential(nn.Linear(window * dim, 128), nn.GELU())
        self.fuse = nn.Linear(128 + dim, 128)
        self.head = nn.Linear(128, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx_vec = self.retriever(x)
        h = self.reader(self.tok(x[:, -self.window :]).flatten(1))
        h = F.gelu(self.fuse(torch.cat([h, ctx_vec], -1)))
        return self.head(h)


@scenario(
    "h87_retrieval_augmented_lm_frozen_retriever",
    "radam",
    "update_ratio_out_of_range",
    where="fuse",
    diverges=None,
    heldout=True,
    note="per-group LR for the fusion layer typed 3e-1 instead of 3e-4",
    onset=0,
)
def h87_rag_fuse_lr_typo(ctx: Context) -> None:
    """A retrieval-augmented next-byte predictor; the retriever is frozen on purpose and left out
    of the optimizer. The fusion layer got its own param group (to warm it faster) and its LR
    was typed 3e-1 instead of 3e-4: its update/weight ratio is far above everyone else's."""
    gen = seeded(8707)
    model = RagLM()
    groups = [
        {"params": list(model.tok.parameters()) + list(model.reader.parameters()), "lr": 3e-4},
        {"params": list(model.head.parameters()), "lr": 3e-4},
        {"params": list(model.fuse.parameters()), "lr": 3e-1},
    ]
    opt = torch.optim.RAdam(groups)
    ratios: dict[str, list[float]] = {"fuse": [], "reader": [], "head": []}
    watch = {
        "fuse": model.fuse.weight,
        "reader": model.reader[0].weight,
        "head": model.head.weight,
    }
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        for k, w in watch.items():
            if k in prev:
                ratios[k].append(float((w - prev[k]).norm() / w.norm()))
            prev[k] = w.detach().clone()

    def batches():
        for x, y in text_batches(gen, batch=32, length=16):
            yield x, y[:, -1]

    fit(ctx, model, opt, batches(), 300, before=before)
    med = {k: sorted(v)[len(v) // 2] for k, v in ratios.items()}
    ctx.check("fuse update ratio 20x the reader's", med["fuse"] > 20 * med["reader"])
    ctx.check("fuse update ratio 20x the head's", med["fuse"] > 20 * med["head"])
    ctx.check("finite", all(_finite(ctx.losses)))


# -- speculative-decoding draft model distilled from a teacher -------------------------------------


class DraftLM(nn.Module):
    def __init__(self, vocab: int = 32, context: int = 4, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.body = nn.Sequential(nn.Linear(context * 16, dim), nn.ReLU())
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x).flatten(1)))


@scenario(
    "h87_speculative_draft_distill",
    "sg_lion",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="hard teacher argmax labels on a small fixed prompt set, no weight decay, many epochs",
    onset=0,
)
def h87_draft_hard_label_collapse(ctx: Context) -> None:
    """A draft model for speculative decoding distilled from a frozen teacher; the distillation
    script uses the teacher's argmax token as a hard label (soft KL was meant) on 512 cached
    prompts, and it is trained for many epochs: the draft's softmax goes exactly one-hot."""
    from steadygrad.optim import Lion

    gen = seeded(8708)
    teacher = DraftLM(dim=128)
    for p in teacher.parameters():
        p.requires_grad_(False)
    prompts = torch.randint(0, 32, (512, 4), generator=gen)
    with torch.no_grad():
        labels = teacher(prompts).argmax(-1)
    model = DraftLM(dim=128)
    opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.0)

    def batches():
        while True:
            order = torch.randperm(512, generator=gen)
            for i in range(0, 512, 128):
                idx = order[i : i + 128]
                yield prompts[idx], labels[idx]

    fit(ctx, model, opt, batches(), 500)
    with torch.no_grad():
        frac = collapsed_fraction(model(prompts), labels)
    ctx.check("over half of training rows exactly one-hot in float32", frac > 0.5)
    ctx.check("training loss at ~0", sum(ctx.losses[-10:]) / 10 < 1e-4)


# -- mixture-of-depths router LM -----------------------------------------------------------------


class RawAttention(nn.Module):
    """Causal attention with the 1/sqrt(head_dim) scale forgotten."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2)  # missing / sqrt(d_head)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        att = scores.softmax(-1)
        with torch.no_grad():
            self.max_logit = float(scores.masked_fill(mask, 0).abs().max())
            ent = -(att * att.clamp_min(1e-30).log()).sum(-1)
            self.entropy = float(ent[..., t // 2 :].mean())
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class MoDBlock(nn.Module):
    def __init__(self, dim: int, heads: int, capacity: float) -> None:
        super().__init__()
        self.router = nn.Linear(dim, 1)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RawAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.capacity = capacity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.router(x).squeeze(-1)
        k = max(1, int(self.capacity * x.shape[1]))
        top = score.topk(k, dim=1).indices
        sel = torch.zeros_like(score).scatter(1, top, 1.0)
        gate = (sel * torch.sigmoid(score))[..., None]
        h = self.attn(self.ln1(x))
        h = h + self.mlp(self.ln2(x + h))
        return x + gate * h


class MoDLM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(32, dim)
        self.blocks = nn.ModuleList(MoDBlock(dim, heads, 0.5) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


@scenario(
    "h87_mixture_of_depths_router_lm",
    "sg_ademamix",
    "attention_logit_growth",
    where="blocks.0.attn",
    diverges="auto",
    heldout=True,
    note="hand-rolled attention without 1/sqrt(d_head), LR 1e-2",
    onset=0,
)
def h87_mod_unscaled_attention(ctx: Context) -> None:
    """A mixture-of-depths LM (a router sends half the tokens through each block) whose
    hand-rolled attention forgot the 1/sqrt(d_head) scale, trained with AdEMAMix at a large LR:
    the q/k products grow and the attention rows go one-hot."""
    from steadygrad.optim import AdEMAMix

    gen = seeded(8709)
    model = MoDLM()
    opt = AdEMAMix(model.parameters(), lr=1e-2)
    logits: list[list[float]] = [[], []]
    ents: list[list[float]] = [[], []]

    def before(step: int) -> None:
        if step > 0:
            for i, b in enumerate(model.blocks):
                logits[i].append(b.attn.max_logit)
                ents[i].append(b.attn.entropy)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        300,
        loss_fn=lm_loss,
        before=before,
        classifier=False,
    )
    first = logits[0][:5]
    ctx.check("block 0 attention logits grew 10x", max(logits[0]) > 10 * max(first))
    ctx.check("block 0 grew more than block 1", max(logits[0]) >= max(logits[1]))
    ctx.check("block 0 attention entropy collapsed", min(ents[0]) < 0.2 * ents[0][0])


# -- byte-level LM with patching -------------------------------------------------------------------


class BytePatchLM(nn.Module):
    """Bytes embedded and mean-pooled into patches of 4; a GRU runs over patches; a local decoder
    predicts the 4 bytes of the next patch from the global state and a byte-slot embedding."""

    def __init__(self, patch: int = 4, dim: int = 64) -> None:
        super().__init__()
        self.patch = patch
        self.byte_embed = nn.Embedding(256, dim)
        self.encoder = nn.Linear(dim, dim)
        self.global_rnn = nn.GRU(dim, dim, batch_first=True)
        self.slot = nn.Embedding(patch, dim)
        self.decoder = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        e = torch.tanh(self.encoder(self.byte_embed(x)))
        patches = e.reshape(b, t // self.patch, self.patch, -1).mean(2)
        g, _ = self.global_rnn(patches)
        h = g[:, :-1, None, :] + self.slot.weight[None, None]
        return self.decoder(h).reshape(b, -1, 256)


def _byte_batches(gen: torch.Generator, batch: int = 16, length: int = 64):
    data = text_bytes()
    while True:
        start = torch.randint(0, len(data) - length, (batch,), generator=gen)
        win = data[start[:, None] + torch.arange(length)]
        yield win, win[:, 4:]


@scenario(
    "h87_byte_level_patch_lm",
    "sg_stablespam",
    "loss_spike",
    where="decoder",
    diverges=None,
    heldout=True,
    note="resume at step 250 with strict=False: a renamed key leaves the decoder re-initialised",
    onset=250,
)
def h87_byte_patch_resume_bug(ctx: Context) -> None:
    """A byte-level patch LM; the job is preempted and resumed at step 250. The checkpoint was
    written before ``local_decoder`` was renamed ``decoder``, and ``load_state_dict(strict=False)``
    silently skips those keys: the decoder comes back freshly initialised, and the optimizer
    state is not restored either."""
    from steadygrad.optim import StableSPAM

    gen = seeded(8710)
    model = BytePatchLM()
    opt = StableSPAM(model.parameters(), lr=3e-3)

    def before(step: int) -> None:
        if step == 250:
            ckpt = {
                k.replace("decoder.", "local_decoder."): v.clone()
                for k, v in model.state_dict().items()
            }
            fresh = BytePatchLM().decoder.state_dict()
            model.decoder.load_state_dict(fresh)  # what __init__ left there
            missing = model.load_state_dict(ckpt, strict=False).missing_keys
            ctx.check("decoder silently not loaded", all(k.startswith("decoder.") for k in missing))
            opt.state.clear()

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, 256), y.reshape(-1))

    fit(ctx, model, opt, _byte_batches(gen), 330, loss_fn=loss_fn, before=before, classifier=False)
    pre = sum(ctx.losses[235:250]) / 15
    ctx.check("loss jumped 1.3x after the resume", max(ctx.losses[250:255]) > 1.3 * pre)
    ctx.check("and came back down", sum(ctx.losses[-10:]) / 10 < max(ctx.losses[250:255]))
    ctx.check("finite", all(_finite(ctx.losses)))


# -- top-k sparse autoencoder on activations -------------------------------------------------------


class TopKSAE(nn.Module):
    def __init__(self, d: int = 128, latents: int = 256, k: int = 32) -> None:
        super().__init__()
        self.k = k
        self.pre_bias = nn.Parameter(torch.zeros(d))
        self.encoder = nn.Linear(d, latents)
        self.decoder = nn.Linear(latents, d, bias=False)
        with torch.no_grad():
            self.decoder.weight.copy_(self.encoder.weight.T)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.encoder(x - self.pre_bias))
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codes(x)) + self.pre_bias


def _activations(gen: torch.Generator) -> torch.Tensor:
    """Hidden activations of a frozen random ReLU layer on the digits."""
    x, _ = digits()
    w = torch.randn(64, 128, generator=gen) / 8.0
    return F.relu(x @ w)


@scenario(
    "h87_topk_sparse_autoencoder",
    "sgd_mom",
    "loss_of_plasticity",
    where="encoder",
    diverges=None,
    heldout=True,
    note="encoder bias initialised at -threshold (a JumpReLU recipe) in a top-k SAE",
    onset=0,
)
def h87_sae_dead_latents(ctx: Context) -> None:
    """A top-k SAE (ReLU before the top-k) on frozen activations; its init was copied from a
    JumpReLU recipe that sets the encoder bias to -threshold. With these small activations most
    latents are never positive, so they are never picked and never get a gradient."""
    gen = seeded(8711)
    acts = _activations(gen)
    model = TopKSAE()
    nn.init.constant_(model.encoder.bias, -0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    dead: dict[int, float] = {}

    def fraction_dead() -> float:
        with torch.no_grad():
            return float((model.codes(acts) <= 0).all(0).float().mean())

    def before(step: int) -> None:
        if step in (0, 399):
            dead[step] = fraction_dead()

    def batches():
        while True:
            idx = torch.randint(0, len(acts), (128,), generator=gen)
            yield acts[idx], acts[idx]

    fit(ctx, model, opt, batches(), 400, loss_fn=F.mse_loss, before=before, classifier=False)
    end = fraction_dead()
    ctx.check("most latents dead from the start", dead[0] > 0.6)
    ctx.check("more dead at the end than at the start", end >= dead[0])
    ctx.check("and still dead at the end", end > 0.6 and dead[399] > 0.6)


# -- gated linear-attention RNN --------------------------------------------------------------------


class GatedLinearCell(nn.Module):
    """S_t = a * S_{t-1} + k_t v_t^T, y_t = q_t S_t, with fixed per-channel decays ``a`` (a
    buffer of timescales). The range (0.95, 1.03) was meant for sigmoid(a) but is used raw."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.register_buffer("decay", torch.empty(dim).uniform_(0.95, 1.03))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        state = x.new_zeros(b, d, d)
        outs = []
        for i in range(t):
            state = self.decay[None, :, None] * state + k[:, i, :, None] * v[:, i, None, :]
            outs.append((q[:, i, None, :] @ state).squeeze(1))
        return torch.stack(outs, 1)


class LinearRNN(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.cell = GatedLinearCell(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cell(self.embed(x))[:, -1])


def _memory_batches(gen: torch.Generator, batch: int = 32):
    """Sign of the sum of the first 4 inputs; a length curriculum from 8 to 160 steps."""
    step = 0
    while True:
        length = min(192, 8 + step // 2)
        x = torch.randn(batch, length, 1, generator=gen)
        step += 1
        yield x, (x[:, :4].sum((1, 2)) > 0).long()


@scenario(
    "h87_gated_linear_attention_rnn",
    "asgd",
    "exploding_gradients",
    where="cell",
    diverges="auto",
    heldout=True,
    note="raw decays up to 1.03 (sigmoid forgotten); a length curriculum exposes them",
    onset=0,
)
def h87_linear_rnn_unbounded_decay(ctx: Context) -> None:
    """A gated linear-attention recurrence whose fixed decays were meant to go through a
    sigmoid but are used raw, so some channels decay by more than 1. On the short sequences at
    the start of a length curriculum (8 -> 192) that costs nothing; as the sequences grow, the
    state and the gradient through time grow like decay**length."""
    gen = seeded(8712)
    model = LinearRNN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.005, t0=1e9)
    fit(ctx, model, opt, _memory_batches(gen), 300)
    gn = [g for g in ctx.grad_norms if math.isfinite(g)]
    early = sorted(gn[:30])[15]
    top = max(gn + [float("inf")] * (len(gn) < len(ctx.grad_norms)))
    ctx.check("gradient norm grew 100x", top > 100 * early)
    ctx.check("some decays above 1", float(model.cell.decay.max()) > 1.0)
    first_big = next(i for i, g in enumerate(ctx.grad_norms) if not g < 100 * early)
    ctx.check("it built up over 50+ steps", first_big > 50)


# -- character CNN classifier under fp16 autocast --------------------------------------------------


class ExpAttentionPool(nn.Module):
    """Attention pooling over characters with a hand-written softmax: exp(s) / sum(exp(s)),
    no max subtracted (fine in float32, overflows in fp16 once a score passes ~11)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.exp(self.score(h))
        return (w * h).sum(1) / w.sum(1)


class CharCNN(nn.Module):
    def __init__(self, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 16)
        self.conv1 = nn.Conv1d(16, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.pool = ExpAttentionPool(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        return self.head(self.pool(h.transpose(1, 2)))


@scenario(
    "h87_char_cnn_source_classifier",
    "adadelta",
    "amp_overflow",
    where="pool",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; a hand-written softmax in the pooling overflows",
    onset=0,
)
def h87_char_cnn_fp16_exp_pool(ctx: Context) -> None:
    """A tokenizer-free character CNN that tells which of three stdlib files a 128-byte window
    came from, trained under fp16 autocast with a GradScaler. Its attention pooling computes
    exp(score) without subtracting the max; as the pooling learns to focus, the scores grow
    past fp16's exp range, the loss turns inf/NaN and the scaler keeps skipping steps."""
    import sysconfig
    from pathlib import Path

    gen = seeded(8713)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [torch.tensor(list((root / n).read_bytes())) for n in ("argparse.py", "typing.py")]
    files.append(torch.tensor(list((root / "inspect.py").read_bytes())))
    model = CharCNN()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen: dict[str, bool] = {}
    flags: list[tuple[bool, bool]] = []

    def hook(mod: nn.Module, inp, out) -> None:
        seen["in"] = bool(torch.isfinite(inp[0]).all())
        seen["out"] = bool(torch.isfinite(out).all())

    model.pool.register_forward_hook(hook)

    def batches():
        while True:
            y = torch.randint(0, 3, (16,), generator=gen)
            xs = []
            for c in y.tolist():
                s = int(torch.randint(0, len(files[c]) - 128, (1,), generator=gen))
                xs.append(files[c][s : s + 128])
            yield torch.stack(xs), y

    def before(step: int) -> None:
        if seen:
            flags.append((seen["in"], seen["out"]))

    fit(ctx, model, opt, batches(), 300, before=before, scaler=scaler, amp=True)
    finite = _finite(ctx.losses)
    first = finite.index(False) if False in finite else None
    ctx.check("loss went non-finite", first is not None)
    ctx.check("learned first", first is not None and first > 50 and ctx.losses[first - 1] < 1.0)
    ctx.check("pool input finite, pool output not", (True, False) in flags)
    ctx.check("scale kept halving", ctx.scales[-1] < 1024.0 / 1000)


# -- healthy controls ------------------------------------------------------------------------------


class LowRankAdapter(nn.Module):
    """y = base(x) + (x A^T) B^T * alpha / r, with the base layer frozen and B starting at 0."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


@scenario("h87_lowrank_adapter_finetune", "sg_adabelief", "healthy", heldout=True)
def h87_adapter_finetune_healthy(ctx: Context) -> None:
    """A digits MLP pretrained on classes 0-4 (before attach), then frozen and fine-tuned on
    all ten classes through rank-4 adapters and a new head."""
    from steadygrad.optim import AdaBelief

    gen = seeded(8714)
    x, y = digits()
    base = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    head0 = nn.Linear(64, 5)
    pre = torch.optim.Adam(list(base.parameters()) + list(head0.parameters()), lr=3e-3)
    keep = y < 5
    for _ in range(150):
        idx = torch.randint(0, int(keep.sum()), (64,), generator=gen)
        loss = F.cross_entropy(head0(base(x[keep][idx])), y[keep][idx])
        pre.zero_grad()
        loss.backward()
        pre.step()
    model = nn.Sequential(
        LowRankAdapter(base[0]), nn.ReLU(), LowRankAdapter(base[2]), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = AdaBelief([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    fit(ctx, model, opt, digit_batches(gen), 250)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])


class SentenceEncoder(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(self.embed(x).transpose(1, 2))).mean(-1)
        return F.normalize(self.proj(h), dim=-1)


@scenario("h87_inbatch_contrastive_sentence_encoder", "adagrad", "healthy", heldout=True)
def h87_contrastive_encoder_healthy(ctx: Context) -> None:
    """Two overlapping crops of the same 48-byte window are positives, the other rows of the
    batch negatives (InfoNCE, temperature 0.1)."""
    gen = seeded(8715)
    data = text_bytes()
    model = SentenceEncoder()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    for _ in range(250):
        start = torch.randint(0, len(data) - 64, (64,), generator=gen)
        shift = torch.randint(0, 16, (64,), generator=gen)
        a = data[start[:, None] + torch.arange(40)]
        b = data[(start + shift)[:, None] + torch.arange(40)]
        target = torch.arange(64)
        ctx.targets(target)
        logits = model(a) @ model(b).T / 0.1
        loss = F.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])
    ctx.check("finite", all(_finite(ctx.losses)))


class SpanDenoiser(nn.Module):
    """A tiny T5-style encoder-decoder: task prefix token, sentinels for dropped spans."""

    def __init__(self, vocab: int = 160, dim: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(64, dim)
        self.transformer = nn.Transformer(
            dim, 2, 1, 1, 96, dropout=0.0, batch_first=True, norm_first=True
        )
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        s = self.embed(src) + self.pos(torch.arange(src.shape[1]))
        t = self.embed(tgt_in) + self.pos(torch.arange(tgt_in.shape[1]))
        mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        return self.lm_head(self.transformer(s, t, tgt_mask=mask, tgt_is_causal=True))


def _span_batch(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Task 130: span corruption (two 3-token spans -> sentinels 140, 141); task 131: copy."""
    data = text_bytes() % 128
    start = torch.randint(0, len(data) - length, (batch,), generator=gen)
    win = data[start[:, None] + torch.arange(length)]
    srcs, tgts = [], []
    for row in win:
        if float(torch.rand((), generator=gen)) < 0.5:
            a = int(torch.randint(1, 8, (), generator=gen))
            b = int(torch.randint(12, 19, (), generator=gen))
            src = torch.cat([row[:a], torch.tensor([140]), row[a + 3 : b], torch.tensor([141])])
            src = torch.cat([torch.tensor([130]), src, row[b + 3 :]])
            tgt = torch.cat([torch.tensor([140]), row[a : a + 3], torch.tensor([141])])
            tgt = torch.cat([tgt, row[b : b + 3], torch.tensor([150])])
        else:
            src = torch.cat([torch.tensor([131]), row[:9]])
            tgt = torch.cat([row[:9], torch.tensor([150])])
        srcs.append(src)
        tgts.append(tgt)
    pad = 151
    src = nn.utils.rnn.pad_sequence(srcs, batch_first=True, padding_value=pad)
    tgt = nn.utils.rnn.pad_sequence(tgts, batch_first=True, padding_value=-100)
    tgt_in = torch.cat([torch.full((batch, 1), 152), tgt[:, :-1].clamp_min(0)], 1)
    return src, tgt_in, tgt


@scenario("h87_t5_span_corruption_denoiser", "sgd_mom", "healthy", heldout=True)
def h87_span_denoiser_healthy(ctx: Context) -> None:
    gen = seeded(8716)
    model = SpanDenoiser()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.attach(model, opt)
    for _ in range(300):
        src, tgt_in, tgt = _span_batch(gen)
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 1.5)
    ctx.check("finite", all(_finite(ctx.losses)))
