"""Held-out scenarios, set 47 (``h47_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face Jais2, GLM-4-MoE-Lite and LFM2-MoE causal LMs, an XLM-RoBERTa-XL
classifier and a DINOv3 ViT backbone with a linear head (digits) from configs; a Swin-style
shifted-window attention classifier, an SE-ResNeXt CNN, a recurrent convolutional network
(RCNN, weight-shared recurrent conv layer), a CondConv CNN (per-sample mixtures of expert
kernels), an HRNet-style two-resolution net, a PointPillars-style pillar encoder on generated
point clouds, a ConvMixer (fp16 autocast) and a SimSiam pair (digits).

Optimizers: SGD, momentum SGD, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop,
ASGD, and steadygrad.optim's Grams, AdEMAMix, SPAM, StableSPAM and AdaBelief.
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
    digit_batches,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _quiet_hf() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


# -- Hugging Face models from configs -------------------------------------------------------------


def _jais2(vocab: int = 128, dim: int = 48, layers: int = 2):
    from transformers import Jais2Config, Jais2ForCausalLM

    _quiet_hf()
    config = Jais2Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Jais2ForCausalLM(config)


def _glm4_moe_lite(vocab: int = 128, dim: int = 32):
    from transformers import Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM

    _quiet_hf()
    config = Glm4MoeLiteConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        moe_intermediate_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_shared_experts=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        max_position_embeddings=64,
        first_k_dense_replace=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Glm4MoeLiteForCausalLM(config)


def _lfm2_moe(vocab: int = 128, dim: int = 32):
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

    _quiet_hf()
    config = Lfm2MoeConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        moe_intermediate_size=dim,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_dense_layers=1,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        layer_types=["conv", "full_attention", "conv"],
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return Lfm2MoeForCausalLM(config)


def _xlmr_xl(vocab: int = 128, dim: int = 32, labels: int = 2):
    from transformers import XLMRobertaXLConfig, XLMRobertaXLForSequenceClassification

    _quiet_hf()
    config = XLMRobertaXLConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return XLMRobertaXLForSequenceClassification(config)


class DinoV3Classifier(nn.Module):
    """A DINOv3 ViT backbone (2x2 patches of an 8x8 digit, 2 register tokens) + linear head."""

    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        _quiet_hf()
        config = DINOv3ViTConfig(
            patch_size=2,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=8,
            num_channels=1,
            num_register_tokens=2,
        )
        self.backbone = DINOv3ViTModel(config)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=x.reshape(-1, 1, 8, 8))
        return self.head(out.pooler_output)


def _lm_batches(gen: torch.Generator, batch: int = 16, length: int = 32):
    return text_batches(gen, batch=batch, length=length, vocab=128)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _loop(ctx: Context, model: nn.Module, opt: torch.optim.Optimizer, batches, steps: int, losses):
    """A plain loop for the runs ``fit`` cannot express: ``losses(step, x, y)`` returns the
    reported loss and the loss actually backpropagated."""
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        loss, total = losses(step, x, y)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- Jais2: a z-loss with its sign flipped (output logits run away) -------------------------------


@scenario(
    "h47_hf_jais2_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=100,
    note="z-loss switched on at 100 with the wrong sign",
    heldout=True,
)
def h47_jais2_zloss_sign_flip(ctx: Context) -> None:
    """A Jais2 causal LM gets the PaLM z-loss (1e-3 * log(Z)^2, meant to pin log Z near 0)
    switched on at step 100, but written as ``loss - coef * z**2``: the term now rewards a large
    log-partition function. Cross-entropy cannot see a shift shared by all logits, so nothing
    holds it back: the head's shared logit component grows, log Z runs away (its own gradient
    grows with it) and the logits swamp the float32 precision of the cross-entropy."""
    gen = seeded(4701)
    model = _jais2()
    opt = torch.optim.NAdam(model.parameters(), lr=4e-3)
    log_z: list[float] = []

    def losses(step: int, x: torch.Tensor, y: torch.Tensor):
        logits = model(x).logits
        loss = lm_loss(logits, y)
        z = torch.logsumexp(logits.float(), dim=-1)
        log_z.append(float(z.detach().abs().mean()))
        if step >= 100:
            return loss, loss - 1e-2 * (z**2).mean()  # meant: + 1e-2 * (z**2).mean()
        return loss, loss

    _loop(ctx, model, opt, _lm_batches(gen), 300, losses)
    ctx.check("|log Z| grew 10x after step 100", max(log_z[100:]) > 10 * max(log_z[80:100]))
    ctx.check("cross-entropy at the end 3x its value at 100", ctx.losses[-1] > 3 * ctx.losses[100])


@scenario(
    "h47_hf_jais2_lm", "sg_stablespam", "healthy", note="the same LM, no z-loss", heldout=True
)
def h47_jais2_healthy_stablespam(ctx: Context) -> None:
    gen = seeded(4702)
    model = _jais2()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _lm_batches(gen), 220, loss_fn=lm_loss, forward=_hf_logits)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.7 * ctx.losses[0])


# -- GLM-4-MoE-Lite: one unscaled step poisons Adamax's infinity norm ----------------------------


@scenario(
    "h47_hf_glm4_moe_lite_lm",
    "adamax",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=120,
    note="manual loss scale not divided out for one step",
    heldout=True,
)
def h47_glm4_moe_lite_adamax_poisoned(ctx: Context) -> None:
    """A GLM-4-MoE-Lite LM trained with Adamax and a hand-rolled static loss scale of 2**16:
    at step 120 a resumed-from-checkpoint code path backpropagates the scaled loss without
    dividing the gradients back. Adamax's denominator is a running max of |g| that forgets at
    0.999 a step, so every tensor's denominator jumps ~10^4-fold and stays there. The spike's
    momentum pushes every weight one sign-step along the spiked gradient over the next ~50
    steps (the loss rises by ~0.5), and once it has decayed the updates are far smaller than
    before: the loss does not recover."""
    gen = seeded(4703)
    model = _glm4_moe_lite()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    snaps: dict[int, torch.Tensor] = {}

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**16 if step == 120 else loss

    def track(step: int) -> None:
        if step in (60, 110, 200, 250):
            snaps[step] = _flat(model)

    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=_hf_logits,
        extra_loss=bug,
        before=track,
    )
    before = (snaps[110] - snaps[60]).norm()
    after = (snaps[250] - snaps[200]).norm()
    ctx.check("updates 5x smaller 80 steps after the spike", after < before / 5)
    ctx.check("the loss stalled", sum(ctx.losses[-20:]) > 0.9 * sum(ctx.losses[121:141]))


# -- LFM2-MoE: a load-balancing weight read wrong for one step (a router gradient spike) ----------


def _balance_loss(routers: list[tuple[torch.Tensor, torch.Tensor]], experts: int) -> torch.Tensor:
    """Switch-style load balancing: experts * sum_e(share of tokens routed to e * mean prob)."""
    total = torch.zeros(())
    for logits, chosen in routers:
        prob = torch.sigmoid(logits)
        prob = prob / prob.sum(-1, keepdim=True)
        share = F.one_hot(chosen, experts).float().sum(1).mean(0) / chosen.shape[-1]
        total = total + experts * (share * prob.mean(0)).sum()
    return total


@scenario(
    "h47_hf_lfm2_moe_lm",
    "asgd",
    "gradient_spike",
    where=("model.layers.1.feed_forward.gate", "model.layers.2.feed_forward.gate"),
    diverges=None,
    onset=150,
    note="aux-loss weight 1e4x for one step",
    heldout=True,
)
def h47_lfm2_moe_aux_weight_spike(ctx: Context) -> None:
    """An LFM2-MoE LM with a hand-written load-balancing loss on its routers (weight 0.01). At
    step 150 a config hot-reload reads the weight as 100 for one step (a percent field parsed
    as a fraction): the routers' weights get a gradient four orders of magnitude above normal.
    The reported cross-entropy does not move (the spike is in the auxiliary term, not the
    data), the router weights jump, and the run carries on as before."""
    gen = seeded(4704)
    model = _lfm2_moe()
    opt = torch.optim.ASGD(model.parameters(), lr=0.3)
    gates = [model.model.layers[i].feed_forward.gate for i in (1, 2)]
    routed: list[tuple[torch.Tensor, torch.Tensor]] = []
    for g in gates:
        g.register_forward_hook(lambda m, a, out: routed.append((out[0], out[2])))
    gate_norms: list[float] = []
    rest_norms: list[float] = []

    def losses(step: int, x: torch.Tensor, y: torch.Tensor):
        routed.clear()
        loss = lm_loss(model(x).logits, y)
        weight = 100.0 if step == 150 else 0.01  # meant 0.01 every step
        return loss, loss + weight * _balance_loss(routed, 4)

    ctx.attach(model, opt)
    batches = _lm_batches(gen)
    for step in range(300):
        x, y = next(batches)
        loss, total = losses(step, x, y)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        gate_norms.append(float(torch.stack([g.weight.grad.norm() for g in gates]).norm()))
        rest_norms.append(float(model.lm_head.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    typical = sorted(gate_norms[100:150])[25]
    ctx.check("router gradient 100x its median at 150", gate_norms[150] > 100 * typical)
    ctx.check("lm_head gradient not spiked", rest_norms[150] < 3 * max(rest_norms[140:150]))
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss back within 10% by 200", sum(ctx.losses[200:220]) / 20 < 1.1 * pre)


# -- XLM-RoBERTa-XL: a temperature applied the wrong way round (softmax collapse) ----------------


def _fixed_bert_set(gen: torch.Generator, n: int = 64):
    x, y = next(bert_batches(gen, batch=n, length=16))
    while True:
        yield x, y


@scenario(
    "h47_hf_xlm_roberta_xl_cls",
    "radam",
    "softmax_collapse",
    where=("classifier", "classifier.out_proj"),
    diverges=None,
    note="logits divided by a temperature of 0.01",
    heldout=True,
)
def h47_xlmr_xl_temperature_collapse(ctx: Context) -> None:
    """An XLM-RoBERTa-XL classifier fine-tuned on a small fixed set of 64 sequences, with the
    raw logits divided by ``temperature=0.01``, a value copied from a contrastive config where
    it divides cosine similarities in [-1, 1]: every logit gap is 100x, the training loss is
    pushed past zero and by step ~150 the float32 softmax of most rows rounds to exactly
    one-hot, their gradient to exactly zero."""
    gen = seeded(4705)
    model = _xlmr_xl()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    x, y = next(_fixed_bert_set(gen))

    def forward(m: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return m(inp).logits / 0.01

    fit(ctx, model, opt, _fixed_bert_set(seeded(4705)), 200, forward=forward)
    with torch.no_grad():
        frac = collapsed_fraction(forward(model, x), y)
    ctx.check("40% of the training rows collapsed to one-hot", frac > 0.4)


# -- DINOv3 ViT: a head swapped in after the optimizer was built ----------------------------------


@scenario(
    "h47_hf_dinov3_vit_cls",
    "adagrad",
    "update_ratio_out_of_range",
    where="head",
    diverges=None,
    note="new head created after the optimizer: never updated",
    heldout=True,
)
def h47_dinov3_head_not_in_optimizer(ctx: Context) -> None:
    """A DINOv3 ViT backbone with a linear head: the script builds the optimizer, then replaces
    ``model.head`` for the 10-class task. The new head gets gradients every step but is not in
    the optimizer, so its update/weight ratio is exactly 0 for the whole run; only the backbone
    adapts to a random projection."""
    gen = seeded(4706)
    model = DinoV3Classifier()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    model.head = nn.Linear(32, 10)  # the task's head, swapped in too late
    before = model.head.weight.detach().clone()
    fit(ctx, model, opt, digit_batches(gen), 200)
    ctx.check("head weights never changed", torch.equal(before, model.head.weight))
    ctx.check(
        "head not among the optimizer's tensors",
        all(p is not model.head.weight for g in opt.param_groups for p in g["params"]),
    )


@scenario("h47_hf_dinov3_vit_cls", "sg_adabelief", "healthy", heldout=True)
def h47_dinov3_healthy_adabelief(ctx: Context) -> None:
    gen = seeded(4707)
    model = DinoV3Classifier()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, digit_batches(gen), 200)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])


# -- Swin-style shifted windows: the qk scale written as sqrt(d) instead of 1/sqrt(d) -------------


class WindowAttention(nn.Module):
    """Multi-head self-attention inside 4x4 windows with a relative-position bias table."""

    def __init__(self, dim: int, heads: int, window: int = 4, scale_bug: bool = False) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        head_dim = dim // heads
        self.scale = head_dim**0.5 if scale_bug else head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.last_logits = torch.zeros(())
        self.last_entropy = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        logits = logits + self.bias_table[self.rel_index].permute(2, 0, 1)
        attn = logits.softmax(-1)
        self.last_logits = logits.detach().abs().amax()
        self.last_entropy = -(attn * attn.clamp_min(1e-12).log()).sum(-1).mean().detach()
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, shift: int, scale_bug: bool) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, scale_bug=scale_bug)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 8, 8, C)
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:  # cyclic shift; on an 8x8 grid the wrapped windows are left unmasked
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        win = self.attn.window
        y = y.reshape(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
        y = self.attn(y.reshape(-1, win * win, c))
        y = y.reshape(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SwinNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, scale_bug: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, 8, dim))
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, heads, 0, scale_bug), SwinBlock(dim, heads, 2, scale_bug)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(-1, 8, 8, 1)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean((1, 2)))


@scenario(
    "h47_swin_shifted_window",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    note="qk scale sqrt(d) instead of 1/sqrt(d)",
    heldout=True,
)
def h47_swin_qk_scale_inverted(ctx: Context) -> None:
    """A Swin-style classifier (window attention, then shifted windows) whose attention scale
    was written ``head_dim ** 0.5`` instead of ``head_dim ** -0.5``: the q.k logits are 16x too
    large from the start and, with AdamW at 6e-3 and no QK-norm, keep growing (~80x over the
    run) as q and k align, until each query's attention is one-hot (entropy near zero); the
    loss does not blow up, it only crawls down through saturated, near-gradientless softmaxes."""
    gen = seeded(4708)
    model = SwinNet(scale_bug=True)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.01)
    logit_max: list[float] = []
    entropy: list[float] = []

    def track(step: int) -> None:
        if step > 0:
            logit_max.append(float(model.blocks[0].attn.last_logits))
            entropy.append(float(model.blocks[0].attn.last_entropy))

    fit(ctx, model, opt, digit_batches(gen), 220, before=track)
    ctx.check("attention logits grew 10x", max(logit_max[-20:]) > 10 * logit_max[0])
    ctx.check("attention near one-hot (entropy < 0.1 nats)", entropy[-1] < 0.1)


# -- SE-ResNeXt: a warm-up whose peak learning rate has a typo ------------------------------------


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class ResNeXtBlock(nn.Module):
    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.se = SEBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return F.relu(x + y)


class SEResNeXt(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(ResNeXtBlock(channels), ResNeXtBlock(channels))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.head(self.blocks(x).mean((2, 3)))


@scenario(
    "h47_se_resnext",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    note="warm-up peak 10.0 typed for 0.1",
    heldout=True,
)
def h47_se_resnext_warmup_peak_typo(ctx: Context) -> None:
    """An SE-ResNeXt on digits with Nesterov SGD and a linear warm-up over 150 steps whose peak
    was typed ``1e1`` for ``1e-1``: the rate climbs 0.067 a step, passes any sensible value
    within a few steps, and around step 65 (rate ~4) crosses the stability limit of the parts
    BatchNorm does not make scale-invariant (the head, the SE gates): the loss jumps back above
    chance and stays there, thrashing."""
    gen = seeded(4709)
    model = SEResNeXt()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    peak, warmup = 1e1, 150  # meant 1e-1
    lrs: list[float] = []

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warmup)
        lrs.append(opt.param_groups[0]["lr"])

    fit(ctx, model, opt, digit_batches(gen, 32), 150, before=schedule)
    med = [sorted(ctx.losses[i : i + 5])[2] for i in range(len(ctx.losses) - 4)]
    best = min(med[:60])
    bad = next(
        (i for i, v in enumerate(med) if v > max(2 * min(med[: i + 1]), min(med[: i + 1]) + 1)),
        None,
    )
    ctx.check("it trained while the rate was low", best < 1.5)
    ctx.check("loss blew up above chance once the rate passed ~4", bad is not None and lrs[bad] > 3)
    ctx.check("and stayed up", sorted(ctx.losses[100:])[25] > 2 * best)


# -- RCNN: a recurrent conv layer initialised with a gain above 1 and trained without clipping ----


class RecurrentConvLayer(nn.Module):
    """A recurrent convolutional layer (Liang & Hu), linear inside the loop:
    h_t = ff(x) + rec(h_{t-1}), t = 1..T, with ``rec`` shared over the T iterations and a ReLU
    on the final state."""

    def __init__(self, channels: int, steps: int = 8) -> None:
        super().__init__()
        self.steps = steps
        self.ff = nn.Conv2d(channels, channels, 3, padding=1)
        self.rec = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drive = self.ff(x)
        h = drive
        for _ in range(self.steps):
            h = drive + self.rec(h)
        return F.relu(h)


class RCNN(nn.Module):
    def __init__(self, channels: int = 16, rec_gain: float = 1.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.rcl = RecurrentConvLayer(channels)
        self.head = nn.Linear(channels * 16, 10)
        with torch.no_grad():  # identity-style init of the recurrence (IRNN), scaled by rec_gain
            nn.init.dirac_(self.rcl.rec.weight)
            self.rcl.rec.weight.mul_(rec_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        return self.head(F.max_pool2d(self.rcl(x), 2).flatten(1))


@scenario(
    "h47_recurrent_conv_rcnn",
    "sgd",
    "exploding_gradients",
    where="rcl.rec",
    diverges="auto",
    note="identity recurrence scaled 1.1, no clipping",
    heldout=True,
)
def h47_rcnn_recurrent_gain_no_clip(ctx: Context) -> None:
    """An RCNN whose shared recurrent conv is initialised as the identity times 1.1 (the IRNN
    recipe with a "slightly expanding" gain; 1.1^8 ~ 2.1 over the 8 iterations) and trained
    with plain SGD at 0.02 and no gradient clipping. It learns for ~10 steps; then steps on
    ``rec`` that raise its gain make the next gradients larger, which raise it further: the
    recurrent weight's gradient climbs for ~10 steps and the run blows up to inf/NaN."""
    gen = seeded(4711)
    model = RCNN(rec_gain=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    norms: dict[str, list[float]] = {n: [] for n, _ in model.named_parameters()}
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(60):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        for n, p in model.named_parameters():
            norms[n].append(float(p.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rec = norms["rcl.rec.weight"]
    broke = next(i for i, v in enumerate(ctx.losses) if not _finite(v) or v > 50)
    ctx.check("loss finite and falling for 10 steps", min(ctx.losses[:10]) < ctx.losses[0])
    ctx.check(
        "rec's gradient grew 10x over the 10 steps before the blow-up",
        rec[broke - 1] > 10 * min(rec[broke - 10 : broke - 1]),
    )
    ctx.check("then the loss went non-finite", not all(_finite(v) for v in ctx.losses))
    ratio = [rec[i] / max(norms["head.weight"][i], 1e-12) for i in range(broke)]
    ctx.check("rec's gradient grew more than the head's", ratio[broke - 1] > ratio[broke - 10])


# -- CondConv: a learning-rate burst from a scheduler restart kills a layer's ReLUs ---------------


class CondConv2d(nn.Module):
    """Conditionally parameterised conv: each sample's kernel is a sigmoid-routed mix of E
    expert kernels (Yang et al. 2019), computed as one grouped convolution."""

    def __init__(self, cin: int, cout: int, experts: int = 4) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) / math.sqrt(9 * cin))
        self.bias = nn.Parameter(torch.zeros(experts, cout))
        self.route = nn.Linear(cin, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        r = torch.sigmoid(self.route(x.mean((2, 3))))
        w = torch.einsum("be,eoikl->boikl", r, self.weight).reshape(b * self.cout, self.cin, 3, 3)
        bias = (r @ self.bias).reshape(-1)
        y = F.conv2d(x.reshape(1, b * self.cin, *x.shape[2:]), w, bias, padding=1, groups=b)
        return y.reshape(b, self.cout, *x.shape[2:])


class CondConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cond1 = CondConv2d(1, 16)
        self.cond2 = CondConv2d(16, 32)
        self.head = nn.Linear(32 * 16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.cond2(F.relu(self.cond1(x.reshape(-1, 1, 8, 8)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.max_pool2d(self.features(x), 2).flatten(1))


@scenario(
    "h47_condconv_cnn",
    "sgd_mom",
    "loss_of_plasticity",
    where=("cond2", "cond1"),
    diverges="auto",
    onset=120,
    note="scheduler restart at 120 uses the un-divided base rate for 5 steps",
    heldout=True,
)
def h47_condconv_lr_burst_dead_relu(ctx: Context) -> None:
    """A CondConv CNN trained with momentum SGD at 0.02. At step 120 a warm restart of the
    schedule reads the rate before its division by the batch-size factor: 40x the rate for five
    steps. The burst drives cond2's (and most of cond1's) biases and kernels to where their
    ReLU outputs are negative for every input; dead units pass no gradient, so they never come
    back: the loss jumps to chance and stays there."""
    gen = seeded(4712)
    model = CondConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.8 if 120 <= step < 125 else 0.02

    probe, _ = next(digit_batches(seeded(4799), 256))
    dead: list[float] = []
    first: list[float] = []

    def track(step: int) -> None:
        schedule(step)
        if step in (119, 249):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))
                first.append(dead_fraction(F.relu(model.cond1(probe.reshape(-1, 1, 8, 8)))))

    fit(ctx, model, opt, digit_batches(gen), 250, before=track)
    ctx.check("few cond2 channels dead before the burst", dead[0] < 0.2)
    ctx.check("all cond2 channels dead after it", dead[1] == 1.0)
    ctx.check("over half of cond1's channels dead after it", first[1] > 0.5)
    ctx.check("loss back at chance", sum(ctx.losses[-20:]) / 20 > 2.0)


# -- HRNet-style two-resolution net: one batch arrives unnormalised (a data outlier) --------------


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class HRNetLite(nn.Module):
    """A high-resolution (8x8) and a low-resolution (4x4) branch kept in parallel, exchanging
    information at each stage (upsampled 1x1 conv one way, strided conv the other)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn(1, c)
        self.down0 = _conv_bn(c, 2 * c, stride=2)
        self.high = nn.ModuleList([_conv_bn(c, c) for _ in range(2)])
        self.low = nn.ModuleList([_conv_bn(2 * c, 2 * c) for _ in range(2)])
        self.up = nn.ModuleList([nn.Conv2d(2 * c, c, 1) for _ in range(2)])
        self.down = nn.ModuleList([nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for _ in range(2)])
        self.head = nn.Linear(3 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.reshape(-1, 1, 8, 8))
        lo = self.down0(h)
        for i in range(2):
            h, lo = self.high[i](h), self.low[i](lo)
            h, lo = (
                h + F.interpolate(self.up[i](lo), scale_factor=2.0),
                lo + self.down[i](h),
            )
        return self.head(torch.cat([h.mean((2, 3)), lo.mean((2, 3))], 1))


@scenario(
    "h47_hrnet_multires",
    "rmsprop",
    "data_outlier",
    diverges=160,
    onset=160,
    note="four raw 0..255 images in the batch of step 160",
    heldout=True,
)
def h47_hrnet_unnormalised_batch(ctx: Context) -> None:
    """An HRNet-style two-resolution classifier on digits with RMSprop. At step 160 four images
    of the batch come from a file written as raw 8-bit intensities (0..255) instead of [0, 1]:
    they dominate every BatchNorm's batch statistics, the other 60 images are squashed to
    near-constant features and that batch's loss spikes. Nothing else is wrong: the running
    statistics and RMSprop's average forget the batch and the loss returns to where it was."""
    gen = seeded(4713)
    model = HRNetLite()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:  # four images of the batch decoded as raw 8-bit intensities
            x = x.clone()
            x[:4] = x[:4] * 255.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 260, alter=alter)
    pre = sum(ctx.losses[140:160]) / 20
    ctx.check("loss spiked 5x at 160", ctx.losses[160] > 5 * max(ctx.losses[150:160]))
    ctx.check("and recovered by 220", sum(ctx.losses[220:240]) / 20 < 1.5 * pre + 0.05)


# -- PointPillars-style encoder: an empty pillar divides by zero ----------------------------------


def _pillar_batches(gen: torch.Generator, batch: int = 32, points: int = 8):
    """Generated scenes on a 4x4 grid of pillars (unit cells), each pillar holding 3..8 valid
    points (x, y, z); the height field z = f(x, y) depends on the class (flat, ramp, bump,
    ridge), plus noise. Yields ((points, mask), label)."""
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    grid = grid.reshape(16, 1, 2)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        xy = grid + torch.rand(batch, 16, points, 2, generator=gen)
        u, v = xy[..., 0] / 4, xy[..., 1] / 4
        heights = torch.stack(
            [0.2 + 0 * u, u, torch.exp(-8 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)), (v - 0.5).abs()],
            1,
        )
        z = heights[torch.arange(batch), y] + 0.05 * torch.randn(u.shape, generator=gen)
        pts = torch.cat([xy, z[..., None]], -1)
        count = torch.randint(3, points + 1, (batch, 16, 1), generator=gen)
        mask = (torch.arange(points) < count).float()
        yield (pts * mask[..., None], mask), y


class PillarMean(nn.Module):
    """Mean of the valid points of each pillar: sum / count (the count is assumed > 0)."""

    def forward(self, pts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (pts * mask[..., None]).sum(2, keepdim=True) / mask.sum(2)[..., None, None]


class PillarNet(nn.Module):
    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.pillar_mean = PillarMean()
        self.pfn = nn.Linear(6, c)
        self.pfn_norm = nn.LayerNorm(c)
        self.backbone = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(c, 4)

    def forward(self, inp) -> torch.Tensor:
        pts, mask = inp
        centre = self.pillar_mean(pts, mask)
        feats = torch.cat([pts, pts - centre], -1)
        feats = F.relu(self.pfn_norm(self.pfn(feats))) * mask[..., None]
        pillars = feats.amax(2)  # (B, 16, C): a max over the points of each pillar
        canvas = pillars.transpose(1, 2).reshape(-1, pillars.shape[-1], 4, 4)
        return self.head(self.backbone(canvas).mean((2, 3)))


@scenario(
    "h47_pointpillars_encoder",
    "sg_grams",
    "nonfinite",
    where="pillar_mean",
    diverges=170,
    onset=170,
    note="one scene with an empty pillar at step 170: 0/0",
    heldout=True,
)
def h47_pointpillars_empty_pillar(ctx: Context) -> None:
    """A PointPillars-style encoder (pillar mean offsets, a per-point linear layer, a max over
    each pillar's points, a conv backbone on the pillar canvas) on generated scenes. The
    pillars come from a fixed grid and PillarMean divides by the number of valid points,
    assuming every pillar has one. At step 170 one scene has a fully occluded pillar: 0 / 0 in
    PillarMean gives NaN, which flows through the rest of the net into the loss and, through
    the gradients, into every weight."""
    gen = seeded(4714)
    model = PillarNet()
    opt = sgo.Grams(model.parameters(), lr=2e-3, fused=False)
    first_bad: list[str] = []

    def spot(name: str):
        def hook(m: nn.Module, a, out: torch.Tensor) -> None:
            if not first_bad and not torch.isfinite(out).all():
                first_bad.append(name)

        return hook

    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(spot(name))

    def alter(step: int, inp, y: torch.Tensor):
        if step == 170:
            pts, mask = inp[0].clone(), inp[1].clone()
            mask[3, 9] = 0.0
            pts[3, 9] = 0.0
            inp = (pts, mask)
        return inp, y

    fit(ctx, model, opt, _pillar_batches(gen), 220, alter=alter)
    ok = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite until 170, not from 170", all(ok[:170]) and not any(ok[170:]))
    ctx.check("the first non-finite output is pillar_mean's", first_bad[:1] == ["pillar_mean"])
    ctx.check("it had learned before", sum(ctx.losses[150:170]) / 20 < 0.7 * ctx.losses[0])


# -- ConvMixer under fp16 autocast ----------------------------------------------------------------


class ConvMixer(nn.Module):
    """Patch embedding (2x2 patches), then depthwise-conv (residual) / pointwise-conv mixing
    layers, each conv followed by GELU and BatchNorm (Trockman & Kolter)."""

    def __init__(self, dim: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dim, 2, stride=2), nn.GELU(), nn.BatchNorm2d(dim))
        self.depthwise = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(), nn.BatchNorm2d(dim)
            )
            for _ in range(depth)
        )
        self.pointwise = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.reshape(-1, 1, 8, 8))
        for dw, pw in zip(self.depthwise, self.pointwise, strict=True):
            x = pw(x + dw(x))
        return self.head(x.mean((2, 3)))


