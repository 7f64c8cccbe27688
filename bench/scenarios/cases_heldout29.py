"""Held-out set 29 (``h29_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face GLM-4 causal LM, Switch Transformers (mixture-of-experts encoder-decoder),
PVTv2 image classifier, I-BERT encoder classifier (quantisation off; MRA learnt nothing on
CPU) and VideoMAE video classifier (tiny generated
clips) from configs; a Legendre memory unit (LMU) RNN, a LightGCN recommender on generated
interactions, an Inception-block CNN (digits), a rectified-flow (flow-matching) generator on 2-D
points, a DLinear forecaster on generated series, SwAV with Sinkhorn-Knopp assignments (digits,
fp16 autocast) and a DiT (diffusion transformer with adaLN-Zero) on digits.
Optimizers: SGD, SGD with momentum and Nesterov, Adam, AdamW, RMSprop, RAdam, NAdam, Adamax,
Adagrad, and steadygrad's AdaBelief and Lion.

Written without reading ``steadygrad/diagnose/``, ``steadygrad/monitor/`` or the other held-out
files, and never run on steadygrad while it was written: each scenario was adjusted only until
its own checks held (or, for a healthy control, until it trained normally) with a stand-in
context that attaches nothing.
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
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face GLM-4 causal LM ----------------------------------------------------------------


def _glm4(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import Glm4Config, Glm4ForCausalLM

    config = Glm4Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=dim // heads,
        max_position_embeddings=64,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    return Glm4ForCausalLM(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


@scenario(
    "h29_hf_glm4_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.1.self_attn", "model.layers.1.self_attn.q_proj"),
    diverges=None,
    onset=60,
    heldout=True,
)
def h29_glm4_qk_decay_sign(ctx: Context) -> None:
    """From step 60 (a resume) a hand-written decoupled weight decay for the attention
    projections of the last layer is applied with its sign flipped: q_proj and k_proj grow by
    1.2% a step, so the attention logits of that layer grow and its attention saturates."""
    gen = seeded(2901)
    model = _glm4()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    attn = model.model.layers[1].self_attn
    seen: dict[str, torch.Tensor] = {}
    attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach()))
    scale = []

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                attn.q_proj.weight.mul_(1.012)
                attn.k_proj.weight.mul_(1.012)

    def logit_scale() -> float:
        q = seen["q"].reshape(*seen["q"].shape[:2], 2, -1).transpose(1, 2)
        k = seen["k"].reshape(*seen["k"].shape[:2], 2, -1).transpose(1, 2)
        return float((q @ k.transpose(-1, -2)).abs().amax() / math.sqrt(q.shape[-1]))

    def record(step: int) -> None:
        bug(step)
        if step in (59, 299) and "q" in seen:
            scale.append(logit_scale())

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
        before=record,
    )
    ctx.check("layer-1 attention logits grew 10x", len(scale) == 2 and scale[1] > 10 * scale[0])


@scenario("h29_hf_glm4_lm", "adamw", "healthy", heldout=True)
def h29_glm4_healthy(ctx: Context) -> None:
    gen = seeded(2902)
    model = _glm4()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=lm_loss,
        classifier=False,
        forward=_logits,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- Hugging Face Switch Transformers (MoE encoder-decoder) --------------------------------------


def _switch(vocab: int = 64):
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    config = SwitchTransformersConfig(
        vocab_size=vocab,
        d_model=32,
        d_kv=16,
        d_ff=64,
        expert_capacity=32,
        num_layers=2,
        num_sparse_encoder_layers=1,
        num_decoder_layers=2,
        num_sparse_decoder_layers=1,
        num_heads=2,
        num_experts=4,
        dropout_rate=0.0,
        router_jitter_noise=0.0,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return SwitchTransformersForConditionalGeneration(config)


def _copy_batches(gen: torch.Generator, batch: int = 16, length: int = 12, vocab: int = 64):
    """Source: random tokens; target: a copy of it (decoder input shifted right)."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        tgt = src
        dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec), tgt


