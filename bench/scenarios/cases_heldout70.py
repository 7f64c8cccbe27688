"""Held-out scenarios, set 70 (``h70_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face DeepSeek-V3.2 causal LM (MLA + MoE + sparse-attention indexer), CLIP text
tower with a mean-pool head, SigLIP text tower with a linear head (a fault, and a control under
fp16 autocast with a GradScaler), UltraBERT sequence classifier (a fault and a control) and BLIP
text encoder behind a hand-written masked mean pool, all from configs; focal loss for class
imbalance on a ReLU RNN reading digits four pixels a step (a fault and a control), InfoNCE with
a learnable temperature on digit views (dot-product similarity under fp16 autocast with a
GradScaler; a control with L2-normalised embeddings), multi-task learning with uncertainty
weighting (diabetes), label smoothing with a weight EMA (digits), sampled softmax over a large
generated item vocabulary, pseudo-labelling (digits), center loss (digits).

Optimizers: SGD, momentum SGD, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop,
ASGD, and steadygrad.optim's AdaBelief, Lion, AdEMAMix and SPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digits,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces -------------------------------------------------------------------------------


def _finite(values) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    step_fn,
    *,
    clip: float | None = None,
    before=None,
    after=None,
) -> None:
    """A plain loop for runs whose loss is not ``loss_fn(model(x), y)``: ``step_fn(step)``
    returns the loss to backpropagate, or (that, the task loss to log), and calls
    ``ctx.targets`` where it has a classifier."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        loss = step_fn(step)
        total, loss = loss if isinstance(loss, tuple) else (loss, loss)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)


def _digit_stream(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int):
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class _MeanPoolHead(nn.Module):
    """A text tower, a mean over its positions and a linear classifier."""

    def __init__(self, text: nn.Module, dim: int, classes: int = 2) -> None:
        super().__init__()
        self.text = text
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.text(input_ids=ids).last_hidden_state.mean(1))


# -- Hugging Face DeepSeek-V3.2: a hand-written head decay with the wrong sign ---------------------


def _deepseek_v32(vocab: int = 128):
    from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

    config = DeepseekV32Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        max_position_embeddings=64,
        attention_dropout=0.0,
    )
    return DeepseekV32ForCausalLM(config)


@scenario(
    "h70_hf_deepseek_v32_lm",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="lm_head grows 5 % a step from a sign typo in a hand-written decay",
)
def h70_deepseek_v32_head_decay_sign(ctx: Context) -> None:
    """The LM head is kept out of AdamW's weight-decay group and shrunk by hand once a step,
    ``w.mul_(1 - 0.05)``, typed ``w.mul_(1 + 0.05)``. The head's weights grow geometrically faster
    than AdamW's fixed-size steps can pull them back; the output logits (and log Z) run away, the
    softmax over-commits and the loss climbs."""
    gen = seeded(7001)
    model = _deepseek_v32()
    head = [model.lm_head.weight]
    rest = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": head, "weight_decay": 0.0}], lr=2e-3
    )
    probe, _ = next(text_batches(torch.Generator().manual_seed(7), 32, 32))

    def logit_std() -> float:
        with torch.no_grad():
            return float(model(probe).logits.std())

    start = logit_std()

    def decay(step: int) -> None:
        with torch.no_grad():
            model.lm_head.weight.mul_(1 + 0.05)  # meant: 1 - wd

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 12, 32),
        150,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        classifier=False,
        before=decay,
    )
    end = logit_std()
    ctx.check("output logits grew 10x", end > 10 * start)
    best = min(ctx.losses)
    ctx.check("loss climbed to 2x its best", ctx.losses[-1] > 2 * best)


# -- Hugging Face CLIP text tower: the attention scale multiplied, not divided ---------------------