@scenario(
    "h47_convmixer",
    "sg_ademamix",
    "amp_overflow",
    where="stem.0",
    diverges=140,
    onset=140,
    note="fp16 autocast; 16-bit raw images from step 140",
    heldout=True,
)
def h47_convmixer_fp16_raw16bit_overflow(ctx: Context) -> None:
    """A ConvMixer trained under fp16 autocast with a GradScaler. From step 140 the loader
    switches to a shard stored as 16-bit images and nobody divides by 65535: intensities reach
    ~6e4 and the patch-embedding conv's fp16 outputs pass 65504 and overflow to inf (the same
    batch in float32 is finite; the BatchNorm after the stem would have normalised it). The
    infs become NaN in BatchNorm, the loss is NaN every step from then on, and the scaler
    skips every step and keeps halving its scale."""
    gen = seeded(4715)
    model = ConvMixer()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    stem_inf = [False] * 200
    now = [0]

    def hook(m: nn.Module, a, out: torch.Tensor) -> None:
        stem_inf[now[0]] |= bool(torch.isinf(out).any())

    model.stem[0].register_forward_hook(hook)
    raw: list[torch.Tensor] = []

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        now[0] = step
        if step >= 140:  # 16-bit shard: [0, 1] * 65535, not rescaled
            x = x * 65535.0
            if step == 140:
                raw.append(x)
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 200, alter=alter, scaler=scaler, amp=True)
    ok = [_finite(v) for v in ctx.losses]
    with torch.no_grad():
        fp32 = model.stem[0](raw[0].reshape(-1, 1, 8, 8))
    ctx.check(
        "stem conv overflowed from 140, never before",
        not any(stem_inf[:140]) and all(stem_inf[140:200]),
    )
    ctx.check("the same batch is finite in float32", bool(torch.isfinite(fp32).all()))
    ctx.check("loss finite until 140, non-finite after", all(ok[:140]) and not any(ok[140:]))
    ctx.check("it had learned before", sum(ctx.losses[120:140]) / 20 < 0.5 * ctx.losses[0])


