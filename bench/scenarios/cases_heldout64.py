"""Held-out scenarios, set 64 (``h64_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face Aria text tower (MoE causal LM), HunYuan-MoE (v1) causal LM, Gemma-3 text
classifier (a control too), Qwen3-VL text tower with a hand-added LM head and a Switch
Transformers encoder behind a hand-written masked mean pool, all from configs; and, in plain
PyTorch, iterative structured pruning through ``torch.nn.utils.prune`` (a control too), a CNN
with ``weight_norm`` parametrizations, an IRNN pixel classifier under activation checkpointing
(a control too), a fake-quantised (``torch.ao.quantization`` QAT) regressor, a hand-written DoRA
adapter on a frozen MLP (its control under fp16 autocast with a GradScaler), a denoiser with a
feature-matching loss read through forward hooks (fp16 autocast with a GradScaler) and a
layer-freezing (gradual unfreezing) schedule.

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, Adagrad, Adadelta, RMSprop, ASGD, SGD, momentum
SGD, Nesterov SGD, and steadygrad.optim's AdaBelief, Lion, Grams and SPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.checkpoint import checkpoint

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
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


# -- Hugging Face Aria text tower: attention scale dropped --------------------------------------


def _aria(vocab: int = 128):
    from transformers import AriaTextConfig, AriaTextForCausalLM

    config = AriaTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        moe_num_experts=4,
        moe_topk=2,
        moe_num_shared_experts=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "eager"
    return AriaTextForCausalLM(config)


@scenario(
    "h64_hf_aria_text_moe_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention scaling set to 1.0 in a port (no 1/sqrt(d)), high LR, no QK-norm",
)
def h64_aria_attention_scale_dropped(ctx: Context) -> None:
    """A port from a T5-style codebase (which folds the 1/sqrt(d) into the init) sets every
    attention module's ``scaling`` to 1.0, and the LM is trained at a high AdamW rate with no
    QK-norm: the q.k logits, already 4x too large, grow a hundredfold until the attention rows
    saturate to near one-hot; the loss stalls on a plateau above where it should be."""
    gen = seeded(6401)
    model = _aria()
    for layer in model.model.layers:
        layer.self_attn.scaling = 1.0  # the bug: should be head_dim ** -0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe, _ = next(text_batches(torch.Generator().manual_seed(1), 16))
    attn = model.model.layers[0].self_attn
    grabbed: dict[str, torch.Tensor] = {}
    attn.q_proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("k", o.detach()))

    def logit_scale() -> float:
        with torch.no_grad():
            model(input_ids=probe)
        q = grabbed["q"].reshape(16, 32, 2, 16)
        k = grabbed["k"].reshape(16, 32, 1, 16)
        return float(torch.einsum("bqhd,bkd->bhqk", q, k[:, :, 0]).abs().amax())

    def max_prob() -> float:
        with torch.no_grad():
            out = model(input_ids=probe, output_attentions=True)
        return float(torch.stack([a.amax(-1).mean() for a in out.attentions]).mean())

    start, p0 = logit_scale(), max_prob()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16),
        260,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    end, p1 = logit_scale(), max_prob()
    ctx.check("layer 0 attention logits grew 10x", end > 10 * start)
    ctx.check("attention rows saturated (mean max prob > 0.9)", p1 > 0.9 and p0 < 0.6)


# -- Hugging Face HunYuan-MoE: z-loss with the wrong sign ----------------------------------------


def _hunyuan(vocab: int = 128):
    from transformers import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM

    config = HunYuanMoEV1Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        num_experts=4,
        moe_topk=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return HunYuanMoEV1ForCausalLM(config)


@scenario(
    "h64_hf_hunyuan_moe_v1_lm",
    "sg_adabelief",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    onset=0,
    note="z-loss added with the wrong sign: log Z is pushed up without bound",
)
def h64_hunyuan_zloss_wrong_sign(ctx: Context) -> None:
    """The z-loss meant to keep the softmax normaliser near zero (``+ 1e-2 * logZ**2``) is
    written as a subtraction: the gradient pushes log Z up every step, and since a common shift
    of all logits costs the cross-entropy nothing, the LM head's weights and the logits grow
    step after step (log Z more than doubles, linearly, with no sign of stopping) while the
    reported cross-entropy still creeps down."""
    gen = seeded(6402)
    model = _hunyuan()
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3)
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(input_ids=x).logits
        return last["logits"]

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        log_z = torch.logsumexp(last["logits"].float(), dim=-1)
        return loss - 1e-2 * (log_z**2).mean()  # the bug: the sign

    probe, _ = next(text_batches(torch.Generator().manual_seed(2), 16))

    def mean_log_z() -> float:
        with torch.no_grad():
            return float(torch.logsumexp(model(input_ids=probe).logits, -1).mean())

    z0, w0 = mean_log_z(), float(model.lm_head.weight.detach().norm())
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=zloss,
    )
    z1, w1 = mean_log_z(), float(model.lm_head.weight.detach().norm())
    ctx.check("log Z more than doubled", z1 > 2 * z0)
    ctx.check("lm_head weights grew 3x", w1 > 3 * w0)


# -- Hugging Face Gemma-3 text classifier: temperature the wrong way ----------------------------


def _gemma3_cls():
    from transformers import Gemma3TextConfig, Gemma3TextForSequenceClassification

    config = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        sliding_window=16,
    )
    return Gemma3TextForSequenceClassification(config)


def _keyword_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Does the sequence contain the keyword (token 1)? Half the rows do."""
    while True:
        x = torch.randint(3, 128, (batch, length), generator=gen)
        y = (torch.rand(batch, generator=gen) < 0.5).long()
        pos = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] = torch.where(y == 1, 1, x[torch.arange(batch), pos])
        yield x, y