@scenario(
    "h29_hf_switch_moe_seq2seq",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=80,
    heldout=True,
)
def h29_switch_zloss_sign(ctx: Context) -> None:
    """A z-loss on the output log-partition (meant to keep log Z near 0) is switched on at step
    80 with its sign flipped: the loss now rewards a large log Z, the output logits grow
    without bound and the cross-entropy climbs with them."""
    gen = seeded(2903)
    model = _switch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    last: dict[str, torch.Tensor] = {}
    logz: list[float] = []

    def forward(m: nn.Module, x) -> torch.Tensor:
        out = m(input_ids=x[0], decoder_input_ids=x[1]).logits
        last["logits"] = out
        return out

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(last["logits"].float(), -1)
        logz.append(float(z.detach().abs().mean()))
        if step < 80:
            return loss
        return loss - 5e-2 * z.pow(2).mean()  # should be + 1e-4 * z**2

    fit(
        ctx,
        model,
        opt,
        _copy_batches(gen),
        280,
        loss_fn=lm_loss,
        classifier=False,
        forward=forward,
        extra_loss=zloss,
    )
    ctx.check("|log Z| grew 10x after step 80", logz[-1] > 10 * max(logz[70:80]))


# -- Hugging Face PVTv2 image classifier ---------------------------------------------------------


def _pvt2():
    from transformers import PvtV2Config, PvtV2ForImageClassification

    config = PvtV2Config(
        image_size=16,
        num_channels=1,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[3, 3],
        strides=[2, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        num_labels=10,
    )
    return PvtV2ForImageClassification(config)


def _images16(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)


@scenario("h29_hf_pvt_v2_image", "adamw", "sharpness_above_limit", diverges="auto", heldout=True)
def h29_pvt2_warmup_peak_typo(ctx: Context) -> None:
    """A linear warm-up over 300 steps towards a peak learning rate typed as 3e-1 (meant
    3e-4): the first ~90 steps train normally, then the rate passes the stability limit while
    still rising and the loss blows up."""
    gen = seeded(2904)
    model = _pvt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3e-1 * (step + 1) / 300

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        300,
        before=warmup,
        forward=lambda m, x: m(pixel_values=_images16(x)).logits,
    )
    ctx.check("learnt early on", min(ctx.losses[:60]) < 0.8 * ctx.losses[0])


# -- Hugging Face I-BERT encoder classifier (quantisation off) ---------------------------------------------------------


def _ibert():
    from transformers import IBertConfig, IBertForSequenceClassification

    config = IBertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=68,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return IBertForSequenceClassification(config)