@scenario("h47_convmixer", "adam", "healthy", note="fp16 autocast with a GradScaler", heldout=True)
def h47_convmixer_fp16_healthy_adam(ctx: Context) -> None:
    gen = seeded(4716)
    model = ConvMixer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, digit_batches(gen), 200, scaler=scaler, amp=True)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.3 * ctx.losses[0])
    ctx.check("every loss finite", all(_finite(v) for v in ctx.losses))


# -- SimSiam pair (healthy) -----------------------------------------------------------------------


class SimSiam(nn.Module):
    def __init__(self, dim: int = 64, pred: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 16, dim),
            nn.BatchNorm1d(dim),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred), nn.BatchNorm1d(pred), nn.ReLU(), nn.Linear(pred, dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.reshape(-1, 1, 8, 8))
        return z, self.predictor(z)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to one pixel, random erasing of a 3x3 patch and pixel noise."""
    img = x.reshape(-1, 8, 8)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    img = torch.roll(img, (dx, dy), (1, 2)).clone()
    i, j = (int(v) for v in torch.randint(0, 6, (2,), generator=gen))
    img[:, i : i + 3, j : j + 3] = 0.0
    return (img + 0.1 * torch.randn(img.shape, generator=gen)).reshape(x.shape)


@scenario(
    "h47_simsiam_pair", "sg_spam", "healthy", note="negative cosine, stop-gradient", heldout=True
)
def h47_simsiam_healthy_spam(ctx: Context) -> None:
    gen = seeded(4717)
    model = SimSiam()
    opt = sgo.SPAM(model.parameters(), lr=2e-3, fused=False)
    aug = torch.Generator().manual_seed(4717)
    batches = digit_batches(gen, 128)

    def losses(step: int, x: torch.Tensor, y: torch.Tensor):
        z1, p1 = model(_augment(x, aug))
        z2, p2 = model(_augment(x, aug))
        loss = (
            -(
                F.cosine_similarity(p1, z2.detach()).mean()
                + F.cosine_similarity(p2, z1.detach()).mean()
            )
            / 2
        )
        return loss, loss

    _loop(ctx, model, opt, batches, 200, losses)
    model.eval()
    with torch.no_grad():
        x, _ = next(digit_batches(seeded(4798), 256))
        z = F.normalize(model.encoder(x.reshape(-1, 1, 8, 8)), dim=1)
    spread = float(z.std(0).mean() * math.sqrt(z.shape[1]))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < ctx.losses[0] - 0.3)
    ctx.check("no representation collapse (spread > 0.3)", spread > 0.3)