@scenario(
    "h64_hf_gemma3_text_cls",
    "nadam",
    "softmax_collapse",
    where="score",
    diverges=None,
    heldout=True,
    note="a config typo: temperature 1e-3 (meant 1.0), logits divided by it: the softmax goes one-hot",
)
def h64_gemma3_temperature_typo(ctx: Context) -> None:
    """The classifier divides its logits by ``cfg.temperature``, and the config carries a typo:
    1e-3 (the learning rate's value pasted into the wrong field) where 1.0 was meant. Logits
    1000x too large: the easy keyword task is fitted past zero loss in a hundred steps and the
    float32 softmax of nearly every row gives the target exactly 1.0."""
    gen = seeded(6403)
    model = _gemma3_cls()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        _keyword_batches(gen),
        300,
        forward=lambda m, x: m(input_ids=x).logits / 1e-3,  # the bug
    )
    x, y = next(_keyword_batches(torch.Generator().manual_seed(3), 256))
    with torch.no_grad():
        logits = model(input_ids=x).logits / 1e-3
    frac = collapsed_fraction(logits, y)
    ctx.check("most rows' softmax is exactly one-hot on the target", frac >= 0.8)


@scenario("h64_hf_gemma3_text_cls", "adagrad", "healthy", heldout=True)
def h64_gemma3_cls_healthy(ctx: Context) -> None:
    gen = seeded(6404)
    model = _gemma3_cls()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, bert_batches(gen, 32), 220, forward=lambda m, x: m(input_ids=x).logits)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell by a third", last < 0.67 * first)


# -- Hugging Face Qwen3-VL text tower: a stale manual loss scale ---------------------------------


class QwenVLTextLM(nn.Module):
    """The Qwen3-VL text tower with a hand-added untied LM head (text-only pre-training)."""

    def __init__(self, vocab: int = 128) -> None:
        super().__init__()
        from transformers import Qwen3VLTextConfig, Qwen3VLTextModel

        config = Qwen3VLTextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        self.text = Qwen3VLTextModel(config)
        self.lm_head = nn.Linear(32, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.text(input_ids=idx).last_hidden_state)