def _marker_batches(gen: torch.Generator, batch: int = 32, length: int = 32, vocab: int = 128):
    """Random tokens; label 1 when three copies of the marker token 1 were planted."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        y = torch.randint(0, 2, (batch,), generator=gen)
        pos = torch.rand(batch, length, generator=gen).argsort(1)[:, :3]
        planted = torch.zeros(batch, length, dtype=torch.bool).scatter(1, pos, True)
        x = torch.where(planted & (y[:, None] == 1), 1, x)
        yield x, y


@scenario(
    "h29_hf_ibert_encoder",
    "rmsprop",
    "update_ratio_out_of_range",
    where="ibert.encoder.layer.1",
    diverges=None,
    heldout=True,
)
def h29_ibert_layer_decay_zero(ctx: Context) -> None:
    """Layer-wise learning-rate multipliers looked up by layer index from a list one entry
    short, padded with 0.0: the last encoder layer's group gets lr 0, so ibert.encoder.layer.1
    never moves while the rest trains."""
    gen = seeded(2905)
    model = _ibert()
    top = model.ibert.encoder.layer[1]
    top_ids = {id(p) for p in top.parameters()}
    rest = [p for p in model.parameters() if id(p) not in top_ids]
    opt = torch.optim.RMSprop(
        [{"params": rest}, {"params": list(top.parameters()), "lr": 0.0}], lr=5e-4
    )
    before = top.attention.self.query.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        _marker_batches(gen),
        200,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("layer 1 unchanged", torch.equal(before, top.attention.self.query.weight))
    ctx.check("the rest learnt", sum(ctx.losses[-20:]) < 0.9 * sum(ctx.losses[:20]))


# -- Hugging Face VideoMAE video classifier ------------------------------------------------------


def _videomae():
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    config = VideoMAEConfig(
        image_size=16,
        patch_size=8,
        num_channels=1,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_mean_pooling=True,
        num_labels=3,
    )
    return VideoMAEForVideoClassification(config)


def _clips(gen: torch.Generator, batch: int = 16):
    """4-frame 16x16 clips of a bright square moving left, right (3 pixels a frame) or staying:
    label = motion."""
    grid = torch.arange(16)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        x0 = torch.randint(5, 8, (batch,), generator=gen)
        r0 = torch.randint(2, 12, (batch,), generator=gen)
        step = torch.tensor([-3, 0, 3])[y]
        frames = []
        for t in range(4):
            c = x0 + step * t - (step > 0).long() * 4
            cols = (grid[None] >= c[:, None]) & (grid[None] < c[:, None] + 4)
            rows = (grid[None] >= r0[:, None]) & (grid[None] < r0[:, None] + 3)
            frames.append((rows[:, :, None] & cols[:, None, :]).float())
        clip = torch.stack(frames, 1)[:, :, None]  # (B, T, C, H, W)
        yield clip + 0.1 * torch.randn(clip.shape, generator=gen), y


@scenario("h29_hf_videomae_clips", "radam", "data_outlier", diverges=200, onset=200, heldout=True)
def h29_videomae_rotated_label_shard(ctx: Context) -> None:
    """One batch (step 200) comes from a shard written with an older label map (left, static,
    right rotated by one): every clip of it is labelled as a motion it does not show."""
    gen = seeded(2906)
    model = _videomae()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            y = (y + 1) % 3
        return x, y

    fit(
        ctx,
        model,
        opt,
        _clips(gen),
        280,
        alter=alter,
        forward=lambda m, x: m(pixel_values=x).logits,
    )
    before = max(ctx.losses[190:200])
    ctx.check("loss spiked at 200", ctx.losses[200] > 5 * before)
    ctx.check("and came back", sum(ctx.losses[250:280]) / 30 < 2 * max(before, 0.1))


# -- Legendre memory unit RNN --------------------------------------------------------------------


def _lmu_matrices(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Voelker et al. 2019's continuous (A, B), discretised exactly (zero-order hold, dt = 1)."""
    q = torch.arange(order, dtype=torch.float64)
    r = (2 * q + 1)[:, None] / theta
    i, j = torch.meshgrid(q, q, indexing="ij")
    a = torch.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * r
    b = ((-1.0) ** q)[:, None] * r
    a_bar = torch.linalg.matrix_exp(a)
    b_bar = torch.linalg.solve(a, (a_bar - torch.eye(order, dtype=torch.float64)) @ b)
    return a_bar.float(), b_bar.float()


class LMUCell(nn.Module):
    def __init__(self, inp: int, hidden: int, order: int, theta: float) -> None:
        super().__init__()
        a, b = _lmu_matrices(order, theta)
        self.register_buffer("A", a)
        self.register_buffer("B", b)
        self.enc_x = nn.Linear(inp, 1)
        self.enc_h = nn.Linear(hidden, 1, bias=False)
        self.enc_m = nn.Linear(order, 1, bias=False)
        self.kernel_x = nn.Linear(inp, hidden)
        self.kernel_h = nn.Linear(hidden, hidden, bias=False)
        self.kernel_m = nn.Linear(order, hidden, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, m: torch.Tensor):
        u = self.enc_x(x) + self.enc_h(h) + self.enc_m(m)
        m = m @ self.A.T + u @ self.B.T
        h = torch.tanh(self.kernel_x(x) + self.kernel_h(h) + self.kernel_m(m))
        return h, m


