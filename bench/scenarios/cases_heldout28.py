"""Held-out scenarios, set 28 (``h28_``): families none of the other case files use.

Families: Hugging Face Qwen3-MoE causal LM, LongT5 encoder-decoder (transient-global attention),
ConvNeXt (v1) image classifier, YOSO encoder classifier and TimeSformer video classifier (tiny
generated clips), all built from configs; IndRNN sequence classifier (digits read pixel by
pixel), RotatE knowledge-graph embeddings on a generated graph, ResNeXt-style grouped-convolution
CNN with BatchNorm, Wasserstein autoencoder (MMD penalty, digits), N-HiTS forecaster on generated
series, universal transformer with adaptive computation time, MMoE multi-task recommender on
generated clicks (fp16 autocast).
Optimizers: SGD, SGD with momentum and Nesterov, Adam, AdamW, Adafactor, RMSprop, Adamax,
NAdam, RAdam, Adagrad and steadygrad.optim's Lion.

Written without reading ``steadygrad/diagnose/`` or ``steadygrad/monitor/`` and never run on
steadygrad while it was written: each scenario was adjusted with a stand-in context that
attaches nothing, only until its own checks held (a healthy control: until it trained normally).
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
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs -------------------------------------------------------------


def _qwen3_moe(vocab: int = 64):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return Qwen3MoeForCausalLM(config)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


@scenario(
    "hf_qwen3_moe_lm",
    "adamw",
    "attention_logit_growth",
    where=(
        "model.layers.0.self_attn",
        "model.layers.1.self_attn",
        "model.layers.0.self_attn.q_norm",
        "model.layers.0.self_attn.k_norm",
        "model.layers.1.self_attn.q_norm",
        "model.layers.1.self_attn.k_norm",
    ),
    diverges=None,
    onset=40,
    heldout=True,
)
def h28_attn_growth_qwen3_moe_qknorm_gain(ctx: Context) -> None:
    """A "QK-norm gain warm-up" meant to raise the q_norm / k_norm gains by 2% a step up to
    1.5x never stops (its stop test compares a stale copy of the gains): from step 40 the
    attention logits grow ~4% a step, the heads turn one-hot (the loss has not broken by the end)."""
    gen = seeded(2801)
    model = _qwen3_moe()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gains = [
        p for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))
    ]
    start = [g.detach().clone() for g in gains]

    def warm_up(step: int) -> None:
        if step >= 40 and all(float(s.mean()) < 1.5 for s in start):  # `start` never changes
            with torch.no_grad():
                for g in gains:
                    g.mul_(1.02)

    logits_at = {}

    def attn_logit_max() -> float:
        x, _ = next(text_batches(torch.Generator().manual_seed(0), 8, 24, 64))
        qs, ks = [], []
        hooks = [
            model.model.layers[0].self_attn.q_norm.register_forward_hook(
                lambda m, i, o: qs.append(o)
            ),
            model.model.layers[0].self_attn.k_norm.register_forward_hook(
                lambda m, i, o: ks.append(o)
            ),
        ]
        with torch.no_grad():
            model(input_ids=x)
        for h in hooks:
            h.remove()
        q, k = qs[0].transpose(1, 2), ks[0].transpose(1, 2)  # (b, heads, t, d)
        k = k.expand(-1, q.shape[1], -1, -1)
        return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(q.shape[-1]))

    def before(step: int) -> None:
        if step in (30, 250):
            logits_at[step] = attn_logit_max()
        warm_up(step)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 24, 64),
        260,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=before,
    )
    ctx.check("attention logits grew 20x", logits_at[250] > 20 * logits_at[30])


@scenario("hf_qwen3_moe_lm", "adamw", "healthy", heldout=True, note="linear warm-up, cosine")
def h28_healthy_qwen3_moe_adamw(ctx: Context) -> None:
    gen = seeded(2802)
    model = _qwen3_moe()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 20)
        opt.param_groups[0]["lr"] = 3e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / 220))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 24, 64),
        220,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
        before=schedule,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


def _reverse_pairs(gen: torch.Generator, batch: int = 16, length: int = 16, vocab: int = 64):
    """Source: random tokens; target: the first half reversed (decoder input shifted right)."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src[:, : length // 2].flip(1).contiguous()
        dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec), tgt


