"""Held-out scenarios, set 61 (``h61_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face MiMo-V2-Flash (causal LM, dense + MoE layers, sliding-window attention
with sinks; a control too), a BigBird encoder behind a hand-written masked mean pool,
LongCat-Flash (MLA attention, MoE with zero-compute experts), Youtu (MLA causal LM) and
Apertus-1.5 text (QK-norm causal LM) from configs; and training recipes built around less common
optimisation methods: sharpness-aware minimisation (SAM, two passes per step; a control too), Adafactor
on a small decoder, an L-BFGS fine-tune of a linear head on frozen features (a control too),
gradient accumulation with a per-micro-batch clip, Lookahead wrapping RAdam, stochastic weight
averaging (``AveragedModel`` + ``SWALR``) of a digit classifier, and an EMA of the weights kept
for evaluation of a Poisson count regressor under fp16 autocast with a GradScaler (a control
too).

Optimizers: AdamW, NAdam, Adam, RMSprop, steadygrad.optim's AdaBelief, Lion and SPAM, SGD with
momentum (the SAM base), Adafactor (``transformers.optimization``), L-BFGS, plain SGD, RAdam
(inside Lookahead), Nesterov SGD (under SWA), Adamax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    Decoder,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _params_flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


# == Hugging Face MiMo-V2-Flash: the softmax scale dropped =======================================


def _mimo():
    from transformers import MiMoV2FlashConfig, MiMoV2FlashForCausalLM

    config = MiMoV2FlashConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        moe_intermediate_size=32,
        num_experts_per_tok=2,
        n_routed_experts=4,
        head_dim=16,
        v_head_dim=16,
        sliding_window=16,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "eager"
    return MiMoV2FlashForCausalLM(config)


def _mimo_attention(model: nn.Module, x: torch.Tensor) -> list[tuple[float, float]]:
    """Per layer: the largest |q.k * scaling| over causal pairs, and the mean top probability."""
    from transformers.models.mimo_v2_flash.modeling_mimo_v2_flash import (
        apply_rotary_pos_emb,
        repeat_kv,
    )

    seen: dict[int, tuple] = {}

    def grab(i):
        def hook(module, args, kwargs):
            hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            seen[i] = (hs, kwargs["position_embeddings"])

        return hook

    layers = model.model.layers
    hooks = [
        layer.self_attn.register_forward_pre_hook(grab(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        model(input_ids=x)
        out = []
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            hs, (cos, sin) = seen[i]
            b, t, _ = hs.shape
            q = attn.q_proj(hs).view(b, t, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(hs).view(b, t, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = repeat_kv(k, attn.num_key_value_groups)
            s = (q @ k.transpose(2, 3)) * attn.scaling
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            p = s.masked_fill(~causal, float("-inf")).softmax(-1)
            out.append((float(s[..., causal].abs().max()), float(p[..., 4:, :].amax(-1).mean())))
    for h in hooks:
        h.remove()
    return out


@scenario(
    "h61_hf_mimo_v2_flash_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="softmax scale 1/sqrt(d) dropped in a port; AdamW at a high LR",
)
def h61_mimo_attention_scale_dropped(ctx: Context) -> None:
    """A port of the attention sets ``scaling = 1.0`` (the checkpoint converter was meant to fold
    1/sqrt(head_dim) into the query weights, but this model is trained from scratch): every
    attention logit is 4x too large from the start and, with AdamW at a high learning rate and
    no QK-norm, q.k keeps growing until the attention rows saturate to one key."""
    gen = seeded(6101)
    model = _mimo()
    for layer in model.model.layers:
        layer.self_attn.scaling = 1.0
    probe, _ = next(text_batches(torch.Generator().manual_seed(61), 8, 32, 128))
    before = _mimo_attention(model, probe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
    )
    after = _mimo_attention(model, probe)
    ctx.check(
        "a layer's max attention logit grew 10x",
        any(a[0] > 10 * b[0] for a, b in zip(after, before, strict=True)),
    )
    ctx.check(
        "attention rows saturated (mean top probability > 0.9)",
        max(a[1] for a in after) > 0.9 and max(b[1] for b in before) < 0.6,
    )


@scenario(
    "h61_hf_mimo_v2_flash_lm",
    "sg_lion",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: correct scale, Lion at a modest LR",
)
def h61_mimo_lion_control(ctx: Context) -> None:
    gen = seeded(6102)
    model = _mimo()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.0, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
    )
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell by a third", all(map(_finite, ctx.losses)) and last < 0.67 * first)


# == Hugging Face BigBird behind a masked mean pool: an empty document ============================


class MaskedMeanPool(nn.Module):
    """Mean of the token states over the non-padding positions (no guard on an empty row)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


class BigBirdMeanPoolClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BigBirdConfig, BigBirdModel

        config = BigBirdConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            attention_type="original_full",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=0,
        )
        self.encoder = BigBirdModel(config, add_pooling_layer=False)
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x != 0).long()
        h = self.encoder(input_ids=x, attention_mask=mask).last_hidden_state
        return self.head(self.pool(h, mask))


def _padded_docs(gen: torch.Generator):
    """bert_batches documents cut to random lengths and right-padded with id 0."""
    for x, y in bert_batches(gen, 32, 16):
        lengths = torch.randint(6, 17, (len(y),), generator=gen)
        yield torch.where(torch.arange(16)[None] < lengths[:, None], x, 0), y


@scenario(
    "h61_hf_big_bird_meanpool_cls",
    "nadam",
    "nonfinite",
    where="pool",
    diverges=170,
    heldout=True,
    onset=170,
    note="an all-padding document: 0/0 in the mean pool",
)
def h61_bigbird_empty_document_meanpool(ctx: Context) -> None:
    """The masked mean pool divides by the count of real tokens; at step 170 the cleaner hands
    over a document stripped to nothing (all padding), its count is 0 and the pool returns 0/0
    = NaN for that row. The encoder's output stays finite (its additive mask only flattens the
    attention), the NaN is born in ``pool``, the loss is NaN and NAdam writes NaN into every
    weight."""
    gen = seeded(6103)
    model = BigBirdMeanPoolClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen: dict[str, bool] = {}
    now = {"step": -1}

    def record(name: str):
        def hook(module, args, out):
            if now["step"] == 170:
                out = out.last_hidden_state if name == "encoder" else out
                seen[name] = bool(torch.isfinite(out).all())

        return hook

    model.encoder.register_forward_hook(record("encoder"))
    model.pool.register_forward_hook(record("pool"))

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        now["step"] = step
        if step == 170:  # a document whose text the cleaner stripped entirely
            x = x.clone()
            x[11] = 0
        return x, y

    fit(ctx, model, opt, _padded_docs(gen), 200, alter=alter)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite before 170, NaN at 170", all(finite[:170]) and not finite[170])
    ctx.check(
        "the loss fell before the bad document", sum(ctx.losses[150:170]) < 0.8 * 20 * ctx.losses[0]
    )
    ctx.check(
        "at 170 the encoder was finite and the pool was not",
        seen.get("encoder") is True and seen.get("pool") is False,
    )


# == Hugging Face LongCat-Flash: vocabulary resized after the optimizer was built ================


def _longcat(vocab: int):
    from transformers import LongcatFlashConfig, LongcatFlashForCausalLM

    config = LongcatFlashConfig(
        vocab_size=vocab,
        hidden_size=48,
        num_layers=1,
        num_attention_heads=4,
        ffn_hidden_size=96,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        head_dim=8,
        v_head_dim=8,
        moe_topk=2,
        n_routed_experts=4,
        zero_expert_num=2,
        expert_ffn_hidden_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return LongcatFlashForCausalLM(config)


@scenario(
    "h61_hf_longcat_flash_lm",
    "adam",
    "update_ratio_out_of_range",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="resize_token_embeddings after the optimizer was built: the new LM head never updates",
)
def h61_longcat_resized_vocab_orphaned(ctx: Context) -> None:
    """The script builds the optimizer, then adds byte tokens to the tokenizer and calls
    ``resize_token_embeddings``. The input embedding is resized in place (same Parameter, the
    optimizer still holds it), but the untied LM head is replaced by a new Parameter the
    optimizer has never seen: it receives gradients every step (and, since the optimizer's
    ``zero_grad`` does not reach it, they pile up) but never moves, an update/weight ratio of
    exactly 0, while the rest of the model trains around a random output layer."""
    gen = seeded(6104)
    model = _longcat(96)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.resize_token_embeddings(128, mean_resizing=False)
    emb0 = model.model.embed_tokens.weight.detach().clone()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    head0 = model.lm_head.weight.detach().clone()
    trunk = dict(model.named_parameters())["model.layers.0.self_attn.0.q_b_proj.weight"]
    trunk0 = trunk.detach().clone()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        200,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
    )
    ctx.check(
        "lm_head left out of the optimizer, unchanged though it gets gradients",
        id(model.lm_head.weight) not in in_opt
        and torch.equal(head0, model.lm_head.weight)
        and model.lm_head.weight.grad is not None
        and float(model.lm_head.weight.grad.norm()) > 0,
    )
    with torch.no_grad():
        moved = float((trunk - trunk0).norm()) > 0.1 * float(trunk0.norm())
        emb_moved = not torch.equal(emb0, model.model.embed_tokens.weight)
    ctx.check("the trunk and the input embedding trained", moved and emb_moved)