class LMUNet(nn.Module):
    """Reads an 8x8 digit one row per step (8 steps of 8 values) with an LMU, then classifies
    from its last state and memory."""

    def __init__(self, hidden: int = 32, order: int = 8, theta: float = 8.0) -> None:
        super().__init__()
        self.cell = LMUCell(8, hidden, order, theta)
        self.head = nn.Linear(hidden + order, 10)  # reads the state and the memory
        self.hidden, self.order = hidden, order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 8, 8)
        h = x.new_zeros(x.shape[0], self.hidden)
        m = x.new_zeros(x.shape[0], self.order)
        for t in range(x.shape[1]):
            h, m = self.cell(x[:, t], h, m)
        return self.head(torch.cat([h, m], 1))


@scenario(
    "h29_lmu_rnn",
    "sgd_nesterov",
    "exploding_gradients",
    where=("cell.enc_m", "cell"),
    diverges="auto",
    onset=60,
    heldout=True,
)
def h29_lmu_memory_feedback_grows(ctx: Context) -> None:
    """From step 60 a hand-written decoupled weight decay is applied to the memory encoder
    with its sign flipped (3% a step): the memory feeds itself back through enc_m ever more
    strongly, the linear memory recurrence leaves the unit circle and gradients through the
    8 steps blow up."""
    gen = seeded(2907)
    model = LMUNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.cell.enc_m.weight.mul_(1.03)

    fit(ctx, model, opt, digit_batches(gen), 260, before=bug)
    g = ctx.grad_norms
    early = sorted(g[30:60])[15]
    ctx.check("gradient norm grew 100x", max(v for v in g if v == v) > 100 * early)


@scenario("h29_lmu_rnn", "adagrad", "healthy", heldout=True)
def h29_lmu_healthy(ctx: Context) -> None:
    gen = seeded(2908)
    model = LMUNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(ctx, model, opt, digit_batches(gen), 250)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- LightGCN recommender ------------------------------------------------------------------------


class LightGCN(nn.Module):
    """Propagates one embedding table over a normalised user-item graph (no weights, no
    non-linearity) and averages the layers; scores are dot products."""

    def __init__(self, adj: torch.Tensor, users: int, items: int, dim: int = 16, layers: int = 2):
        super().__init__()
        self.register_buffer("adj", adj)
        self.emb = nn.Embedding(users + items, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.users, self.layers = users, layers

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.emb.weight
        total = x
        for _ in range(self.layers):
            x = self.adj @ x
            total = total + x
        z = total / (self.layers + 1)
        u = z[batch[:, 0]]
        pos = z[self.users + batch[:, 1]]
        neg = z[self.users + batch[:, 2]]
        return torch.stack([(u * pos).sum(1), (u * neg).sum(1)], 1)


def _interactions(gen: torch.Generator, users: int = 120, items: int = 160):
    """Each user likes the items of two of eight genres; returns the normalised graph and the
    (user, liked item) pairs."""
    genre_u = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(users)])
    genre_i = torch.randint(0, 8, (items,), generator=gen)
    likes = (genre_i[None, :, None] == genre_u[:, None, :]).any(-1)
    likes &= torch.rand(users, items, generator=gen) < 0.6
    r = likes.float()
    n = users + items
    a = torch.zeros(n, n)
    a[:users, users:] = r
    a[users:, :users] = r.T
    d = a.sum(1).clamp(min=1).rsqrt()
    return d[:, None] * a * d[None], likes.nonzero(), likes


def _bpr_batches(gen: torch.Generator, pairs: torch.Tensor, likes: torch.Tensor, batch: int = 64):
    items = likes.shape[1]
    while True:
        idx = torch.randint(0, len(pairs), (batch,), generator=gen)
        u, pos = pairs[idx, 0], pairs[idx, 1]
        neg = torch.randint(0, items, (batch,), generator=gen)
        yield torch.stack([u, pos, neg], 1), torch.zeros(batch, dtype=torch.long)