@scenario(
    "hf_longt5_seq2seq",
    "adafactor",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=50,
    heldout=True,
)
def h28_output_logits_longt5_zloss_sign(ctx: Context) -> None:
    """An auxiliary z-loss (1e-2 * log Z^2, to keep the decoder's logits near zero) is added
    from step 50 with its sign flipped: it rewards a large log-partition, and the output
    logits grow while the cross-entropy at first barely notices (softmax ignores a common
    shift); ~150 steps later the runaway logits break it and the loss climbs."""
    from transformers import LongT5Config, LongT5ForConditionalGeneration

    gen = seeded(2803)
    config = LongT5Config(
        vocab_size=64,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        local_radius=4,
        global_block_size=4,
        encoder_attention_type="transient-global",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = LongT5ForConditionalGeneration(config)
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    last = {}

    def forward(m: nn.Module, x) -> torch.Tensor:
        logits = m(input_ids=x[0], decoder_input_ids=x[1]).logits
        last["logits"] = logits
        return logits

    def z_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 50:
            return loss
        log_z = torch.logsumexp(last["logits"].float(), -1)
        return loss - 1e-2 * (log_z**2).mean()  # meant: + 1e-2 * ...

    peak = []

    def watch(step: int) -> None:
        if step in (45, 299):
            peak.append(float(last["logits"].detach().abs().max()))

    fit(
        ctx,
        model,
        opt,
        _reverse_pairs(gen),
        300,
        loss_fn=lm_loss,
        forward=forward,
        classifier=False,
        extra_loss=z_loss,
        before=watch,
    )
    ctx.check("output logits grew 10x", peak[1] > 10 * peak[0])


# -- ConvNeXt (v1) image classifier -------------------------------------------------------------


def _convnext(classes: int = 10):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_channels=1,
        patch_size=2,
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=classes,
        drop_path_rate=0.0,
    )
    return ConvNextForImageClassification(config)


def _image_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # normalised like an image processor would (digits: mean ~0.3, std ~0.4)
    return m(pixel_values=((x - 0.3) / 0.4).reshape(-1, 1, 8, 8)).logits


@scenario(
    "hf_convnext_v1_image",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    note="warm-up to a peak LR 10x too high",
    heldout=True,
)
def h28_lr_warmup_overshoot_convnext_nesterov(ctx: Context) -> None:
    """A linear warm-up to a peak learning rate of 4.0 (the recipe's 0.4, a digit slipped)
    with Nesterov momentum: the run trains while the rate is small, then breaks as the rate
    passes the stability limit part-way through the warm-up."""
    gen = seeded(2804)
    model = _convnext()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warm_up(step: int) -> None:
        opt.param_groups[0]["lr"] = 2.0 * min(1.0, (step + 1) / 300)

    fit(ctx, model, opt, digit_batches(gen, 48), 200, forward=_image_forward, before=warm_up)
    ctx.check("learnt early", min(ctx.losses[20:60]) < 0.7 * ctx.losses[0])


# -- YOSO encoder classifier ---------------------------------------------------------------------


def _yoso():
    from transformers import YosoConfig, YosoForSequenceClassification

    config = YosoConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_expectation=True,
        use_fast_hash=False,
        conv_window=None,
    )
    return YosoForSequenceClassification(config)


_YOSO_LAYER1 = (
    "yoso.encoder.layer.1.attention.self.query",
    "yoso.encoder.layer.1.attention.self.key",
    "yoso.encoder.layer.1.attention.self.value",
    "yoso.encoder.layer.1.attention.output.dense",
    "yoso.encoder.layer.1.intermediate.dense",
    "yoso.encoder.layer.1.output.dense",
    "yoso.encoder.layer.1",
)