# == Hugging Face Youtu: resumed without the optimizer state =====================================


def _youtu():
    from transformers import YoutuConfig, YoutuForCausalLM

    config = YoutuConfig(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        v_head_dim=8,
        qk_nope_head_dim=8,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.02,
    )
    return YoutuForCausalLM(config)


@scenario(
    "h61_hf_youtu_lm",
    "rmsprop",
    "loss_spike",
    diverges=201,
    heldout=True,
    onset=200,
    note="resume at 200 restores the weights but not RMSprop's square averages",
)
def h61_youtu_resume_without_optimizer_state(ctx: Context) -> None:
    """At step 200 the job is pre-empted and resumed: the weights come back from the checkpoint
    but the optimizer state was never saved, so RMSprop (alpha 0.999) restarts with empty square
    averages. Its first updates are ~30x the usual size on every tensor at once; the loss of the
    next step jumps and then
    settles back over the next hundred steps as the averages refill. The gradients themselves
    do not spike, and the data are ordinary."""
    gen = seeded(6105)
    model = _youtu()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.999)

    def resume(step: int) -> None:
        if step == 200:
            opt.state.clear()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        320,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
        before=resume,
    )
    L, g = ctx.losses, ctx.grad_norms
    pre = sum(L[185:200]) / 15
    ctx.check(
        "loss spiked right after the resume (step 201)",
        L[201] > 1.4 * pre and L[201] > 1.2 * max(L[185:201]),
    )
    ctx.check("and recovered by the end", sum(L[-15:]) / 15 < 1.1 * pre)
    ctx.check("no gradient spike at the resume step", g[200] < 3 * max(g[185:200]))


# == Hugging Face Apertus-1.5 text: one corrupted batch ==========================================


def _apertus():
    from transformers import Apertus1p5TextConfig, Apertus1p5TextForCausalLM

    config = Apertus1p5TextConfig(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Apertus1p5TextForCausalLM(config)


@scenario(
    "h61_hf_apertus1p5_lm",
    "sg_adabelief",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch read from a compressed shard as if it were text",
)
def h61_apertus_compressed_shard_batch(ctx: Context) -> None:
    """At step 150 the loader reads one batch from a gzip-compressed shard without decompressing
    it: the bytes are near-uniform noise. The loss on that batch is far above the running loss;
    the next batches are ordinary text again and the run recovers."""
    gen = seeded(6106)
    model = _apertus()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            noise = torch.randint(
                0, 128, (x.shape[0], x.shape[1] + 1), generator=torch.Generator().manual_seed(150)
            )
            x, y = noise[:, :-1], noise[:, 1:]
        return x, y

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        240,
        loss_fn=lm_loss,
        classifier=False,
        forward=_lm_forward,
        alter=alter,
    )
    L = ctx.losses
    ctx.check("loss spiked at 150", L[150] > 1.8 * max(L[140:150]))
    ctx.check("recovered within 40 steps", sum(L[190:200]) / 10 < 1.1 * sum(L[140:150]) / 10)


# == sharpness-aware minimisation (SAM): the LR scaled for a batch the run does not use ==========


def _sam_run(ctx: Context, peak_lr: float, seed: int, steps: int) -> None:
    """SAM (Foret et al. 2021) on a digit MLP: ascend to w + rho g/|g|, take the gradient there,
    step from w with the base optimizer (SGD with momentum); a linear warm-up to ``peak_lr``."""
    gen = seeded(seed)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9)
    rho = 0.05
    batches = digit_batches(gen, 64)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe))
    params = list(model.parameters())
    for step in range(steps):
        opt.param_groups[0]["lr"] = peak_lr * min(1.0, (step + 1) / 100)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            eps = [rho * p.grad / (norm + 1e-12) for p in params]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.sub_(e)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) and step > 5:
            break


