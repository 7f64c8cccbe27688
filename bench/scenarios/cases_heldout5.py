"""Held-out scenarios, fifth set (``h5_``): families none of the other sets has.

Families: Hugging Face Mistral, OPT and T5 (a small encoder-decoder) built from configs, a
Hugging Face RoBERTa sequence classifier from a config, an MLP-Mixer on digit patches, a
ConvNeXt-style CNN (depthwise conv + LayerNorm + GELU, functional ``F.gelu``), a MobileNet-style
depthwise-separable CNN with BatchNorm and ReLU6, and a DenseNet-style CNN that concatenates.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax and
``steadygrad.optim.Lion``.

Written without reading ``steadygrad/diagnose/`` (beyond the causes' docstrings) or
``steadygrad/monitor/``, and never run on steadygrad while it was written: each scenario was
adjusted with a stand-in context that attaches nothing, only until its own checks held (or, for
a healthy control, until it trained normally).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- model families -------------------------------------------------------------------------------


def hf_mistral(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_dropout=0.0,
        sliding_window=None,
    )
    config._attn_implementation = "eager"
    return MistralForCausalLM(config)


def hf_opt(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=dim,
        ffn_dim=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=64,
        word_embed_proj_dim=dim,
        dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return OPTForCausalLM(config)


def hf_t5(vocab: int = 64, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=dim // heads,
        d_ff=2 * dim,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def hf_roberta(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, labels: int = 2):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * dim,
        max_position_embeddings=40,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(config)


def lm_batches(gen: torch.Generator, batch: int = 16, length: int = 24, vocab: int = 128):
    """Causal-LM batches (input ids, input ids): the HF model shifts the labels itself."""
    for x, _ in text_batches(gen, batch, length, vocab):
        yield x, x


def hf_lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def shifted_lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return lm_loss(logits[:, :-1], ids[:, 1:])


def reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 64):
    """Seq2seq: reverse a sequence of tokens 2..vocab-1 (0 starts the decoder, 1 is EOS)."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        yield src, src.flip(1)


def t5_forward(m: nn.Module, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return m(input_ids=src, labels=tgt).logits


def count_batches(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 128):
    """Is token 5 more frequent than token 6? (token 0 starts each sequence, as RoBERTa's)."""
    while True:
        x = torch.randint(7, vocab, (batch, length), generator=gen)
        r = torch.rand(batch, length, generator=gen)
        x = torch.where(r < 0.2, 5, torch.where(r < 0.4, 6, x))
        x[:, 0] = 0
        y = ((x == 5).sum(1) > (x == 6).sum(1)).long()
        yield x, y


class Standardize(nn.Module):
    """Per-image standardisation (zero mean, unit spread), as a preprocessing module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) / x.std(dim=1, keepdim=True)


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens)
        )
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class Mixer(nn.Module):
    """MLP-Mixer on the sixteen 2x2 patches of an 8x8 digit."""

    def __init__(self, dim: int = 32, depth: int = 2, out: int = 10, standardize: bool = False):
        super().__init__()
        self.standardize = Standardize() if standardize else nn.Identity()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.Sequential(*(MixerBlock(16, dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.norm(self.blocks(self.embed(p)))
        return self.head(h.mean(1))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem, depthwise-conv blocks with channels-last LayerNorm and GELU, pooled head."""

    def __init__(self, dim: int = 24, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 2, stride=2)
        self.stem_norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.reshape(-1, 1, 8, 8))
        h = self.stem_norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = self.blocks(h)
        return self.head(self.head_norm(h.mean((2, 3))))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, padding=1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.act_dw = nn.ReLU6()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(cout)
        self.act_pw = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_pw(self.bn_pw(self.pw(self.act_dw(self.bn_dw(self.dw(x))))))


class MobileNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            DepthwiseSeparable(width, 2 * width),
            DepthwiseSeparable(2 * width, 4 * width, stride=2),
            DepthwiseSeparable(4 * width, 4 * width),
        )
        self.classifier = nn.Linear(4 * width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x.reshape(-1, 1, 8, 8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin) if norm else nn.Identity()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class DenseNet(nn.Module):
    """Two dense blocks (each layer's output concatenated to its input) and a 1x1 transition."""

    def __init__(self, growth: int = 8, layers: int = 3, norm: bool = True, classes: int = 10):
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.block1 = nn.Sequential(
            *(DenseLayer(c + i * growth, growth, norm) for i in range(layers))
        )
        c += layers * growth
        self.trans1 = nn.Conv2d(c, c // 2, 1)
        c //= 2
        self.block2 = nn.Sequential(
            *(DenseLayer(c + i * growth, growth, norm) for i in range(layers))
        )
        c += layers * growth
        self.head = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(self.stem(x.reshape(-1, 1, 8, 8)))
        h = self.block2(F.avg_pool2d(self.trans1(h), 2))
        return self.head(F.relu(h).mean((2, 3)))


def _fixed(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- attention-logit growth -----------------------------------------------------------------------


def _max_qk_logit(model: nn.Module, x: torch.Tensor, layer: int) -> float:
    """Largest |q.k|/sqrt(d) of a Mistral layer's heads on ``x`` (before RoPE, which keeps
    the norms of q and k, so this is the logit scale)."""
    attn = model.model.layers[layer].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    b, t, _ = seen["q"].shape
    d = attn.head_dim
    q = seen["q"].reshape(b, t, -1, d)
    k = seen["k"].reshape(b, t, -1, d).expand_as(q)
    return float((torch.einsum("bthd,bshd->bhts", q, k) / d**0.5).abs().max())


@scenario(
    "hf_mistral",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections get 30x the LR and no weight decay",
)
def h5_attn_logit_growth_mistral(ctx: Context) -> None:
    """A fine-tuning recipe gives the query/key projections their own group ("attention learns
    slowly") with 30x the learning rate and no weight decay, on a small corpus seen over and
    over: q and k grow together and the attention logits with them."""
    gen = seeded(501)
    model = hf_mistral()
    qk = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
    rest = [
        p for n, p in model.named_parameters() if not n.endswith(("q_proj.weight", "k_proj.weight"))
    ]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}], lr=1e-3
    )
    corpus = [next(lm_batches(gen, 8)) for _ in range(4)]
    probe = corpus[0][0]
    start = [_max_qk_logit(model, probe, i) for i in (0, 1)]

    def batches():
        while True:
            yield from corpus

    fit(
        ctx,
        model,
        opt,
        batches(),
        300,
        loss_fn=shifted_lm_loss,
        forward=hf_lm_forward,
        classifier=False,
    )
    end = [_max_qk_logit(model, probe, i) for i in (0, 1)]
    grown = min(e / s for e, s in zip(end, start, strict=True))
    ctx.check("attention logits of both layers grew 10x", grown > 10)
    ctx.check("max attention logit above 30", max(end) > 30)


# -- output-logit divergence ----------------------------------------------------------------------


@scenario(
    "hf_opt",
    "rmsprop",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=50,
    note="z-loss added with the wrong sign",
)
def h5_output_logits_opt_rmsprop(ctx: Context) -> None:
    """A z-loss (1e-2 * logsumexp(logits)**2, meant to keep the output logits near
    zero) is switched on at step 50 with its sign flipped: it rewards large logits, and the
    LM head's logits grow step after step; the cross-entropy holds for ~100 steps, then
    climbs as the logits run away."""
    gen = seeded(502)
    model = hf_opt()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = hf_lm_forward(m, x)
        return last["logits"]

    def z_loss_bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 50:
            return loss
        z = torch.logsumexp(last["logits"].float(), dim=-1)
        return loss - 1e-2 * (z**2).mean()  # meant: + 1e-2 * ...

    probe, _ = next(lm_batches(gen))
    logit_max: dict[int, float] = {}

    def track(step: int) -> None:
        if step in (50, 299):
            with torch.no_grad():
                logit_max[step] = float(hf_lm_forward(model, probe).abs().max())

    fit(
        ctx,
        model,
        opt,
        lm_batches(gen),
        300,
        loss_fn=shifted_lm_loss,
        forward=forward,
        classifier=False,
        extra_loss=z_loss_bug,
        before=track,
    )
    ctx.check("max |logit| grew 10x after step 50", logit_max[299] > 10 * logit_max[50])


# -- Adam's second moment poisoned ------------------------------------------------------------------