@scenario(
    "hf_yoso_encoder",
    "rmsprop",
    "update_ratio_out_of_range",
    where=_YOSO_LAYER1,
    diverges=None,
    heldout=True,
)
def h28_frozen_layer_yoso_rmsprop(ctx: Context) -> None:
    """Layer-wise learning rates looked up in a dict keyed "layer_0", "layer1" (a typo), with
    a default of 0.0: encoder layer 1 never moves while the rest trains."""
    gen = seeded(2805)
    model = _yoso()
    scale = {"layer_0": 0.7, "layer1": 1.0}
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        key = "layer_1" if ".layer.1." in name else "layer_0" if ".layer.0." in name else "rest"
        groups.setdefault(key, []).append(p)
    opt = torch.optim.RMSprop(
        [
            {"params": ps, "lr": 1e-3 * (1.0 if k == "rest" else scale.get(k, 0.0))}
            for k, ps in groups.items()
        ],
        lr=1e-3,
    )
    before = model.yoso.encoder.layer[1].output.dense.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
    ctx.check(
        "layer 1 unchanged", torch.equal(before, model.yoso.encoder.layer[1].output.dense.weight)
    )
    ctx.check("the rest learnt", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- TimeSformer video classifier on tiny generated clips ----------------------------------------


def _moving_dot_clips(gen: torch.Generator, batch: int = 24, frames: int = 4):
    """8x8 clips of a 2x2 bright square moving one pixel a frame; label: its direction."""
    moves = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        start = torch.randint(2, 5, (batch, 2), generator=gen)
        x = 0.1 * torch.randn(batch, frames, 1, 8, 8, generator=gen)
        for b in range(batch):
            for f in range(frames):
                r, c = (start[b] + f * moves[y[b]]).tolist()
                x[b, f, 0, r - 1 : r + 1, c - 1 : c + 1] += 1.0
        yield x, y


def _timesformer():
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0,
    )
    return TimesformerForVideoClassification(config)


@scenario("hf_timesformer_video", "adamax", "data_outlier", diverges=150, onset=150, heldout=True)
def h28_outlier_timesformer_adamax(ctx: Context) -> None:
    """At step 150 the whole batch comes from a corrupt shard: its clips are decoder garbage
    (uniform 0..255 noise instead of normalised frames), with the shard's labels."""
    gen = seeded(2806)
    model = _timesformer()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = 255.0 * torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
        return x, y

    fit(
        ctx,
        model,
        opt,
        _moving_dot_clips(gen),
        210,
        forward=lambda m, x: m(pixel_values=x).logits,
        alter=alter,
    )
    ctx.check("learnt before", min(ctx.losses[130:150]) < 0.5 * ctx.losses[0])
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))


# -- IndRNN ---------------------------------------------------------------------------------------