@scenario(
    "h61_sam_digits_mlp",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear LR scaling for a 32x larger global batch; blows up during warm-up",
)
def h61_sam_lr_scaled_for_wrong_batch(ctx: Context) -> None:
    """The config applies the linear scaling rule for a global batch of 2048 (eight hosts of
    256) but the job runs on one host with batch 64: the peak LR is 0.05 * 32 = 1.6. During the
    100-step warm-up the LR climbs past the stability limit 2/curvature (with momentum 0.9),
    and SAM's perturbation does not save it: the loss blows up while the LR is still rising."""
    _sam_run(ctx, peak_lr=1.6, seed=6107, steps=160)
    L = ctx.losses
    broke = next((i for i, v in enumerate(L) if not _finite(v) or v > 3 * L[0]), None)
    ctx.check("loss first fell", min(L[:30]) < 0.6 * L[0])
    ctx.check(
        "then blew up during the warm-up, at an LR over 0.3 (6x the control's)",
        broke is not None and 30 <= broke <= 100,
    )
    ctx.check("and stayed broken", min(L[-20:]) > 3 * L[0])


@scenario(
    "h61_sam_digits_mlp",
    "sgd_mom",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: the same SAM recipe at the intended peak LR 0.05",
)
def h61_sam_control(ctx: Context) -> None:
    _sam_run(ctx, peak_lr=0.05, seed=6108, steps=200)
    L = ctx.losses
    ctx.check(
        "loss fell to under a quarter", all(map(_finite, L)) and sum(L[-10:]) / 10 < 0.25 * L[0]
    )


# == Adafactor on a small decoder: the z-loss added with the wrong sign ==========================


@scenario(
    "h61_adafactor_decoder_lm",
    "adafactor",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss coefficient sign flipped: log Z pushed up without bound",
)
def h61_adafactor_zloss_sign_flipped(ctx: Context) -> None:
    """The auxiliary z-loss (meant to hold log Z of the output softmax near 0) is written as
    ``loss - 1e-2 * lse**2``: instead of pulling log Z down it rewards growing it. Cross-entropy
    is blind to a shift shared by all logits, so nothing resists: the head's logits drift
    upward together, log Z runs away, and once it is large the cross-entropy itself degrades."""
    from transformers.optimization import Adafactor

    gen = seeded(6109)
    model = Decoder(vocab=128, dim=48, heads=2, layers=2, context=32)
    opt = Adafactor(
        model.parameters(), lr=3e-3, relative_step=False, scale_parameter=False, warmup_init=False
    )
    lse: list[float] = []

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(zloss.logits.float(), dim=-1)
        lse.append(float(z.mean()))
        return loss - 1e-2 * (z**2).mean()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        zloss.logits = m(x)
        return zloss.logits

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=zloss,
    )
    ctx.check("mean log Z grew from ~5 to over 50", lse[0] < 6 and max(lse[-10:]) > 50)
    ctx.check(
        "cross-entropy climbed back above its best",
        sum(ctx.losses[-10:]) / 10 > 1.5 * min(ctx.losses),
    )


# == an L-BFGS fine-tune of a linear head on frozen features =====================================