def _bpr(scores: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


@scenario(
    "h29_lightgcn_recsys",
    "adam",
    "adam_second_moment_poisoned",
    where="emb",
    diverges=None,
    onset=200,
    heldout=True,
)
def h29_lightgcn_raw_count_weight(ctx: Context) -> None:
    """At step 200 one batch's sample weights come from raw interaction counts (x 20000)
    instead of normalised ones: one giant gradient fills Adam's second moment, and the
    embedding's updates shrink for hundreds of steps after it."""
    gen = seeded(2909)
    adj, pairs, likes = _interactions(gen)
    model = LightGCN(adj, likes.shape[0], likes.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    moves: list[float] = []
    prev = model.emb.weight.detach().clone()

    def weighted(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 20000.0 if step == 200 else loss

    def track(step: int) -> None:
        nonlocal prev
        w = model.emb.weight.detach()
        moves.append(float((w - prev).norm()))
        prev = w.clone()

    fit(
        ctx,
        model,
        opt,
        _bpr_batches(gen, pairs, likes),
        400,
        loss_fn=_bpr,
        classifier=False,
        extra_loss=weighted,
        before=track,
    )
    before = sorted(moves[150:200])[25]
    after = sorted(moves[260:310])[25]
    ctx.check("embedding updates shrank 10x", after < 0.1 * before)


# -- Inception-block CNN -------------------------------------------------------------------------


class Inception(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; 3x3 max-pool -> 1x1), concatenated;
    functional ReLUs."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, width, 1)
        self.b3a = nn.Conv2d(cin, width, 1)
        self.b3b = nn.Conv2d(width, width, 3, padding=1)
        self.b5a = nn.Conv2d(cin, width, 1)
        self.b5b = nn.Conv2d(width, width, 3, padding=1)
        self.b5c = nn.Conv2d(width, width, 3, padding=1)
        self.bp = nn.Conv2d(cin, width, 1)
        self.b3_pre: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.b1(x))
        pre = self.b3b(F.relu(self.b3a(x)))
        self.b3_pre = pre
        b = F.relu(pre)
        c = F.relu(self.b5c(F.relu(self.b5b(F.relu(self.b5a(x))))))
        d = F.relu(self.bp(F.max_pool2d(x, 3, 1, 1)))
        return torch.cat([a, b, c, d], 1)


class InceptionNet(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.inc1 = Inception(8, width)
        self.inc2 = Inception(4 * width, width)
        self.head = nn.Linear(4 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(self.inc1(x), 2)
        x = self.inc2(x)
        return self.head(x.flatten(1))


@scenario(
    "h29_inception_cnn",
    "nadam",
    "loss_of_plasticity",
    where=("inc2.b3b",),
    diverges=None,
    onset=120,
    heldout=True,
)
def h29_inception_bias_restore(ctx: Context) -> None:
    """At step 120 a partial checkpoint restore copies inc2.b3b's bias from an export that
    stored it with the BatchNorm shift folded in (-6 for every channel): the 3x3 branch's ReLUs
    are dead from then on, and a dead ReLU gets no gradient to come back."""
    gen = seeded(2911)
    model = InceptionNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def restore(step: int) -> None:
        if step == 120:
            with torch.no_grad():
                model.inc2.b3b.bias.fill_(-6.0)

    fit(ctx, model, opt, digit_batches(gen), 260, before=restore)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        model(x)
    ctx.check("inc2.b3b all dead", dead_fraction(F.relu(model.inc2.b3_pre)) == 1.0)


@scenario("h29_inception_cnn", "sg_lion", "healthy", heldout=True)
def h29_inception_healthy(ctx: Context) -> None:
    gen = seeded(2912)
    model = InceptionNet()
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)
    fit(ctx, model, opt, digit_batches(gen), 250)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- rectified flow (flow matching) on 2-D points ------------------------------------------------


class LogitTime(nn.Module):
    """Fourier features of logit(t): spreads the time grid near both ends of (0, 1)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("freq", torch.linspace(0.1, 2.0, dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        s = torch.log(t) - torch.log1p(-t)
        arg = s[:, None] * self.freq
        return torch.cat([arg.sin(), arg.cos()], 1)


class VelocityNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.temb = LogitTime(16)
        self.net = nn.Sequential(
            nn.Linear(2 + 16, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([xt, self.temb(t)], 1))


def _two_moons(gen: torch.Generator, n: int) -> torch.Tensor:
    a = math.pi * torch.rand(n, generator=gen)
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, a.cos(), 1 - a.cos())
    y = torch.where(upper, a.sin(), 0.5 - a.sin())
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=gen)


@scenario(
    "h29_rectified_flow_points",
    "adamax",
    "nonfinite",
    where="temb",
    diverges=150,
    onset=150,
    heldout=True,
)
def h29_rectified_flow_t_zero(ctx: Context) -> None:
    """At step 150 the stratified time sampler takes its ``t = arange(B) / B`` branch (meant for
    evaluation): one sample has t = 0 exactly, logit(0) = -inf in the time embedding and its
    sine is NaN."""
    gen = seeded(2913)
    model = VelocityNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batch = 128

    def batches():
        while True:
            x1 = _two_moons(gen, batch)
            x0 = torch.randn(batch, 2, generator=gen)
            t = torch.rand(batch, generator=gen).clamp(1e-4, 1 - 1e-4)
            yield (x0, x1, t), x1 - x0

    def alter(step: int, x, y):
        if step == 150:
            x = (x[0], x[1], torch.arange(batch) / batch)
        return x, y

    def forward(m: nn.Module, x) -> torch.Tensor:
        x0, x1, t = x
        return m((1 - t[:, None]) * x0 + t[:, None] * x1, t)

    fit(
        ctx,
        model,
        opt,
        batches(),
        180,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
        forward=forward,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, not at 150", all(finite[:150]) and not finite[150])


# -- DLinear forecaster --------------------------------------------------------------------------


class DLinear(nn.Module):
    """Zeng et al. 2023: a moving-average trend and the remainder, each mapped to the horizon by
    one linear layer."""

    def __init__(self, lookback: int = 48, horizon: int = 12, kernel: int = 13) -> None:
        super().__init__()
        self.kernel = kernel
        self.trend = nn.Linear(lookback, horizon)
        self.seasonal = nn.Linear(lookback, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel // 2
        padded = torch.cat([x[:, :1].expand(-1, pad), x, x[:, -1:].expand(-1, pad)], 1)
        trend = F.avg_pool1d(padded[:, None], self.kernel, 1)[:, 0]
        return self.trend(trend) + self.seasonal(x - trend)


def _series_batches(gen: torch.Generator, noise, batch: int = 32, lookback=48, horizon=12):
    """Windows of sine mixtures with a slope; ``noise(step)`` gives the sensor noise level."""
    step = 0
    t = torch.arange(lookback + horizon, dtype=torch.float32)
    while True:
        p = 12 + 12 * torch.rand(batch, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        slope = 0.02 * torch.randn(batch, 1, generator=gen)
        s = torch.sin(2 * math.pi * t / p + ph) + 0.5 * torch.sin(4 * math.pi * t / p) + slope * t
        s = s + noise(step) * torch.randn(s.shape, generator=gen)
        step += 1
        yield s[:, :lookback], s[:, lookback:]


@scenario(
    "h29_dlinear_forecast", "sgd", "loss_divergence", diverges="auto", onset=100, heldout=True
)
def h29_dlinear_sensor_degrades(ctx: Context) -> None:
    """From step 100 the sensor feeding the stream degrades: its noise grows from 0.05 to 1.5
    standard deviations over 300 steps. Nothing in the model breaks; the error simply climbs."""
    gen = seeded(2914)
    model = DLinear()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def noise(step: int) -> float:
        return 0.05 if step < 100 else 0.05 * math.exp(min(step - 100, 300) / 300 * math.log(30))

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen, noise),
        420,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    ctx.check(
        "loss at the end 4x its level before 100",
        sum(ctx.losses[-20:]) > 4 * sum(ctx.losses[80:100]),
    )


# -- SwAV with Sinkhorn-Knopp assignments (fp16 autocast) ----------------------------------------


class SwAV(nn.Module):
    def __init__(self, prototypes: int = 20) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        self.prototypes = nn.Linear(32, prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.encoder(x), dim=1)
        return self.prototypes(z)


@torch.no_grad()
def _sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    q = torch.exp((scores - scores.max()) / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * b
    return (q * b).T


def _swav_views(gen: torch.Generator, batch: int = 64):
    for x, _ in digit_batches(gen, batch):
        v1 = x * (torch.rand(x.shape, generator=gen) > 0.2) + 0.1 * torch.randn(
            x.shape, generator=gen
        )
        v2 = x * (torch.rand(x.shape, generator=gen) > 0.2) + 0.1 * torch.randn(
            x.shape, generator=gen
        )
        yield torch.cat([v1, v2]), torch.zeros(2 * batch)


def _swapped(scores: torch.Tensor, _y: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    s1, s2 = scores.float().chunk(2)
    q1, q2 = _sinkhorn(s1), _sinkhorn(s2)
    p1, p2 = F.log_softmax(s1 / temp, 1), F.log_softmax(s2 / temp, 1)
    return -0.5 * ((q1 * p2).sum(1).mean() + (q2 * p1).sum(1).mean())


@scenario("h29_swav_sinkhorn", "sg_adabelief", "amp_overflow", diverges=None, heldout=True)
def h29_swav_scaler_growth_every_step(ctx: Context) -> None:
    """The GradScaler is built with ``growth_interval=1`` (meant 1000) and init scale 2**20:
    the scale doubles after every good step, overflows the fp16 backward again at once, and
    about half of all steps are skipped."""
    gen = seeded(2915)
    model = SwAV()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=1)

    def normalise(step: int) -> None:
        with torch.no_grad():
            model.prototypes.weight.copy_(F.normalize(model.prototypes.weight, dim=1))

    fit(
        ctx,
        model,
        opt,
        _swav_views(gen),
        200,
        loss_fn=_swapped,
        classifier=False,
        scaler=scaler,
        amp=True,
        before=normalise,
    )
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check("a third of the steps skipped", drops >= len(ctx.scales) // 3)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


# -- DiT: diffusion transformer with adaLN-Zero on digits ----------------------------------------


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(F.silu(c))[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


class DiT(nn.Module):
    """8x8 digits as sixteen 2x2 patches; timestep and class embeddings condition each block
    through adaLN-Zero; predicts the noise."""

    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.t_mlp = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_emb = nn.Embedding(10, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        freqs = torch.exp(-math.log(1000) * torch.arange(8) / 8)
        tf = t[:, None].float() * freqs
        c = self.t_mlp(torch.cat([tf.sin(), tf.cos()], 1)) + self.y_emb(y)
        h = self.patch(p) + self.pos
        for block in self.blocks:
            h = block(h, c)
        out = self.final(self.final_norm(h))
        return out.reshape(b, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(b, 64)


_ALPHA_BAR = torch.cumprod(1 - torch.linspace(1e-4, 0.05, 100), 0)


def _diffusion_batches(gen: torch.Generator, batch: int = 64):
    for x, y in digit_batches(gen, batch):
        x = 2 * x - 1
        t = torch.randint(0, 100, (batch,), generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        a = _ALPHA_BAR[t][:, None]
        yield (a.sqrt() * x + (1 - a).sqrt() * eps, t, y), eps


def _dit_forward(m: nn.Module, x) -> torch.Tensor:
    return m(*x)


@scenario(
    "h29_dit_adaln", "sgd_mom", "sharpness_above_limit", diverges="auto", onset=150, heldout=True
)
def h29_dit_resume_lr_x20(ctx: Context) -> None:
    """The run resumes at step 150 with the learning rate read from the pre-training config
    (x 20 the fine-tuning rate): every step from then on overshoots the curvature."""
    gen = seeded(2916)
    model = DiT()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 0.4

    fit(
        ctx,
        model,
        opt,
        _diffusion_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        forward=_dit_forward,
        before=resume,
    )
    ctx.check("trained before 150", sum(ctx.losses[140:150]) < 0.8 * sum(ctx.losses[:10]))


@scenario("h29_dit_adaln", "adam", "healthy", heldout=True)
def h29_dit_healthy(ctx: Context) -> None:
    gen = seeded(2917)
    model = DiT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        _diffusion_batches(gen),
        250,
        loss_fn=F.mse_loss,
        classifier=False,
        forward=_dit_forward,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))