@scenario(
    "h64_hf_qwen3_vl_text_lm",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="manual loss scale 2**16 not undone on the resume step: one giant gradient",
)
def h64_qwen3vl_stale_loss_scale(ctx: Context) -> None:
    """The loop scales the loss by 2**16 by hand (left over from an fp16 recipe) and divides the
    gradients back before the step. On the step after a resume (120) the unscale is skipped:
    every tensor gets a gradient 65536x too large for one step. Adam's second moment takes
    1e-3 of its square and keeps it for thousands of steps: the updates shrink by two orders
    and the LM stops learning."""
    gen = seeded(6405)
    model = QwenVLTextLM()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, 16)
    params = list(model.parameters())
    moves: list[torch.Tensor] = []  # per-tensor update norms, one row a step
    for step in range(320):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        (loss * 2.0**16).backward()
        if step != 120:  # the bug: the resumed step skips the unscale
            for p in params:
                p.grad.div_(2.0**16)
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in params]
        opt.step()
        moves.append(
            torch.stack([(p.detach() - b).norm() for p, b in zip(params, before, strict=True)])
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    steps = torch.stack(moves)
    shrink = steps[200:320].mean(0) / steps[90:120].mean(0)
    ctx.check(
        "gradient at 120 was >1000x the step before",
        ctx.grad_norms[120] > 1e3 * ctx.grad_norms[119],
    )
    ctx.check(
        "the median tensor's updates shrank 10x after the spike", float(shrink.median()) < 0.1
    )
    ctx.check(
        "200 steps on, the loss is still above its pre-spike level",
        sum(ctx.losses[300:320]) / 20 > 1.1 * sum(ctx.losses[100:120]) / 20,
    )


# -- Hugging Face Switch Transformers encoder: empty document, masked mean pool -------------------


class MaskedMeanPool(nn.Module):
    """Mean of the token states under the attention mask."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)  # no clamp on the count


class SwitchClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import SwitchTransformersConfig, SwitchTransformersEncoderModel

        config = SwitchTransformersConfig(
            vocab_size=128,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            num_experts=4,
            encoder_sparse_step=1,
            dropout_rate=0.0,
            pad_token_id=0,
        )
        self.encoder = SwitchTransformersEncoderModel(config)
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(32, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = (idx != 0).long()
        h = self.encoder(input_ids=idx, attention_mask=mask).last_hidden_state
        return self.head(self.pool(h, mask))


def _padded(gen: torch.Generator):
    for x, y in bert_batches(gen, 32):
        lengths = torch.randint(8, 17, (len(x),), generator=gen)
        yield torch.where(torch.arange(16)[None] < lengths[:, None], x, 0), y


def _empty_document(at: int):
    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == at:  # one document filtered down to nothing upstream: all padding
            x = x.clone()
            x[7] = 0
        return x, y

    return alter


@scenario(
    "h64_hf_switch_encoder_cls",
    "sgd_mom",
    "nonfinite",
    where="pool",
    diverges=150,
    heldout=True,
    onset=150,
    note="an empty document: the masked mean pool divides 0 by 0",
)
def h64_switch_empty_document_pool(ctx: Context) -> None:
    """The classifier mean-pools the Switch encoder's states under the attention mask with no
    clamp on the token count. At step 150 a document that upstream filtering emptied arrives
    as all padding: the pool computes 0/0, the loss is NaN and the NaN gradients poison every
    weight from then on."""
    gen = seeded(6406)
    model = SwitchClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen: dict[int, tuple[bool, bool]] = {}

    def hook(m, inputs, out):
        seen[len(ctx.losses)] = (
            bool(torch.isfinite(inputs[0]).all()),
            bool(torch.isfinite(out).all()),
        )

    model.pool.register_forward_hook(hook)
    fit(ctx, model, opt, _padded(gen), 190, alter=_empty_document(150))
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 150, not after", all(finite[:150]) and not any(finite[150:]))
    ctx.check("pool's input finite and its output not at 150", seen[150] == (True, False))


# -- iterative structured pruning that compounds -------------------------------------------------


class PrunableMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(128, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def hidden2(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden2(x))


@scenario(
    "h64_iterative_structured_prune",
    "sgd",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    diverges="auto",
    heldout=True,
    onset=100,
    note="ln_structured re-applied every 20 steps: 35% of what is left each time",
)
def h64_prune_schedule_compounds(ctx: Context) -> None:
    """A pruning schedule meant to remove 35% of fc2's units once calls
    ``prune.ln_structured(fc2, amount=0.35)`` every 20 steps from step 100: each call prunes
    35% of the rows that are left, so after eight calls over 95% of fc2's units are masked by
    the forward pre-hook. Their rows are zero and get no gradient, their outputs are a bias
    after the ReLU: the units are dead to learning and the loss climbs back up."""
    gen = seeded(6407)
    model = PrunableMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def schedule(step: int) -> None:
        if step >= 100 and (step - 100) % 20 == 0:
            prune.ln_structured(model.fc2, "weight", amount=0.35, n=2, dim=0)

    fit(ctx, model, opt, digit_batches(gen), 300, before=schedule)
    x, _ = next(digit_batches(torch.Generator().manual_seed(4), 256))
    with torch.no_grad():
        h = model.hidden2(x)
    pruned = float((model.fc2.weight.abs().sum(1) == 0).float().mean())
    frozen_out = float((h.std(0) == 0).float().mean())
    best_before = min(ctx.losses[80:100])
    ctx.check("over 90% of fc2's units masked", pruned > 0.9)
    ctx.check("those units' outputs constant on the batch", frozen_out > 0.9)
    ctx.check("loss climbed back", sum(ctx.losses[-10:]) / 10 > 1.5 * best_before)


@scenario("h64_iterative_structured_prune", "sg_spam", "healthy", heldout=True)
def h64_prune_once_healthy(ctx: Context) -> None:
    gen = seeded(6408)
    model = PrunableMLP()
    opt = sgo.SPAM(model.parameters(), lr=1e-3)

    def schedule(step: int) -> None:
        if step == 60:  # the intended schedule: once
            prune.ln_structured(model.fc2, "weight", amount=0.35, n=2, dim=0)

    fit(ctx, model, opt, digit_batches(gen), 220, before=schedule)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell 4x", last < 0.25 * first)


# -- weight_norm applied after the optimizer was built -------------------------------------------


class WNConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    "h64_weight_norm_cnn",
    "radam",
    "update_ratio_out_of_range",
    where="conv2",
    diverges=None,
    heldout=True,
    note="weight_norm parametrization added after the optimizer: conv2's g and v never update",
)
def h64_weight_norm_after_optimizer(ctx: Context) -> None:
    """The optimizer is built, then a refactor applies
    ``parametrizations.weight_norm`` to conv2: the parametrization replaces conv2.weight by
    two new parameters (g and v) that the optimizer never saw. They get gradients but are
    never stepped: conv2's weight stays at its init while the rest trains."""
    gen = seeded(6409)
    model = WNConvNet()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    torch.nn.utils.parametrizations.weight_norm(model.conv2)  # the bug: after the optimizer
    had_grad: list[bool] = []
    model.conv2.parametrizations.weight.original1.register_hook(lambda g: had_grad.append(True))
    g0 = model.conv2.parametrizations.weight.original0.detach().clone()
    v0 = model.conv2.parametrizations.weight.original1.detach().clone()
    fit(ctx, model, opt, digit_batches(gen, 48), 200)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    orig = model.conv2.parametrizations.weight
    ctx.check(
        "g and v not in the optimizer",
        id(orig.original0) not in in_opt and id(orig.original1) not in in_opt,
    )
    ctx.check(
        "conv2's weight never moved",
        torch.equal(g0, orig.original0) and torch.equal(v0, orig.original1),
    )
    ctx.check("v got a gradient every step", len(had_grad) == 200)


# -- an IRNN under activation checkpointing: recurrence grows past 1 -----------------------------


class CheckpointedIRNN(nn.Module):
    """Reads a digit as 32 steps of 2 pixels with a ReLU recurrence (IRNN: identity init),
    unrolled in 4 checkpointed segments of 8 steps to save activation memory."""

    def __init__(self, hidden: int = 64, gain: float = 1.0) -> None:
        super().__init__()
        self.ih = nn.Linear(2, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
            self.hh.bias.zero_()
            self.ih.weight.normal_(0.0, 0.1)
            self.ih.bias.zero_()
        self.hidden = hidden

    def segment(self, h: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        for t in range(xs.shape[1]):
            h = F.relu(self.hh(h) + self.ih(xs[:, t]))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(-1, 32, 2) - 0.5
        h = torch.zeros(len(x), self.hidden)
        for s in range(4):
            h = checkpoint(self.segment, h, xs[:, 8 * s : 8 * s + 8], use_reentrant=False)
        return self.head(h)


@scenario(
    "h64_checkpointed_irnn",
    "sgd_nesterov",
    "exploding_gradients",
    where="hh",
    diverges="auto",
    heldout=True,
    note="IRNN without clipping: the recurrent weight's spectral radius grows past 1",
)
def h64_irnn_unclipped_explodes(ctx: Context) -> None:
    """The IRNN recipe needs gradient clipping; this loop has none. Nesterov steps on the
    identity-initialised recurrent weight push its spectral radius above 1: the 32-step
    recurrence amplifies its backward pass, the gradients grow step over step (first and most
    in ``hh``) until the updates throw the weights to non-finite values."""
    gen = seeded(6410)
    model = CheckpointedIRNN(gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    grads: dict[str, list[float]] = {"hh": [], "ih": [], "head": []}
    for name in grads:
        getattr(model, name).weight.register_hook(
            lambda g, name=name: grads[name].append(float(g.norm()))
        )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [_finite(v) for v in ctx.losses]
    broke = finite.index(False) if not all(finite) else len(finite)
    early = {k: sorted(v[10:40])[15] for k, v in grads.items()}
    late = {k: max(v[broke - 8 : broke - 1]) for k, v in grads.items()}
    growth = {k: late[k] / early[k] for k in grads}
    ctx.check("the run went non-finite after step 50", 50 < broke < 200)
    ctx.check("hh's gradient grew 10x before the break", growth["hh"] > 10)
    ctx.check("hh's gradient grew the most", growth["hh"] == max(growth.values()))


@scenario("h64_checkpointed_irnn", "adadelta", "healthy", heldout=True)
def h64_irnn_adadelta_healthy(ctx: Context) -> None:
    gen = seeded(6411)
    model = CheckpointedIRNN(gain=1.0)
    opt = torch.optim.Adadelta(model.parameters(), lr=0.5)

    fit(ctx, model, opt, digit_batches(gen), 300)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell by half", last < 0.5 * first)
    ctx.check("all finite", all(map(_finite, ctx.losses)))


# -- fake-quantised (QAT) regressor: a hand-written decay with the wrong sign --------------------


def _qat_regressor() -> nn.Module:
    from torch.ao.quantization import DeQuantStub, QuantStub, get_default_qat_qconfig, prepare_qat

    model = nn.Sequential(
        QuantStub(),
        nn.Linear(10, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 1),
        DeQuantStub(),
    )
    model.qconfig = get_default_qat_qconfig("x86")
    model.train()
    return prepare_qat(model, inplace=False)


def _diabetes_batches(gen: torch.Generator, batch: int = 64):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target, dtype=torch.float32)
    y = (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx, None]


@scenario(
    "h64_fake_quant_qat_regressor",
    "adamax",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="decoupled weight decay written p += lr*wd*p: the weights grow slowly, the loss climbs",
)
def h64_qat_decay_wrong_sign(ctx: Context) -> None:
    """Quantisation-aware training (fake quantisation of weights and activations) of a
    regressor, with a hand-written decoupled weight decay on the weight matrices after each
    Adamax step: ``p.add_(p, alpha=lr * wd)`` where ``alpha=-lr * wd`` was meant. Every matrix
    grows by a factor (1 + lr*wd) per step on top of Adamax's bounded steps, the fake-quant
    ranges follow, and the prediction error climbs slowly with no single event to point at."""
    gen = seeded(6412)
    model = _qat_regressor()
    lr, wd = 3e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    decayed = [p for n, p in model.named_parameters() if n.endswith("weight")]
    ctx.attach(model, opt)
    batches = _diabetes_batches(gen)
    for _ in range(400):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in decayed:
                p.add_(p, alpha=lr * wd)  # the bug: the sign
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    smooth = [sum(ctx.losses[i : i + 20]) / 20 for i in range(0, 400, 20)]
    best = min(smooth)
    ctx.check("20-step mean loss climbed to 3x its best", smooth[-1] > 3 * best)
    ctx.check(
        "the climb was slow (no step jumped 3x over its predecessor)",
        all(b < 3 * a + 0.5 for a, b in zip(ctx.losses, ctx.losses[1:], strict=False)),
    )


# -- hand-written DoRA on a frozen MLP: a leftover gradient check --------------------------------


class DoRALinear(nn.Module):
    """DoRA (weight-decomposed low-rank adaptation): W = m * (W0 + s B A) / ||W0 + s B A||_col."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.magnitude = nn.Parameter(base.weight.detach().norm(dim=1, keepdim=True).clone())
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base.weight + self.scale * self.lora_B @ self.lora_A
        w = self.magnitude * w / w.norm(dim=1, keepdim=True).detach()
        return F.linear(x, w, self.base.bias)


class DoRAMLP(nn.Module):
    def __init__(self, backbone: nn.Sequential) -> None:
        super().__init__()
        self.fc1 = DoRALinear(backbone[0])
        self.fc2 = DoRALinear(backbone[2])
        self.head = backbone[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _pretrained_backbone(seed: int) -> nn.Sequential:
    """A digit MLP pre-trained briefly on the first five classes (no monitor attached)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = digits()
    keep = y < 5
    x, y = x[keep], y[keep]
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def _all_digits(gen: torch.Generator):
    yield from digit_batches(gen)


@scenario(
    "h64_dora_adapter_mlp",
    "asgd",
    "gradient_spike",
    where="fc2.magnitude",
    diverges=None,
    heldout=True,
    onset=150,
    note="a debugging gradient check left in: 1000x loss backpropagated into fc2's magnitude",
)
def h64_dora_leftover_grad_check(ctx: Context) -> None:
    """A debugging gradient check on the DoRA magnitude vector of fc2 was left in: at step 150 it
    backpropagates ``1e3 * loss`` into ``fc2.magnitude`` only (to be above float noise) and
    does not clear the gradient. The real step sees a gradient on that one tensor ~1000x its
    usual size; the loop clips the global gradient norm to 1, so the step is bounded and the
    fine-tune carries on unharmed."""
    backbone = _pretrained_backbone(6413)
    gen = seeded(6413)
    model = DoRAMLP(backbone)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.ASGD(trainable, lr=0.05)
    mag_grads: list[float] = []
    ctx.attach(model, opt)
    batches = _all_digits(gen)
    for step in range(260):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        if step == 150:  # the leftover gradient check
            (1e3 * F.cross_entropy(model(x), y)).backward(inputs=[model.fc2.magnitude])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        mag_grads.append(float(model.fc2.magnitude.grad.norm()))
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    usual = sorted(mag_grads[100:150])[25]
    pre = sum(ctx.losses[130:150]) / 20
    post = sum(ctx.losses[-20:]) / 20
    ctx.check("fc2.magnitude's gradient at 150 was >100x its median", mag_grads[150] > 100 * usual)
    ctx.check("only that step", max(mag_grads[151:]) < 10 * usual)
    ctx.check("no lasting damage: loss kept falling", post < pre and ctx.losses[152] < 2 * pre)


@scenario(
    "h64_dora_adapter_mlp", "sg_grams", "healthy", heldout=True, note="fp16 autocast + GradScaler"
)
def h64_dora_amp_healthy(ctx: Context) -> None:
    backbone = _pretrained_backbone(6414)
    gen = seeded(6414)
    model = DoRAMLP(backbone)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = sgo.Grams(trainable, lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, _all_digits(gen), 220, amp=True, scaler=scaler)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell by half", last < 0.5 * first)


# -- a denoiser with a feature-matching loss read through forward hooks --------------------------


class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, 3, padding=1)
        self.enc2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.enc1(x))
        h = F.relu(self.enc2(h))
        return x + self.dec(h)


class FeatureNet(nn.Module):
    """A fixed random conv feature extractor (a random-feature perceptual loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


@scenario(
    "h64_hooked_feature_matching_denoiser",
    "sg_lion",
    "loss_spike",
    where=(),
    diverges=170,
    heldout=True,
    onset=170,
    note="fp16 autocast + GradScaler; a mid-training preview overwrites the hooked target features",
)
def h64_feature_hooks_overwritten(ctx: Context) -> None:
    """The feature-matching loss reads the frozen feature net's activations through forward
    hooks that store them in a dict: the loop runs the net on the clean target, keeps a
    reference to those entries, then on the reconstruction. At step 170 a preview callback
    (run between the two) pushes a different batch through the feature net, so the "target"
    features are another image's: one step's loss jumps, and the next step is normal again."""
    gen = seeded(6415)
    model = Denoiser()
    feat = FeatureNet()
    store: dict[str, torch.Tensor] = {}
    feat.conv1.register_forward_hook(lambda m, i, o: store.__setitem__("conv1", o))
    feat.conv2.register_forward_hook(lambda m, i, o: store.__setitem__("conv2", o))
    opt = sgo.Lion(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = digit_batches(gen, 32)
    preview, _ = next(digit_batches(torch.Generator().manual_seed(5), 32))
    noise_gen = torch.Generator().manual_seed(6415)
    for step in range(220):
        clean, _ = next(batches)
        clean = clean.reshape(-1, 1, 8, 8)
        noisy = clean + 0.3 * torch.randn(clean.shape, generator=noise_gen)
        with torch.autocast("cpu", dtype=torch.float16):
            with torch.no_grad():
                feat(clean)
                target = dict(store)
                if step == 170:  # the preview callback: runs the net and overwrites the store
                    feat(1.0 - preview.reshape(-1, 1, 8, 8).flip(0))
                    target = dict(store)
            out = model(noisy)
            feat(out)
            loss = F.mse_loss(out.float(), clean) + 10.0 * sum(
                F.mse_loss(store[k].float(), target[k].float()) for k in ("conv1", "conv2")
            )
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.losses[160:170])[5]
    after = sum(ctx.losses[180:190]) / 10
    ctx.check("loss jumped 4x at 170", ctx.losses[170] > 4 * before)
    ctx.check("back to normal within 10 steps", after < 1.3 * before)


# -- a layer-freezing schedule: the unfreeze skips the warm-up -----------------------------------


class TrunkHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(64, 128),
            nn.Tanh(),
            nn.Linear(128, 128),
            nn.Tanh(),
            nn.Linear(128, 64),
            nn.Tanh(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@scenario(
    "h64_gradual_unfreeze_schedule",
    "rmsprop",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="at the unfreeze the LR jumps from 5e-3 to the config's peak with no warm-up",
)
def h64_unfreeze_skips_warmup(ctx: Context) -> None:
    """A warm start: the (randomly initialised) trunk is kept frozen as a fixed feature map for
    100 steps while the head trains at 5e-3; at step 100 the
    schedule unfreezes it and sets every group's learning rate to ``cfg.peak_lr`` (0.05, the
    value the warm-up was meant to reach over 1000 steps) at once. RMSprop's steps at that
    rate are far beyond what the loss surface's curvature allows: the loss blows up."""
    gen = seeded(6416)
    model = TrunkHead()
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    opt = torch.optim.RMSprop(
        [{"params": model.trunk.parameters()}, {"params": model.head.parameters()}], lr=5e-3
    )

    def schedule(step: int) -> None:
        if step == 100:
            for p in model.trunk.parameters():
                p.requires_grad_(True)
            for group in opt.param_groups:
                group["lr"] = 0.05  # the bug: the peak, no warm-up

    fit(ctx, model, opt, digit_batches(gen), 200, before=schedule)
    before = min(ctx.losses[80:100])
    ctx.check("the head trained on the frozen trunk", before < 0.7 * ctx.losses[0])
    ctx.check(
        "after the unfreeze the loss blew past 3x its best (or went non-finite)",
        any(not _finite(v) or v > 3 * before for v in ctx.losses[100:140]),
    )