@scenario(
    "hf_opt",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="one batch's loss summed instead of averaged",
)
def h5_adam_poisoned_opt(ctx: Context) -> None:
    """At step 80 one batch goes through an evaluation helper that sums the token losses
    (reduction="sum", 16x23 tokens) and is backpropagated by mistake: the gradient is ~400x
    too large for one step, Adam's second moment keeps its square for ~1000 steps and the
    updates afterwards are much too small."""
    gen = seeded(503)
    model = hf_opt()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = 16 * 23

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * tokens if step == 80 else loss

    snaps: dict[int, torch.Tensor] = {}

    def track(step: int) -> None:
        if step in (40, 70, 130, 160):
            snaps[step] = _flat(model)

    fit(
        ctx,
        model,
        opt,
        lm_batches(gen),
        200,
        loss_fn=shifted_lm_loss,
        forward=hf_lm_forward,
        classifier=False,
        extra_loss=bug,
        before=track,
    )
    before = float((snaps[70] - snaps[40]).norm())
    after = float((snaps[160] - snaps[130]).norm())
    ctx.check("updates shrank 3x after the sum", after < before / 3)


# -- softmax collapse -----------------------------------------------------------------------------


@scenario(
    "hf_roberta",
    "adam",
    "softmax_collapse",
    where="classifier.out_proj",
    diverges=None,
    heldout=True,
    note="temperature 0.05 where 20 was meant",
)
def h5_softmax_collapse_roberta(ctx: Context) -> None:
    """A RoBERTa classifier fine-tuned on a small fixed set of 64 sequences with its logits
    divided by a temperature of 0.05 (the config meant to multiply by 0.05): the float32
    softmax of most training rows rounds to exactly one-hot and their gradient to zero."""
    gen = seeded(504)
    model = hf_roberta()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = next(count_batches(gen, 64))

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x).logits / 0.05

    fit(ctx, model, opt, _fixed(x, y), 200, forward=forward)
    with torch.no_grad():
        share = collapsed_fraction(forward(model, x), y)
    ctx.check("half the rows collapsed", share > 0.5)


# -- a frozen layer -------------------------------------------------------------------------------


@scenario(
    "hf_roberta",
    "radam",
    "update_ratio_out_of_range",
    where="classifier.out_proj",
    diverges=None,
    heldout=True,
    note="head replaced after the optimizer was built",
)
def h5_frozen_new_head_roberta(ctx: Context) -> None:
    """The classification head's output layer is replaced by a fresh one for the task *after*
    the optimizer was built: the new layer gets gradients every step but is in no parameter
    group, so it never moves (the rest of the model adapts around a random head)."""
    gen = seeded(505)
    model = hf_roberta()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    model.classifier.out_proj = nn.Linear(model.config.hidden_size, 2)
    before = model.classifier.out_proj.weight.detach().clone()
    fit(ctx, model, opt, count_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
    ctx.check("new head unchanged", torch.equal(before, model.classifier.out_proj.weight))
    ctx.check("new head had gradients", model.classifier.out_proj.weight.grad is not None)


# -- learning rate above the stability limit -----------------------------------------------------


@scenario(
    "convnext",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up to a peak LR 10x too high",
)
def h5_warmup_overshoot_convnext(ctx: Context) -> None:
    """Linear warm-up over 300 steps to a peak LR of 1.0 (the recipe's 0.1 with a digit
    slipped), SGD with Nesterov momentum: training goes well while the LR is small, then the
    step size passes the stability limit partway up the ramp and the loss blows up."""
    gen = seeded(506)
    model = ConvNeXt()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 * min(1.0, (step + 1) / 300)

    fit(ctx, model, opt, digit_batches(gen), 300, before=warmup)
    ctx.check("learning before the break", sorted(ctx.losses[60:100])[20] < 0.9 * ctx.losses[0])


@scenario(
    "hf_t5",
    "adamax",
    "sharpness_above_limit",
    diverges=200,
    heldout=True,
    onset=200,
    note="resumed with the LR 30x too high",
)
def h5_lr_raised_midrun_t5(ctx: Context) -> None:
    """A small T5 learning to reverse sequences with Adamax; the run is resumed at step 200
    with a scheduler state that was not restored, and the LR jumps from 1e-2 to 0.3: the
    next steps throw the model back to chance and it stays there."""
    gen = seeded(507)
    model = hf_t5()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)

    def resume(step: int) -> None:
        if step == 200:
            opt.param_groups[0]["lr"] = 0.3

    fit(
        ctx,
        model,
        opt,
        _pairs(reverse_batches(gen)),
        300,
        loss_fn=lm_loss,
        forward=lambda m, b: t5_forward(m, *b),
        classifier=False,
        before=resume,
    )
    chance = math.log(62)  # targets are tokens 2..63
    ctx.check("learning before 200", sorted(ctx.losses[190:200])[5] < 0.75 * chance)
    ctx.check("back at chance after 200", sorted(ctx.losses[220:300])[40] > 0.95 * chance)