def _clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def _attention_stats(model: nn.Module, attns: list[nn.Module], ids: torch.Tensor):
    """Max |q.k * scale| and the mean of the row-max attention probability (causal)."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for i, a in enumerate(attns):
        seen[i] = {}
        hooks.append(a.q_proj.register_forward_hook(lambda m, i_, o, d=seen[i]: d.update(q=o)))
        hooks.append(a.k_proj.register_forward_hook(lambda m, i_, o, d=seen[i]: d.update(k=o)))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    peak, top = 0.0, []
    for i, a in enumerate(attns):
        q, k = seen[i]["q"], seen[i]["k"]
        b, t, _ = q.shape
        q = q.reshape(b, t, a.num_heads, a.head_dim).transpose(1, 2)
        k = k.reshape(b, t, a.num_heads, a.head_dim).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) * a.scale
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        peak = max(peak, float(logits.masked_fill(~mask, 0).abs().max()))
        p = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
        top.append(float(p[..., t // 2 :, :].amax(-1).mean()))
    return peak, sum(top) / len(top)


@scenario(
    "h70_hf_clip_text_cls",
    "adam",
    "attention_logit_growth",
    where=("text.encoder.layers.0.self_attn", "text.encoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="scale = head_dim ** 0.5 (ported as a multiply) + Adam at 3e-3",
)
def h70_clip_text_attn_scale_typo(ctx: Context) -> None:
    """A port of the attention sets ``scale = head_dim ** 0.5`` instead of ``head_dim ** -0.5``
    (16x too large at head_dim 16), and there is no QK-norm. Adam at a brisk rate grows the
    query/key projections and the logits with them; the causal attention saturates to one-hot
    rows and stops mixing tokens, so the classifier learns the counting task poorly."""
    gen = seeded(7002)
    text = _clip_text()
    attns = [layer.self_attn for layer in text.encoder.layers]
    for a in attns:
        a.scale = a.head_dim**0.5  # meant: a.head_dim ** -0.5
    model = _MeanPoolHead(text, 32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    probe, _ = next(bert_batches(torch.Generator().manual_seed(8), 64))
    peak0, top0 = _attention_stats(model, attns, probe)
    fit(ctx, model, opt, bert_batches(gen, 32), 300)
    peak1, top1 = _attention_stats(model, attns, probe)
    ctx.check("attention logits grew 5x", peak1 > 5 * peak0)
    ctx.check("attention rows saturated (mean max prob > 0.9)", top1 > 0.9)


# -- Hugging Face SigLIP text tower: a warm-up with no cap -----------------------------------------


def _siglip_text():
    from transformers import SiglipTextConfig, SiglipTextModel

    config = SiglipTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        projection_size=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return SiglipTextModel(config)


class _PooledHead(nn.Module):
    """A text tower's pooled output and a linear classifier."""

    def __init__(self, text: nn.Module, dim: int, classes: int = 2) -> None:
        super().__init__()
        self.text = text
        self.classifier = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.text(input_ids=ids).pooler_output)