class IndRNNLayer(nn.Module):
    """h_t = relu(W x_t + u * h_{t-1} + b): each unit recurs only on itself (Li et al. 2018)."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(inputs, hidden)
        self.u = nn.Parameter(torch.rand(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.inp(x)
        h = torch.zeros_like(pre[:, 0])
        out = []
        for t in range(pre.shape[1]):
            h = F.relu(pre[:, t] + self.u * h)
            out.append(h)
        return torch.stack(out, 1)


class IndRNN(nn.Module):
    """Two IndRNN layers over a digit read as 16 steps of 4 pixels, linear head."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn1 = IndRNNLayer(4, hidden)
        self.rnn2 = IndRNNLayer(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rnn2(self.rnn1(x.reshape(-1, 16, 4)))
        return self.head(h[:, -1])


@scenario(
    "indrnn_sequence",
    "sgd_mom",
    "exploding_gradients",
    where=("rnn1", "rnn2"),
    diverges="auto",
    onset=40,
    heldout=True,
)
def h28_exploding_indrnn_recurrent_nudge(ctx: Context) -> None:
    """IndRNN wants |u| <= 2^(1/T) (~1.04 for T = 16). The user's constraint step, meant to
    clip u into that range, instead nudges it 0.8% a step "towards the edge of chaos" from
    step 40: units with u past 1 compound over 16 steps and the gradient grows until the
    run blows up."""
    gen = seeded(2807)
    model = IndRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def nudge(step: int) -> None:
        if step >= 40:
            with torch.no_grad():
                model.rnn1.u.mul_(1.008)
                model.rnn2.u.mul_(1.008)

    fit(ctx, model, opt, digit_batches(gen, 32), 400, before=nudge)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("learnt before the nudge bit", min(ctx.losses[60:140]) < 0.9 * ctx.losses[0])
    ctx.check("gradient grew 100x", max(g) > 100 * (sum(g[20:40]) / 20))


# -- RotatE knowledge-graph embeddings -----------------------------------------------------------


class RotatE(nn.Module):
    """Entities as complex vectors, relations as rotations; score gamma - |h * r - t|."""

    def __init__(self, entities: int, relations: int, dim: int = 16, gamma: float = 6.0):
        super().__init__()
        self.entity = nn.Embedding(entities, 2 * dim)
        self.relation = nn.Embedding(relations, dim)
        nn.init.uniform_(self.entity.weight, -0.5, 0.5)
        nn.init.uniform_(self.relation.weight, -math.pi, math.pi)
        self.gamma = gamma

    def forward(self, triples: torch.Tensor) -> torch.Tensor:
        """``triples``: (batch, 3 + negatives) = head, relation, tail, negative tails."""
        h_re, h_im = self.entity(triples[:, 0]).chunk(2, -1)
        phase = self.relation(triples[:, 1])
        r_re, r_im = torch.cos(phase), torch.sin(phase)
        rot_re, rot_im = h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re
        t_re, t_im = self.entity(triples[:, 2:]).chunk(2, -1)
        d = torch.sqrt((rot_re[:, None] - t_re) ** 2 + (rot_im[:, None] - t_im) ** 2 + 1e-9)
        return self.gamma - d.sum(-1)  # (batch, 1 + negatives)


def _rotate_loss(scores: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    return -(F.logsigmoid(scores[:, 0]).mean() + F.logsigmoid(-scores[:, 1:]).mean()) / 2


def _kg_batches(gen: torch.Generator, entities: int = 60, batch: int = 64, negatives: int = 8):
    """A generated graph: relation r links entity e to (e * (r + 2) + r) mod entities."""
    while True:
        h = torch.randint(0, entities, (batch,), generator=gen)
        r = torch.randint(0, 3, (batch,), generator=gen)
        t = (h * (r + 2) + r) % entities
        neg = torch.randint(0, entities, (batch, negatives), generator=gen)
        yield torch.cat([h[:, None], r[:, None], t[:, None], neg], 1), torch.zeros(batch)


@scenario(
    "rotate_kg_embedding",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=80,
    heldout=True,
)
def h28_adam_poisoned_rotate(ctx: Context) -> None:
    """Gradient accumulation divides the loss by the accumulation count, which for one step
    (a resumed run, the counter not restored) is 1e-3: that step's gradient is 1000x; once its
    momentum has decayed, Adam's v still holds it and the updates are far too small."""
    gen = seeded(2808)
    model = RotatE(60, 3)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss / 1e-3 if step == 80 else loss

    moved = []

    def track(step: int) -> None:
        if step in (40, 70, 150, 180):
            moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    fit(
        ctx,
        model,
        opt,
        _kg_batches(gen),
        240,
        loss_fn=_rotate_loss,
        classifier=False,
        extra_loss=bug,
        before=track,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


@scenario("rotate_kg_embedding", "adagrad", "healthy", heldout=True)
def h28_healthy_rotate_adagrad(ctx: Context) -> None:
    gen = seeded(2809)
    model = RotatE(60, 3)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(ctx, model, opt, _kg_batches(gen), 240, loss_fn=_rotate_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- ResNeXt-style grouped-convolution CNN -------------------------------------------------------


class ResNeXtBlock(nn.Module):
    """1x1 reduce, 3x3 grouped conv (cardinality 4), 1x1 expand, BatchNorm, residual add."""

    def __init__(self, cin: int, cout: int, width: int = 16, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + self.short(x))


class ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.block1 = ResNeXtBlock(16, 16)
        self.block2 = ResNeXtBlock(16, 32, stride=2)
        self.head = nn.Linear(32, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block1(F.relu(self.stem_bn(self.stem(x.reshape(-1, 1, 8, 8)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.features(x)).mean((2, 3)))


@scenario(
    "resnext_grouped_cnn",
    "sg_lion",
    "loss_of_plasticity",
    where=("block2.bn2", "block2.conv2"),
    diverges=None,
    onset=60,
    heldout=True,
)
def h28_dead_units_resnext_lion(ctx: Context) -> None:
    """A hand-written "shift penalty" meant to pull BatchNorm shifts toward zero is applied
    to block2.bn2 as a constant step with the wrong sign from step 60: its grouped-conv
    channels' ReLU dies channel by channel (a dead channel gets no gradient back) and the
    block is carried by its shortcut alone."""
    gen = seeded(2810)
    model = ResNeXt()
    opt = sgo.Lion(model.parameters(), lr=2e-3, fused=False)

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.block2.bn2.bias.sub_(0.1)

    fit(ctx, model, opt, digit_batches(gen, 48), 220, before=bug)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        b = model.block2
        h = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(model.features(x)))))))
    ctx.check("half of block2.bn2's channels dead", dead_fraction(h) >= 0.5)


@scenario("resnext_grouped_cnn", "sgd_mom", "healthy", heldout=True)
def h28_healthy_resnext_momentum(ctx: Context) -> None:
    gen = seeded(2811)
    model = ResNeXt()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(ctx, model, opt, digit_batches(gen, 48), 180)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.3 * sum(ctx.losses[:10]))


# -- Wasserstein autoencoder (MMD) ---------------------------------------------------------------


class Standardise(nn.Module):
    """Per-image standardisation: (x - mean) / std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / x.std(-1, keepdim=True)


class WAE(nn.Module):
    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.standardise = Standardise()
        self.enc = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, latent))
        self.dec = nn.Sequential(nn.Linear(latent, 96), nn.ReLU(), nn.Linear(96, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.enc(self.standardise(x))
        return torch.cat([torch.sigmoid(self.dec(z)), z], 1)


def _imq_mmd(z: torch.Tensor, prior: torch.Tensor, scale: float = 8.0) -> torch.Tensor:
    """MMD with the inverse multiquadratic kernel C / (C + |a - b|^2) (Tolstikhin et al.)."""

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return scale / (scale + torch.cdist(a, b).pow(2))

    n = z.shape[0]
    off = 1 - torch.eye(n)
    return ((k(z, z) + k(prior, prior)) * off).sum() / (n * (n - 1)) - 2 * k(z, prior).mean()


def _wae_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    recon, z = out[:, :64], out[:, 64:]
    return F.mse_loss(recon, x) + 1.0 * _imq_mmd(z, torch.randn_like(z))


def _autoencoder_batches(gen: torch.Generator, batch: int = 64):
    for x, _ in digit_batches(gen, batch):
        yield x, x


@scenario(
    "wae_mmd_autoencoder",
    "nadam",
    "nonfinite",
    where="standardise",
    diverges=160,
    onset=160,
    heldout=True,
)
def h28_nan_blank_image_wae_nadam(ctx: Context) -> None:
    """At step 160 one image of the batch is blank (all zeros, a dropped frame): its
    per-image standard deviation is 0 and the standardisation returns 0 / 0 = NaN."""
    gen = seeded(2812)
    model = WAE()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:
            x = x.clone()
            x[9] = 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _autoencoder_batches(gen),
        200,
        loss_fn=_wae_loss,
        classifier=False,
        alter=alter,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 160, not after", all(finite[:160]) and not finite[160])
    ctx.check("learnt before", ctx.losses[150] < 0.7 * ctx.losses[0])


# -- N-HiTS forecaster ---------------------------------------------------------------------------


class NHiTSBlock(nn.Module):
    """Max-pool the input, an MLP gives coarse backcast/forecast coefficients, interpolate up."""

    def __init__(self, lookback: int, horizon: int, pool: int, coarse: int, hidden: int = 64):
        super().__init__()
        self.pool, self.lookback, self.horizon = pool, lookback, horizon
        self.back_n, self.fore_n = max(lookback // coarse, 1), max(horizon // coarse, 1)
        self.mlp = nn.Sequential(
            nn.Linear(lookback // pool, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.back_n + self.fore_n),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.mlp(F.max_pool1d(x[:, None], self.pool)[:, 0])
        back, fore = theta[:, : self.back_n], theta[:, self.back_n :]
        up = lambda c, n: F.interpolate(c[:, None], size=n, mode="linear")[:, 0]  # noqa: E731
        return up(back, self.lookback), up(fore, self.horizon)


class NHiTS(nn.Module):
    def __init__(self, lookback: int = 48, horizon: int = 12) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            NHiTSBlock(lookback, horizon, pool, coarse) for pool, coarse in ((4, 6), (2, 3), (1, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forecast = 0.0
        for block in self.blocks:
            back, fore = block(x)
            x = x - back
            forecast = forecast + fore
        return forecast


def _series_batches(gen: torch.Generator, batch: int = 32, lookback: int = 48, horizon: int = 12):
    """Two seasonal components with random phase, a small trend and noise."""
    t = torch.arange(lookback + horizon, dtype=torch.float32)
    while True:
        phase = 2 * math.pi * torch.rand(batch, 2, generator=gen)
        amp = 0.5 + torch.rand(batch, 2, generator=gen)
        s = amp[:, :1] * torch.sin(2 * math.pi * t / 12 + phase[:, :1])
        s = s + 0.5 * amp[:, 1:] * torch.sin(2 * math.pi * t / 5 + phase[:, 1:])
        s = s + 0.01 * t * torch.randn(batch, 1, generator=gen)
        s = s + 0.1 * torch.randn(batch, len(t), generator=gen)
        yield s[:, :lookback], s[:, lookback:]


@scenario(
    "nhits_forecaster",
    "radam",
    "loss_divergence",
    diverges="auto",
    onset=80,
    note="weight decay sign bug",
    heldout=True,
)
def h28_slow_divergence_nhits_radam(ctx: Context) -> None:
    """Hand-written decoupled weight decay with its sign flipped from step 80 (a refactor
    turned ``p.mul_(1 - lr * wd)`` into ``p.mul_(1 + wd)``): every weight grows 0.5% a step,
    faster than RAdam pulls it back, and the forecast error creeps up."""
    gen = seeded(2813)
    model = NHiTS()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)

    def grow(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.005)

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        340,
        loss_fn=F.mse_loss,
        classifier=False,
        before=grow,
    )
    ctx.check("learnt first", min(ctx.losses[60:80]) < 0.6 * ctx.losses[0])


@scenario("nhits_forecaster", "adam", "healthy", heldout=True)
def h28_healthy_nhits_adam(ctx: Context) -> None:
    gen = seeded(2814)
    model = NHiTS()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _series_batches(gen), 250, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- universal transformer with adaptive computation time ----------------------------------------


class ACTUniversalTransformer(nn.Module):
    """One shared encoder layer applied up to ``max_steps`` times per position, each position
    halting on its own (Graves 2016; Dehghani et al. 2019); mean-pooled classifier."""

    def __init__(self, vocab: int = 128, dim: int = 32, max_steps: int = 4, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.step_emb = nn.Parameter(0.02 * torch.randn(max_steps, dim))
        self.layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.halt = nn.Linear(dim, 1)
        nn.init.constant_(self.halt.bias, -1.0)
        self.classifier = nn.Linear(dim, classes)
        self.max_steps = max_steps
        self.ponder = torch.zeros(())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        state = self.embed(idx) + self.pos[: idx.shape[1]]
        halted = torch.zeros(idx.shape)
        remainder = torch.zeros(idx.shape)
        updates = torch.zeros(idx.shape)
        out = torch.zeros_like(state)
        for s in range(self.max_steps):
            p = torch.sigmoid(self.halt(state)).squeeze(-1)
            running = (halted < 1.0).float()
            last = s == self.max_steps - 1
            stops = running * (((halted + p) >= 0.99).float() if not last else 1.0)
            goes = running - stops
            remainder = remainder + stops * (1 - halted)
            weight = goes * p + stops * (1 - halted)
            halted = halted + goes * p + stops * (1 - halted)
            updates = updates + running
            state = self.layer(state + self.step_emb[s])
            out = out + weight[..., None] * state
        self.ponder = (updates + remainder).mean()
        return self.classifier(out.mean(1))


@scenario(
    "universal_transformer_act",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
)
def h28_softmax_collapse_ut_act_temperature(ctx: Context) -> None:
    """Fine-tuning on a small fixed set of 96 sequences with the logits divided by a
    "temperature" of 0.02 (meant 2.0): most rows' float32 softmax rounds to exactly one-hot
    within a few dozen steps and their gradient to exactly zero."""
    gen = seeded(2815)
    x, y = next(bert_batches(gen, batch=96))
    model = ACTUniversalTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def full():
        while True:
            yield x, y

    fit(
        ctx,
        model,
        opt,
        full(),
        160,
        forward=lambda m, x: m(x) / 0.02,
        extra_loss=lambda step, loss: loss + 0.01 * model.ponder,
    )
    with torch.no_grad():
        ctx.check("half the rows collapsed", collapsed_fraction(model(x) / 0.02, y) > 0.5)


# -- MMoE multi-task recommender ------------------------------------------------------------------


class MMoE(nn.Module):
    """Shared experts, one softmax gate and one tower per task (Ma et al. 2018)."""

    def __init__(self, features: int = 16, experts: int = 4, tasks: int = 2, hidden: int = 32):
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU()) for _ in range(experts)
        )
        self.gates = nn.ModuleList(nn.Linear(features, experts) for _ in range(tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(tasks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.stack([expert(x) for expert in self.experts], 1)  # (b, experts, hidden)
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            w = torch.softmax(gate(x), -1)
            outs.append(tower((w[..., None] * e).sum(1)))
        return torch.cat(outs, 1)


def _click_batches(gen: torch.Generator, batch: int = 128, features: int = 16):
    """Generated users x items: a click task and a correlated conversion task."""
    w_click = torch.randn(features, generator=gen)
    w_conv = 0.6 * w_click + 0.8 * torch.randn(features, generator=gen)
    while True:
        x = torch.randn(batch, features, generator=gen)
        p = torch.sigmoid(torch.stack([x @ w_click, x @ w_conv - 1.0], 1))
        yield x, torch.bernoulli(p, generator=gen)


@scenario("mmoe_recommender", "sgd", "amp_overflow", diverges=None, heldout=True)
def h28_amp_overflow_mmoe_fp16(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**30 that grows every 25 steps: it
    overflows several times, skips those steps and lowers its scale; training is fine."""
    gen = seeded(2816)
    model = MMoE()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        220,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss finite and fell", max(ctx.losses) < 10 and ctx.losses[-1] < ctx.losses[0])