def _pairs(batches):
    """(src, tgt) -> ((src, tgt), tgt): the model needs the targets to build decoder inputs."""
    for src, tgt in batches:
        yield (src, tgt), tgt


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "densenet",
    "sgd_mom",
    "exploding_gradients",
    where="trans1",
    diverges="auto",
    heldout=True,
    onset=100,
    note="norm-free DenseNet, a weight-scale hook left running on trans1",
)
def h5_exploding_trans1_densenet(ctx: Context) -> None:
    """A norm-free DenseNet (BatchNorm removed for small batches) whose transition conv gets a
    "weight-scale warm-up" hook meant to run for 10 steps; a wrong condition leaves it on from
    step 100 and it multiplies trans1's weights by 1.03 every step. Everything after trans1
    grows, and the gradients flowing back through it into block1 and the stem with it."""
    gen = seeded(508)
    model = DenseNet(norm=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    grads: dict[int, float] = {}

    def hook(step: int) -> None:
        if step >= 100:
            with torch.no_grad():
                model.trans1.weight.mul_(1.03)

    def stem_grad(step: int, loss: torch.Tensor) -> torch.Tensor:
        loss.backward(retain_graph=True)
        grads[step] = float(model.stem.weight.grad.norm())
        model.zero_grad(set_to_none=True)
        return loss

    fit(ctx, model, opt, digit_batches(gen), 300, before=hook, extra_loss=stem_grad)
    early = sorted(grads[s] for s in range(80, 100))[10]
    late = max(v for s, v in grads.items() if s >= 100 and math.isfinite(v))
    ctx.check("stem's gradient grew 100x after step 100", late > 100 * early)


# -- dead units -----------------------------------------------------------------------------------


@scenario(
    "mobilenet",
    "sgd_mom",
    "loss_of_plasticity",
    where=("blocks.1.bn_pw", "blocks.1.act_pw"),
    diverges=None,
    heldout=True,
    note="zero-init of a BN's gamma meant for residual blocks",
)
def h5_dead_zero_gamma_mobilenet(ctx: Context) -> None:
    """The "zero-init the last BatchNorm's gamma" trick (meant for residual blocks, where the
    skip carries the signal) applied to half the channels of a plain MobileNet block: with
    gamma = beta = 0 those channels output exactly 0, ReLU6 passes no gradient at 0, and
    they never come back; the network trains on half its width."""
    gen = seeded(509)
    model = MobileNet()
    with torch.no_grad():
        half = model.blocks[1].bn_pw.num_features // 2
        model.blocks[1].bn_pw.weight[:half] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(ctx, model, opt, digit_batches(gen, 32), 200)
    x, _ = next(digit_batches(gen, 256))
    model.eval()
    with torch.no_grad():
        h = model.blocks[1](model.blocks[0](model.stem(x.reshape(-1, 1, 8, 8))))
    model.train()
    share = dead_fraction(h)
    ctx.check("half of blocks.1's channels dead", share >= 0.5)


# -- AMP overflow ---------------------------------------------------------------------------------


@scenario("mobilenet", "sgd", "amp_overflow", diverges=None, heldout=True)
def h5_amp_overflow_mobilenet(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**30 that grows every 25 steps: it
    overflows, skips those steps and backs off, again and again; training is fine."""
    gen = seeded(510)
    model = MobileNet(width=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(ctx, model, opt, digit_batches(gen, 32), 160, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss stayed finite and fell", ctx.losses[-1] < ctx.losses[0])


# -- a data outlier -------------------------------------------------------------------------------


@scenario(
    "convnext",
    "nadam",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch paired with the wrong labels",
)
def h5_outlier_mislabelled_batch_convnext(ctx: Context) -> None:
    """At step 150 one batch's labels come out of the loader shifted by one sample (an
    off-by-one in a hand-written collate): every image is paired with its neighbour's label,
    the loss spikes on that step and the run gets over it. (Rescaling the pixels would not
    do: the stem's LayerNorm undoes any scale.)"""
    gen = seeded(511)
    model = ConvNeXt()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x, y.roll(1)) if step == 150 else (x, y)

    fit(ctx, model, opt, digit_batches(gen), 260, alter=alter)
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))
    ctx.check("recovered", sorted(ctx.losses[-20:])[10] < 2 * sorted(ctx.losses[130:150])[10])