@scenario(
    "h70_hf_siglip_text_cls",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up without min(1, .): the LR keeps rising past 2/curvature",
)
def h70_siglip_text_warmup_uncapped(ctx: Context) -> None:
    """The warm-up is written ``lr = base * (step + 1) / warmup`` without ``min(1, .)``: after the
    warm-up the rate keeps climbing linearly (10x the peak by step 300), crosses the stability
    limit of momentum SGD and the loss blows up."""
    gen = seeded(7003)
    model = _PooledHead(_siglip_text(), 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    base, warmup = 0.02, 30
    lrs: list[float] = []

    def schedule(step: int) -> None:
        lr = base * (step + 1) / warmup  # meant: base * min(1.0, (step + 1) / warmup)
        opt.param_groups[0]["lr"] = lr
        lrs.append(lr)

    fit(ctx, model, opt, bert_batches(gen, 32), 320, before=schedule)
    losses = ctx.losses
    ctx.check("trained normally through step 200", sum(losses[150:200]) / 50 < 0.6 * losses[0])
    broke = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    ctx.check("the loss went non-finite after 200", bool(broke) and broke[0] > 200)
    ctx.check("at an LR 5x the intended peak", bool(broke) and lrs[broke[0]] > 5 * base)


@scenario("h70_hf_siglip_text_cls", "adamw", "healthy", heldout=True, note="fp16 autocast")
def h70_siglip_text_amp_control(ctx: Context) -> None:
    """The same tower with a capped warm-up and AdamW, under fp16 autocast with a GradScaler."""
    gen = seeded(7013)
    model = _PooledHead(_siglip_text(), 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 30)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(ctx, model, opt, bert_batches(gen, 32), 200, before=schedule, amp=True, scaler=scaler)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell by a third", last < 0.67 * first)
    ctx.check("all losses finite", all(_finite(ctx.losses)))


# -- Hugging Face UltraBERT: an embedding LR multiplier typed 1e2 for 1e-2 ------------------------


def _ultrabert():
    from transformers import UltrabertConfig, UltrabertForSequenceClassification

    config = UltrabertConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=2,
        classifier_pooling="mean",
        sliding_window=8,
    )
    return UltrabertForSequenceClassification(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _relative_updates(model: nn.Module, names: dict[str, str]):
    """Per step ||w_t - w_{t-1}|| / ||w_{t-1}|| for a few named parameters (call before each
    step)."""
    params = dict(model.named_parameters())
    prev: dict[str, torch.Tensor] = {}
    ratios: dict[str, list[float]] = {k: [] for k in names}

    def record(step: int) -> None:
        for key, name in names.items():
            w = params[name].detach()
            if key in prev:
                ratios[key].append(float((w - prev[key]).norm() / prev[key].norm()))
            prev[key] = w.clone()

    return record, ratios


@scenario(
    "h70_hf_ultrabert_cls",
    "radam",
    "update_ratio_out_of_range",
    where="model.embed_tokens",
    diverges=None,
    heldout=True,
    note="embedding LR multiplier 1e2 (meant 1e-2)",
)
def h70_ultrabert_embed_lr_typo(ctx: Context) -> None:
    """The config gives the token embeddings their own LR multiplier, meant ``1e-2`` (slow
    embeddings) but typed ``1e2``: the embedding table moves 100x faster than intended, every
    step rewrites a large share of its norm, and the classifier above it chases a moving input."""
    gen = seeded(7004)
    model = _ultrabert()
    embed = list(model.model.embed_tokens.parameters())
    ids = {id(p) for p in embed}
    rest = [p for p in model.parameters() if id(p) not in ids]
    base = 1e-3
    opt = torch.optim.RAdam([{"params": rest}, {"params": embed, "lr": base * 1e2}], lr=base)
    record, ratios = _relative_updates(
        model,
        {
            "embed": "model.embed_tokens.weight",
            "q": "model.layers.0.self_attn.q_proj.weight",
            "cls": "classifier.weight",
        },
    )
    fit(ctx, model, opt, bert_batches(gen, 32), 200, before=record, forward=_logits)
    tail = slice(20, None)

    def med(v):
        return sorted(v[tail])[len(v[tail]) // 2]

    e, q, c = med(ratios["embed"]), med(ratios["q"]), med(ratios["cls"])
    ctx.check("embedding update ratio 5x the other layers'", e > 5 * max(q, c))
    ctx.check("embedding moves > 2 % of its norm a step", e > 0.02)


@scenario("h70_hf_ultrabert_cls", "sg_lion", "healthy", heldout=True)
def h70_ultrabert_control(ctx: Context) -> None:
    """The same classifier with one learning rate for all, under steadygrad's Lion."""
    gen = seeded(7014)
    model = _ultrabert()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, bert_batches(gen, 32), 200, forward=_logits)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell by a third", last < 0.67 * first)


# -- Hugging Face BLIP text encoder: an empty sequence in a masked mean pool -----------------------


def _blip_text():
    from transformers import BlipTextConfig, BlipTextModel

    config = BlipTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        encoder_hidden_size=32,
        is_decoder=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
    )
    return BlipTextModel(config, add_pooling_layer=False)


class _MaskedMeanPool(nn.Module):
    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)  # no clamp: an all-padding row is 0 / 0


class _BlipCls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text = _blip_text()
        self.pool = _MaskedMeanPool()
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).long()
        h = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.head(self.pool(h, mask))