class FrozenFeaturesHead(nn.Module):
    """A frozen random ReLU feature map (a stand-in for a pretrained trunk) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU())
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _lbfgs_head(
    ctx: Context, seed: int, l2: float, steps: int
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    seeded(seed)
    x, y = digits()
    x, y = x[:1200], y[:1200]
    model = FrozenFeaturesHead()
    opt = torch.optim.LBFGS(
        model.head.parameters(), lr=1.0, max_iter=10, history_size=20, line_search_fn="strong_wolfe"
    )
    ctx.attach(model, opt, probe=(lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x[:256], y[:256])))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if l2:
            loss = loss + l2 * model.head.weight.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        ctx.targets(y)
        opt.step(closure)
        with torch.no_grad():
            loss = F.cross_entropy(model(x), y)
        closure()
        ctx.grad_norms.append(grad_norm(model))
        ctx.step(loss)
    return model, x, y


@scenario(
    "h61_lbfgs_head_finetune",
    "lbfgs",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="unregularised full-batch L-BFGS on separable features: logits scale up until p == 1",
)
def h61_lbfgs_head_no_regulariser(ctx: Context) -> None:
    """The head is fine-tuned full-batch with L-BFGS and no weight decay (the L2 term was left in
    the SGD branch of the script). The frozen features make the training set linearly
    separable, so the cross-entropy keeps falling only by scaling the head's logits up:
    L-BFGS does that fast, and the float32 softmax of the training rows collapses to exactly
    one-hot (the target's probability is 1.0, its gradient 0)."""
    model, x, y = _lbfgs_head(ctx, 6110, l2=0.0, steps=40)
    with torch.no_grad():
        first = collapsed_fraction(FrozenFeaturesHead()(x), y)
        logits = model(x)
    ctx.check(
        "over 90% of the training rows collapsed to p == 1.0",
        collapsed_fraction(logits, y) > 0.9 and first == 0.0,
    )
    ctx.check("training loss under 1e-5", ctx.losses[-1] < 1e-5)


@scenario(
    "h61_lbfgs_head_finetune",
    "lbfgs",
    "healthy",
    diverges=None,
    heldout=True,
    note="control: the same L-BFGS fine-tune with its L2 term",
)
def h61_lbfgs_head_control(ctx: Context) -> None:
    model, x, y = _lbfgs_head(ctx, 6111, l2=1e-3, steps=40)
    with torch.no_grad():
        logits = model(x)
    ctx.check("loss fell to a fifth of chance", ctx.losses[-1] < 0.2 * math.log(10))
    ctx.check("the softmax did not collapse", collapsed_fraction(logits, y) < 0.1)


# == gradient accumulation with a per-micro-batch clip: a bias reloaded wrong =====================


def _accum_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


@scenario(
    "h61_grad_accum_microclip_mlp",
    "sgd",
    "loss_of_plasticity",
    where=("0", "1"),
    diverges="auto",
    heldout=True,
    onset=120,
    note="a resume reloads layer 0's bias from a wrongly folded export: every unit of ReLU 1 dies",
)
def h61_accum_resume_bias_folded_wrong(ctx: Context) -> None:
    """Four micro-batches per step, each clipped to norm 1 before it joins the accumulator. At
    step 120 the job resumes from an export in which the input normalisation was folded into
    the first layer's bias with the wrong sign (bias - W @ (mean / std) applied to already
    normalised inputs): every pre-activation of layer 0 is now far below zero, all 128 units
    of the ReLU after it are dead on every input, they pass no gradient, and the clip and
    accumulation cannot bring them back; the loss returns to chance and stays there."""
    gen = seeded(6113)
    model = _accum_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    batches = digit_batches(gen, 16)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe))
    params = list(model.parameters())
    xs, _ = digits()

    def dead() -> float:
        with torch.no_grad():
            return dead_fraction(model[1](model[0](xs)))

    dead_before = 0.0
    layer0_grad: list[float] = []
    for step in range(220):
        if step == 120:
            dead_before = dead()
            with torch.no_grad():
                model[0].bias.sub_(model[0].weight.sum(1).abs() * 8.0 + 4.0)
        acc = [torch.zeros_like(p) for p in params]
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            total += float(loss) / 4
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for a, p in zip(acc, params, strict=True):
                a.add_(p.grad, alpha=0.25)
                p.grad = None
        for a, p in zip(acc, params, strict=True):
            p.grad = a
        layer0_grad.append(float(model[0].weight.grad.abs().max()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    ctx.check("trained before the resume", sum(L[110:120]) / 10 < 0.4 * L[0])
    ctx.check("no unit of ReLU 1 alive after the resume", dead_before < 0.2 and dead() == 1.0)
    ctx.check("loss back at chance and stuck", min(L[130:]) > 2.0)
    ctx.check(
        "layer 0 gets no gradient after", max(layer0_grad[120:]) == 0.0 < min(layer0_grad[:120])
    )


# == Lookahead wrapping RAdam: one step's gradients left loss-scaled =============================


class Lookahead:
    """Lookahead (Zhang et al. 2019): every ``k`` inner steps, the slow weights move ``alpha`` of
    the way to the fast ones and the fast weights restart from there."""

    def __init__(self, inner: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        self.inner, self.k, self.alpha, self.count = inner, k, alpha, 0
        self.slow = [p.detach().clone() for g in inner.param_groups for p in g["params"]]

    def step(self) -> None:
        self.inner.step()
        self.sync()

    def sync(self) -> None:
        self.count += 1
        if self.count % self.k == 0:
            with torch.no_grad():
                fast = [p for g in self.inner.param_groups for p in g["params"]]
                for s, p in zip(self.slow, fast, strict=True):
                    s.add_(p - s, alpha=self.alpha)
                    p.copy_(s)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


@scenario(
    "h61_lookahead_radam_mlp",
    "radam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=150,
    note="a manual loss scale of 2**16 not undone for one step: RAdam's second moment poisoned",
)
def h61_lookahead_radam_unscale_skipped(ctx: Context) -> None:
    """The script keeps a manual static loss scale (2**16) from its fp16 days and divides the
    gradients by it before the step; the resume path at step 150 skips that division once. One
    step's gradients reach RAdam 65536x too large on every tensor: the second moment jumps by
    ~4e9 and, with beta2 = 0.999, stays inflated for thousands of steps, so once the first
    moment has forgotten the big gradient the updates of every weight it hit are damped ~1000x
    (only weights that happened to get no gradient that step keep learning)."""
    gen = seeded(6114)
    model = _accum_mlp()
    inner = torch.optim.RAdam(model.parameters(), lr=3e-3)
    opt = Lookahead(inner, k=5, alpha=0.5)
    scale = 2.0**16
    batches = digit_batches(gen, 64)
    probe = next(batches)
    ctx.attach(model, inner, probe=(lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe))
    v_before = v_after = 0.0
    hit = None
    pre_moves = post_moves = None
    for step in range(300):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        (loss * scale).backward()
        if step != 150:
            for p in model.parameters():
                p.grad.div_(scale)
        else:
            hit = torch.cat([p.grad.reshape(-1) != 0 for p in model.parameters()])
            v_before = float(sum(inner.state[p]["exp_avg_sq"].sum() for p in model.parameters()))
        ctx.grad_norms.append(grad_norm(model))
        w0 = _params_flat(model)
        inner.step()  # the fast step, measured alone
        move = (_params_flat(model) - w0).abs()
        if 100 <= step < 150:
            pre_moves = move if pre_moves is None else pre_moves + move
        if 220 <= step < 270:
            post_moves = move if post_moves is None else post_moves + move
        if step == 150:
            v_after = float(sum(inner.state[p]["exp_avg_sq"].sum() for p in model.parameters()))
        opt.sync()  # Lookahead.step() is inner.step() then sync()
        ctx.step(loss)
        opt.zero_grad()
    pre = float(pre_moves[hit].median())
    post = float(post_moves[hit].median())
    ctx.check("second moment jumped over 1e6x at step 150", v_after > 1e6 * v_before)
    ctx.check(
        "median update of the hit weights 70-120 steps later under a tenth of before",
        post < 0.1 * pre,
    )


# == stochastic weight averaging: labels corrupted a little more every step ======================


@scenario(
    "h61_swa_digits_mlp",
    "nesterov",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="an augmentation cache writes mixed-up labels back: label noise creeps up from step 100",
)
def h61_swa_label_cache_creep(ctx: Context) -> None:
    """An augmentation cache that was meant to be read-only writes each augmented sample back
    with the label of its mixing partner; from step 100 (when the cache is first reused) the
    share of wrong labels in the stream grows steadily, reaching ~90% by the end. Nothing in
    the model or the optimizer is at fault: the training loss (and the SWA average's) just
    climbs slowly and steadily."""
    from torch.optim.swa_utils import SWALR, AveragedModel

    gen = seeded(6115)
    model = _accum_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    swa = AveragedModel(model)
    swa_sched = SWALR(opt, swa_lr=0.02, anneal_epochs=20)
    noise = torch.Generator().manual_seed(6116)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(0.9, max(0.0, (step - 100) / 260))
        wrong = torch.rand(len(y), generator=noise) < share
        return x, torch.where(wrong, torch.randint(0, 10, y.shape, generator=noise), y)

    def before(step: int) -> None:
        if step >= 80:  # the SWA phase: average every step, SWALR schedule
            if step > 80:
                swa.update_parameters(model)
            swa_sched.step()

    fit(ctx, model, opt, digit_batches(gen, 64), 400, alter=alter, before=before)
    L = ctx.losses
    windows = [sum(L[i : i + 50]) / 50 for i in range(100, 400, 50)]
    ctx.check("loss low before the creep", sum(L[80:100]) / 20 < 0.4)
    ctx.check(
        "loss climbed window after window",
        all(b > a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check(
        "to over 4x its pre-creep level, all finite",
        windows[-1] > 4 * sum(L[80:100]) / 20 and all(map(_finite, L)),
    )
    ctx.check("no gradient blow-up", max(ctx.grad_norms) < 20 * max(ctx.grad_norms[:100]))


# == an EMA of the weights for evaluation: a Poisson regressor whose rate overflows fp16 ==========


class ExpRate(nn.Module):
    """The Poisson rate head: ``exp`` of a linear log-rate (``float32=True``: exp in float32)."""

    def __init__(self, width: int, float32: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 1)
        self.float32 = float32

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.proj(h).squeeze(-1)
        return z.float().exp() if self.float32 else z.exp()


class CountRegressor(nn.Module):
    def __init__(self, float32_rate: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        self.head = ExpRate(64, float32_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _page_views(gen: torch.Generator):
    """Generated page-view counts: log-rate 6 + x.w, up to ~12 (counts up to ~1e5)."""
    w = torch.randn(16, generator=gen) * 0.6
    while True:
        x = torch.randn(64, 16, generator=gen)
        rate = torch.exp((6.0 + x @ w).clamp(max=12.5))
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean() / 1000.0


def _ema_run(ctx: Context, float32_rate: bool, opt_fn, seed: int, steps: int):
    gen = seeded(seed)
    model = CountRegressor(float32_rate)
    opt = opt_fn(model.parameters())
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    overflow: list[bool] = []
    log_rate: list[float] = []

    def watch(module, args, out):
        overflow.append(bool(torch.isinf(out).any()))
        with torch.no_grad():
            log_rate.append(float(module.proj(args[0]).max()))

    model.head.register_forward_hook(watch)

    def before(step: int) -> None:
        if step > 0:
            ema.update_parameters(model)

    fit(
        ctx,
        model,
        opt,
        _page_views(gen),
        steps,
        loss_fn=_poisson_nll,
        classifier=False,
        scaler=scaler,
        amp=True,
        before=before,
    )
    return overflow, log_rate, ema


@scenario(
    "h61_ema_fp16_count_regressor",
    "adamax",
    "amp_overflow",
    where="head",
    diverges="auto",
    heldout=True,
    note="exp of the log-rate computed in fp16: rates past 65504 are inf",
)
def h61_ema_fp16_rate_overflow(ctx: Context) -> None:
    """A Poisson regressor for page-view counts trains under fp16 autocast (with a GradScaler),
    and keeps an EMA of its weights for evaluation. The rate head's ``exp`` runs in fp16 on the
    fp16 output of its projection: as the fit reaches the busiest pages (rates above 65504,
    log-rate > 11.09) the head's output overflows to inf, the loss is inf/NaN, the scaler
    skips the step and halves its scale, and since the same pages keep coming the run is stuck
    skipping: no more learning, and the EMA frozen with it."""
    overflow, log_rate, _ = _ema_run(
        ctx, False, lambda p: torch.optim.Adamax(p, lr=2e-3), 6117, 400
    )
    first = next((i for i, o in enumerate(overflow) if o), None)
    ctx.check(
        "the head's output overflowed to inf at a log-rate just past 11.09",
        first is not None and 11.0 < log_rate[first] < 12.0,
    )
    ctx.check(
        "the loss was finite before the overflow",
        first is not None and all(map(_finite, ctx.losses[: first - 1])),
    )
    ctx.check(
        "the scaler's scale collapsed after it", ctx.scales[-1] < ctx.scales[first - 1] / 2**8
    )


@scenario(
    "h61_ema_fp16_count_regressor",
    "sg_spam",
    "healthy",
    diverges=None,
    heldout=True,
    note="control under fp16 autocast: the exp taken in float32",
)
def h61_ema_fp16_rate_float32_control(ctx: Context) -> None:
    """The fix: the rate's ``exp`` is taken in float32. The per-batch loss is noisy (the counts
    are heavy-tailed and every batch draws new pages) but it falls, and nothing overflows."""
    overflow, log_rate, _ = _ema_run(
        ctx, True, lambda p: sgo.SPAM(p, lr=1e-3, fused=False), 6118, 400
    )
    L = ctx.losses
    ctx.check(
        "no overflow, the loss fell",
        not any(overflow) and all(map(_finite, L)) and sum(L[-10:]) < 0.3 * sum(L[:10]),
    )