# -- a NaN from one module on one bad sample -------------------------------------------------------


@scenario(
    "mixer",
    "adagrad",
    "nonfinite",
    where="standardize",
    diverges=170,
    heldout=True,
    onset=170,
    note="a blank image: per-image std 0",
)
def h5_nan_blank_image_mixer(ctx: Context) -> None:
    """An MLP-Mixer that standardises each image first ((x - mean) / std, no epsilon); at
    step 170 one image in the batch is blank (an unreadable file decoded as zeros): its std
    is 0, 0/0 gives NaN, and the NaN goes everywhere from there."""
    gen = seeded(512)
    model = Mixer(standardize=True)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 200, alter=alter)
    finite = [v == v and abs(v) != float("inf") for v in ctx.losses]
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])


# -- slow divergence ------------------------------------------------------------------------------


def _digit_value_batches(gen: torch.Generator, batch: int = 64):
    """Digits as a regression: predict the digit's value, standardised (MSE)."""
    for x, y in digit_batches(gen, batch):
        yield x, ((y.float() - 4.5) / 2.9)[:, None]


@scenario(
    "mixer",
    "adam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="hand-written weight decay with its sign flipped",
)
def h5_slow_divergence_decay_sign_mixer(ctx: Context) -> None:
    """An MLP-Mixer regressing the digit's value (MSE) with a hand-written weight decay that is
    switched on at step 100 with its sign flipped (``w *= 1 + decay`` where ``1 - decay`` was
    meant): the LayerNorms hide the growth inside the blocks, but the head grows 1% a step,
    faster than Adam pulls it back, and the loss creeps up over the next ~100 steps."""
    gen = seeded(513)
    model = Mixer(out=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def decay_bug(step: int) -> None:
        if step >= 100:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("weight"):
                        p.mul_(1 + 0.01)  # meant: 1 - 0.01

    fit(
        ctx,
        model,
        opt,
        _digit_value_batches(gen),
        340,
        loss_fn=F.mse_loss,
        classifier=False,
        before=decay_bug,
    )
    ctx.check("loss fell before 100", sorted(ctx.losses[90:100])[5] < 0.7 * ctx.losses[0])


# -- healthy controls -----------------------------------------------------------------------------


@scenario("hf_mistral", "adamw", "healthy", heldout=True)
def h5_healthy_mistral_adamw(ctx: Context) -> None:
    gen = seeded(521)
    model = hf_mistral()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    fit(
        ctx,
        model,
        opt,
        lm_batches(gen),
        250,
        loss_fn=shifted_lm_loss,
        forward=hf_lm_forward,
        classifier=False,
    )


@scenario("densenet", "nesterov", "healthy", heldout=True)
def h5_healthy_densenet_nesterov(ctx: Context) -> None:
    gen = seeded(522)
    model = DenseNet(norm=True)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    fit(ctx, model, opt, digit_batches(gen, 32), 200)


@scenario("mobilenet", "sg_lion", "healthy", heldout=True)
def h5_healthy_mobilenet_lion(ctx: Context) -> None:
    gen = seeded(523)
    model = MobileNet()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, digit_batches(gen, 32), 200)


@scenario("hf_t5", "adagrad", "healthy", heldout=True)
def h5_healthy_t5_adagrad(ctx: Context) -> None:
    gen = seeded(524)
    model = hf_t5()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    fit(
        ctx,
        model,
        opt,
        _pairs(reverse_batches(gen)),
        250,
        loss_fn=lm_loss,
        forward=lambda m, b: t5_forward(m, *b),
        classifier=False,
    )