def _padded_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Variable-length sequences padded with 0: is token 3 more frequent than token 4?"""
    for x, _ in bert_batches(gen, batch, length):
        x = torch.where(x == 1, 3, torch.where(x == 2, 4, x))
        lengths = torch.randint(6, length + 1, (batch,), generator=gen)
        x = x.masked_fill(torch.arange(length)[None] >= lengths[:, None], 0)
        y = ((x == 3).sum(1) > (x == 4).sum(1)).long()
        yield x, y


@scenario(
    "h70_hf_blip_text_cls",
    "nadam",
    "nonfinite",
    where="pool",
    diverges=150,
    onset=150,
    heldout=True,
    note="an empty (all-padding) sequence at step 150",
)
def h70_blip_text_empty_sequence(ctx: Context) -> None:
    """At step 150 one example is an empty string (a filtered-out caption kept as a row): its
    row is all padding, and the hand-written masked mean pool divides 0 by 0. The NaN is made in
    the pool (the encoder's additive mask keeps its output finite), reaches the loss, and NAdam
    writes it into every weight."""
    gen = seeded(7005)
    model = _BlipCls()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen: dict[str, bool] = {}

    def watch(name):
        def hook(m, i, o):
            if len(ctx.losses) == 150:
                seen[name] = bool(torch.isfinite(o).all())

        return hook

    model.text.register_forward_hook(lambda m, i, o: watch("text")(m, i, o.last_hidden_state))
    model.pool.register_forward_hook(watch("pool"))

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[7] = 0
        return x, y

    fit(ctx, model, opt, _padded_batches(gen), 190, alter=alter)
    fin = _finite(ctx.losses)
    ctx.check("loss finite until 150 and not at 150", all(fin[:150]) and not fin[150])
    ctx.check(
        "encoder output finite at 150, pool output not", seen == {"text": True, "pool": False}
    )
    ctx.check("loss fell before 150", sum(ctx.losses[130:150]) < 0.8 * sum(ctx.losses[:20]))


# -- focal loss for class imbalance, on a pixel-by-pixel ReLU RNN ---------------------------------


def _imbalanced_digits(gen: torch.Generator):
    """Digits with classes 5..9 cut to a fifth: a 5:1 class imbalance."""
    x, y = digits()
    keep = (y < 5) | (torch.rand(len(y), generator=gen) < 0.2)
    return x[keep], y[keep]


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


class _PixelRNN(nn.Module):
    """Reads a digit four pixels a step (16 steps) with a ReLU RNN (orthogonal W_hh)."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, nonlinearity="relu", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0)
        nn.init.zeros_(self.rnn.bias_hh_l0)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, 16, 4))
        return self.head(out[:, -1])


@scenario(
    "h70_focal_imbalance_rnn",
    "sgd",
    "exploding_gradients",
    where="rnn",
    diverges="auto",
    heldout=True,
    note="orthogonality penalty on W_hh subtracted, not added",
)
def h70_focal_rnn_orth_penalty_sign(ctx: Context) -> None:
    """A soft-orthogonality regulariser ``lam * ||W_hh^T W_hh - I||^2`` meant to keep the
    recurrent matrix norm-preserving is subtracted from the focal loss instead of added. The
    orthogonal init is an unstable point of the flipped penalty: W_hh's singular values creep
    above 1, then run away; the gradient through the 16 recurrent steps grows with them, step
    after step, with no clipping, until the run breaks. The head's gradient stays small."""
    gen = seeded(7006)
    x, y = _imbalanced_digits(gen)
    model = _PixelRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    w_hh = model.rnn.weight_hh_l0
    task_hh: list[float] = []
    head: list[float] = []
    radius: list[float] = []
    batches = _digit_stream(x, y, gen, 64)

    def step_fn(step: int):
        xb, yb = next(batches)
        ctx.targets(yb)
        loss = focal_loss(model(xb), yb)
        g = torch.autograd.grad(loss, w_hh, retain_graph=True)[0]
        task_hh.append(float(g.norm()))  # the focal loss's own gradient on W_hh
        eye = torch.eye(w_hh.shape[0])
        penalty = ((w_hh.T @ w_hh - eye) ** 2).sum()
        return loss - 0.1 * penalty, loss  # meant: loss + 0.1 * penalty

    def after(step: int) -> None:
        if model.head.weight.grad is not None:
            head.append(float(model.head.weight.grad.norm()))
        w = w_hh.detach()
        radius.append(float(torch.linalg.matrix_norm(w, 2)) if torch.isfinite(w).all() else -1)

    _loop(ctx, model, opt, 200, step_fn, after=after)
    fin = _finite(ctx.losses)
    ctx.check("the run broke (non-finite loss)", not all(fin))
    last = fin.index(False) if not all(fin) else len(fin)
    t = [v for v in task_hh[:last] if math.isfinite(v)]
    ctx.check("the task gradient on W_hh grew 30x", max(t[-5:]) > 30 * max(t[:20]))
    ctx.check("W_hh's spectral norm passed 2", max(radius[:last]) > 2)
    h = [v for v in head[:last] if math.isfinite(v)]
    grew_hh, grew_head = max(t[-5:]) / max(t[:20]), max(h[-5:]) / max(h[:20])
    ctx.check("W_hh's gradient grew more than the head's", grew_hh > 2 * grew_head)


@scenario("h70_focal_imbalance_rnn", "sg_ademamix", "healthy", heldout=True)
def h70_focal_rnn_control(ctx: Context) -> None:
    """The same focal-loss RNN with no penalty, under AdEMAMix with gradient clipping at 1."""
    gen = seeded(7016)
    x, y = _imbalanced_digits(gen)
    model = _PixelRNN()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    batches = _digit_stream(x, y, gen, 64)

    def step_fn(step: int) -> torch.Tensor:
        xb, yb = next(batches)
        ctx.targets(yb)
        return focal_loss(model(xb), yb)

    _loop(ctx, model, opt, 250, step_fn, clip=1.0)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell by half", last < 0.5 * first)


# -- InfoNCE with a learnable temperature, fp16 autocast: the L2-normalisation dropped -------------


def _two_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy, randomly masked views of the same digits."""
    views = []
    for _ in range(2):
        keep = (torch.rand_like(x) > 0.15).float()
        views.append(x * keep + 0.1 * torch.randn_like(x))
    return views[0], views[1]


class _Similarity(nn.Module):
    """Temperature-scaled similarity of two batches of embeddings (learnable temperature)."""

    def __init__(self, normalise: bool) -> None:
        super().__init__()
        self.normalise = normalise
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        if self.normalise:
            return (scale * F.normalize(z1, dim=-1)) @ F.normalize(z2, dim=-1).T
        return (scale * z1) @ z2.T


class _InfoNCE(nn.Module):
    def __init__(self, normalise: bool) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        self.sim = _Similarity(normalise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = _two_views(x)
        return self.sim(self.encoder(a), self.encoder(b))


def _contrastive_batches(gen: torch.Generator, batch: int = 128):
    x, _ = digits()
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            yield x[order[i : i + batch]], torch.arange(batch)


@scenario(
    "h70_infonce_learned_temperature",
    "sg_adabelief",
    "amp_overflow",
    where="sim",
    diverges=100,
    onset=100,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 100 a shard of 8-bit (0..255) images",
)
def h70_infonce_raw_shard_fp16(ctx: Context) -> None:
    """The similarity is a raw dot product of the embeddings times the learnt scale (no
    L2-normalisation). From step 100 the loader reads a second shard stored as 8-bit
    intensities (0..255) and the ``/ 255`` was never applied to it. Under fp16 autocast the
    encoder's outputs grow about 255x (still finite) but the similarity matmul multiplies two of
    them and the temperature scale: its fp16 output overflows 65504. Every later batch comes from that shard,
    so each loss is non-finite and the GradScaler only skips steps and shrinks its scale."""
    gen = seeded(7007)
    model = _InfoNCE(normalise=False)
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen: dict[int, tuple[bool, bool, float]] = {}

    def hook(m, inputs, out):  # keyed by step: the step's own forward is the last at that key
        o = out.detach().float()
        ins = all(bool(torch.isfinite(t).all()) for t in inputs)
        peak = float(inputs[0].detach().abs().max())
        seen[len(ctx.losses)] = (ins, bool(torch.isfinite(o).all()), peak)

    model.sim.register_forward_hook(hook)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 255.0 if step >= 100 else x), y

    fit(ctx, model, opt, _contrastive_batches(gen, 64), 160, amp=True, scaler=scaler, alter=alter)
    fin = _finite(ctx.losses)
    ctx.check(
        "loss finite until 100, non-finite from 100 on", all(fin[:100]) and not any(fin[100:])
    )
    ctx.check("loss fell before 100", sum(ctx.losses[80:100]) < 0.8 * sum(ctx.losses[:20]))
    ins, outs, peak = seen[100]
    ctx.check("at 100 sim's inputs are finite, its fp16 output is not", ins and not outs)
    ctx.check("the encoder's outputs stayed under 65504", peak < 65504)
    ctx.check("the scaler's scale collapsed", ctx.scales[-1] < 1e-3 * ctx.scales[99])


@scenario("h70_infonce_learned_temperature", "sg_spam", "healthy", heldout=True)
def h70_infonce_control(ctx: Context) -> None:
    """The same contrastive learner with L2-normalised embeddings (fp32), under SPAM."""
    gen = seeded(7017)
    model = _InfoNCE(normalise=True)
    opt = sgo.SPAM(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _contrastive_batches(gen, 64), 200)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell by a third", last < 0.67 * first)


# -- multi-task learning with uncertainty weighting: one target in raw units poisons Adamax -------


class _MultiTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.reg = nn.Linear(64, 1)
        self.cls = nn.Linear(64, 2)
        self.log_vars = nn.Parameter(torch.zeros(2))  # Kendall et al. uncertainty weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.reg(h).squeeze(-1), self.cls(h)


def _diabetes():
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    t = torch.tensor(d.target, dtype=torch.float32)
    z = (t - t.mean()) / t.std()
    return x, z, (t > t.median()).long()


@scenario(
    "h70_multitask_uncertainty",
    "adamax",
    "adam_second_moment_poisoned",
    where=("trunk.0", "trunk.2", "reg", "log_vars"),
    diverges=None,
    onset=150,
    heldout=True,
    note="one regression target in raw units (x1e4) at step 150; Adamax's inf-norm holds it",
)
def h70_multitask_raw_target_adamax(ctx: Context) -> None:
    """At step 150 one record's regression target comes from a table that stores it in raw
    units, not standardised: one squared error 1e8 times the usual. The gradient it sends
    through the regression head, the trunk and the regression task's log-variance is giant for
    one step; Adamax's infinity-norm moment takes the max and then forgets it only at
    ``0.999`` a step, so those tensors' updates shrink by orders of magnitude for the rest of
    the run and the regression task stops improving. The classification head is not hit."""
    gen = seeded(7008)
    x, z, c = _diabetes()
    model = _MultiTask()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    params = dict(model.named_parameters())
    tracked = ("reg.weight", "trunk.0.weight")
    prev = {n: params[n].detach().clone() for n in tracked}
    deltas: dict[str, list[torch.Tensor]] = {n: [] for n in tracked}
    inf_before: dict[str, torch.Tensor] = {}
    hit: dict[str, torch.Tensor] = {}
    grads: dict[str, list[float]] = {n: [] for n in params}

    def step_fn(step: int):
        idx = torch.randint(0, len(z), (32,), generator=gen)
        xb, zb, cb = x[idx], z[idx].clone(), c[idx]
        if step == 150:
            zb[3] = 2.5e4  # a raw-unit target
        ctx.targets(cb)
        pred, logits = model(xb)
        s = model.log_vars
        mse, ce = F.mse_loss(pred, zb), F.cross_entropy(logits, cb)
        return torch.exp(-s[0]) * mse + s[0] + torch.exp(-s[1]) * ce + s[1]

    def after(step: int) -> None:
        for n, p in params.items():
            grads[n].append(float(p.grad.norm()))
        for n in tracked:
            w = params[n].detach()
            deltas[n].append((w - prev[n]).abs())
            prev[n] = w.clone()
            u = opt.state[params[n]]["exp_inf"]
            if step == 149:
                inf_before[n] = u.clone()
            if step == 150:
                hit[n] = u > 100 * inf_before[n]

    _loop(ctx, model, opt, 400, step_fn, after=after)

    def moved(n: str, lo: int, hi: int) -> float:
        return float(torch.stack(deltas[n][lo:hi])[:, hit[n]].mean())

    for n in tracked:
        ctx.check(
            f"Adamax's moment of {n} jumped 100x on a third of it", hit[n].float().mean() > 0.3
        )
        ctx.check(
            f"those entries of {n} moved 10x less over steps 200-400 than 100-150",
            moved(n, 200, 400) < 0.1 * moved(n, 100, 150),
        )
    spiked = {n for n, g in grads.items() if g[150] > 100 * max(g[:150])}
    ctx.check(
        "the giant gradient hit the trunk, the regression head and its log-variance",
        spiked >= {"trunk.0.weight", "trunk.2.weight", "reg.weight", "log_vars"},
    )
    ctx.check("the classification head was not hit", "cls.weight" not in spiked)


# -- label smoothing with a weight EMA: the EMA swapped in for a check and never swapped back -----


@scenario(
    "h70_label_smoothing_ema",
    "nesterov",
    "loss_spike",
    diverges=200,
    onset=200,
    heldout=True,
    note="EMA weights (mostly the init) left in the model after an eval at step 200",
)
def h70_label_smoothing_ema_left_in(ctx: Context) -> None:
    """A label-smoothed digit classifier keeps an EMA of its weights (decay 0.998, started from
    the init). At step 200 an evaluation helper copies the EMA weights into the model to score
    them and the matching "swap back" is missing: the live weights jump back to two-thirds of the
    way to the init. The loss spikes to near its starting value, with no bad data and no
    gradient anomaly behind it, and training climbs back down."""
    gen = seeded(7009)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ema = [p.detach().clone() for p in model.parameters()]

    def before(step: int) -> None:
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.998).add_(p, alpha=0.002)
            if step == 200:  # evaluate the EMA ... and never restore the live weights
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)

    x, y = digits()
    fit(
        ctx,
        model,
        opt,
        _digit_stream(x, y, gen, 64),
        300,
        loss_fn=lambda out, t: F.cross_entropy(out, t, label_smoothing=0.1),
        before=before,
    )
    L = ctx.losses
    pre = sum(L[190:200]) / 10
    ctx.check("loss spiked 2.5x at 200", L[200] > 2.5 * pre)
    ctx.check("recovered within 100 steps", sum(L[290:300]) / 10 < 1.3 * pre)
    ctx.check("finite throughout", all(_finite(L)))


# -- sampled softmax over a large item vocabulary: targets from a catalogue join that goes stale ---


class _NextItem(nn.Module):
    def __init__(self, items: int, dim: int = 32) -> None:
        super().__init__()
        self.item_in = nn.Embedding(items, dim)
        self.tower = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.item_out = nn.Embedding(items, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.tower(self.item_in(items))


@scenario(
    "h70_sampled_softmax_items",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    onset=150,
    heldout=True,
    note="a growing share of targets point at the wrong item from step 150",
)
def h70_sampled_softmax_stale_join(ctx: Context) -> None:
    """A next-item model over 2000 items trained with a sampled softmax (the positive and 127
    shared uniform negatives). From step 150 the session log is joined against a cached catalogue
    snapshot that is never refreshed: a share of the target ids growing by 0.4 % a step point at
    the wrong item. Nothing in the model misbehaves; the loss simply climbs, slowly, back towards
    log(128)."""
    gen = seeded(7010)
    items = 2000
    nxt = torch.randperm(items, generator=gen)
    model = _NextItem(items)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)

    def step_fn(step: int) -> torch.Tensor:
        src = torch.randint(0, items, (256,), generator=gen)
        tgt = nxt[src]
        share = min(1.0, max(0.0, (step - 150) * 0.004))
        wrong = torch.rand(256, generator=gen) < share
        tgt = torch.where(wrong, torch.randint(0, items, (256,), generator=gen), tgt)
        negs = torch.randint(0, items, (127,), generator=gen)
        q = model(src)
        pos = (q * model.item_out(tgt)).sum(-1, keepdim=True)
        neg = q @ model.item_out(negs).T
        logits = torch.cat([pos, neg], 1)
        return F.cross_entropy(logits, torch.zeros(256, dtype=torch.long))

    _loop(ctx, model, opt, 400, step_fn)
    L = ctx.losses
    best = min(L[:150])
    ctx.check("learnt the next items before 150 (loss < 1.5)", best < 1.5)
    ctx.check("loss climbed to 2.5x its best by the end", sum(L[-10:]) / 10 > 2.5 * best)
    gn = ctx.grad_norms
    ctx.check(
        "no gradient blow-up (final norms within 5x of step 150's)",
        max(gn[-20:]) < 5 * max(gn[140:160]),
    )


# -- pseudo-labelling: the sharpening temperature left in the model's forward ---------------------


class _TemperedClassifier(nn.Module):
    def __init__(self, tau: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) / self.tau


@scenario(
    "h70_pseudo_labelling",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    onset=60,
    heldout=True,
    note="logits divided by the sharpening temperature 0.05; hard pseudo-labels from step 60",
)
def h70_pseudo_label_sharpened_logits(ctx: Context) -> None:
    """Self-training on digits from 100 labelled images: from step 60 each batch adds 96
    unlabelled images with the model's own hard pseudo-labels. The sharpening temperature
    (0.05), meant for the pseudo-label targets only, sits in the model's forward, so the trained
    logits are 20x too large. Fitting its own labels drives the loss past zero: the float32
    softmax of most rows rounds to exactly one-hot."""
    gen = seeded(7011)
    x, y = digits()
    order = torch.randperm(len(y), generator=gen)
    lab = torch.cat([order[y[order] == k][:10] for k in range(10)])
    unl = order[~torch.isin(order, lab)]
    model = _TemperedClassifier(tau=0.05)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)

    def batches():
        while True:
            li = lab[torch.randint(0, len(lab), (32,), generator=gen)]
            ui = unl[torch.randint(0, len(unl), (96,), generator=gen)]
            yield torch.cat([x[li], x[ui]]), torch.cat([y[li], torch.full((96,), -1)])

    def alter(step: int, xb: torch.Tensor, yb: torch.Tensor):
        if step >= 60:
            with torch.no_grad():
                yb = torch.cat([yb[:32], model(xb[32:]).argmax(-1)])
        return xb, yb

    fit(
        ctx,
        model,
        opt,
        batches(),
        800,
        loss_fn=lambda out, t: F.cross_entropy(out, t, ignore_index=-1),
        alter=alter,
    )
    with torch.no_grad():
        logits = model(x[unl[:512]])
    frac = collapsed_fraction(logits, logits.argmax(-1))
    ctx.check("over half the unlabelled rows' softmax is exactly one-hot", frac > 0.5)
    ctx.check("it fits its own labels (loss < 0.05 at the end)", sum(ctx.losses[-20:]) / 20 < 0.05)


# -- center loss: the centre update writes to a copy, so the centres stay at zero -----------------


class _CenterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    "h70_center_loss",
    "asgd",
    "loss_of_plasticity",
    where=("embed", "act"),
    diverges="auto",
    onset=100,
    heldout=True,
    note="centres never move off zero; the centre loss (on at full weight from 100) kills the ReLUs",
)
def h70_center_loss_frozen_centres(ctx: Context) -> None:
    """Center loss (Wen et al.) on a digit classifier's ReLU features, switched on at full weight
    (no warm-up) at step 100.
    The running-mean update of the class centres is written ``c = centers[y]; c += alpha * ...``:
    the advanced index makes a copy, so the centres stay at their zero init. The "center" term is
    then just a pull of every feature towards 0, strong enough on its first steps to push most of
    the embedding's pre-activations negative for every input. A dead ReLU gets no gradient from
    either loss, so those units never come back; the classifier loses most of its input and the
    loss climbs back up."""
    gen = seeded(7012)
    x, y = digits()
    model = _CenterNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.3)
    centers = torch.zeros(10, 32)
    batches = _digit_stream(x, y, gen, 64)

    def step_fn(step: int):
        xb, yb = next(batches)
        ctx.targets(yb)
        f = model.features(xb)
        ce = F.cross_entropy(model.head(f), yb)
        c = centers[yb]  # a copy
        c += 0.5 * (f.detach() - c)  # meant: an in-place update of centers
        lam = 0.0 if step < 100 else 1.0
        center = 0.5 * ((f - centers[yb]) ** 2).sum(1).mean()
        return ce + lam * center, ce

    _loop(ctx, model, opt, 300, step_fn)
    with torch.no_grad():
        feats = model.features(x[:512])
    ctx.check("centres never moved", bool((centers == 0).all()))
    ctx.check("3/4 of the embedding's ReLU units dead", dead_fraction(feats) >= 0.75)
    L = ctx.losses
    ctx.check("the classification loss climbed 2x from its best", sum(L[-10:]) / 10 > 2 * min(L))
