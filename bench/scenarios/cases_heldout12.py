"""The twelfth held-out set (``h12_``): families none of the other sets use.

Hugging Face OLMoE, RWKV and Jamba causal LMs, an XLNet LM, a Funnel Transformer and a MobileBERT
classifier, a BEiT and a LeViT image classifier and a RegNet CNN, all built from configs; written
here: a Set Transformer, a RetNet-style retention decoder, a diagonal state-space (S4D-like)
sequence classifier, a DLRM-style recommender (embeddings + dot interaction), an echo-state
network with a trained readout and a capsule network with dynamic routing. Optimizers: SGD,
SGD with momentum, Nesterov momentum, Adam, AdamW, NAdam, RAdam, RMSprop, Adagrad, Adamax and
steadygrad.optim's Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was adjusted with a stand-in context that attaches nothing, only until its
own checks held (or, for a healthy control, until it trained normally).
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

# -- shared pieces --------------------------------------------------------------------------------


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _spiked(losses: list[float], at: int, factor: float = 4.0, before: int = 10) -> bool:
    return losses[at] > factor * max(losses[at - before : at])


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


# -- attention-logit growth: Funnel Transformer ---------------------------------------------------


def _funnel(vocab: int = 128):
    from transformers import FunnelConfig, FunnelForSequenceClassification

    config = FunnelConfig(
        vocab_size=vocab,
        block_sizes=[1, 1],
        block_repeats=[1, 1],
        num_decoder_layers=1,
        d_model=32,
        n_head=2,
        d_head=16,
        d_inner=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        num_labels=2,
    )
    return FunnelForSequenceClassification(config)


def _funnel_scores(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |q.k| / sqrt(d_head) of the first block's attention on a batch."""
    att = model.funnel.encoder.blocks[0][0].attention
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        att.q_head.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        att.k_head.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    b, t, _ = seen["q"].shape
    q = seen["q"].reshape(b, t, 2, 16).transpose(1, 2)
    k = seen["k"].reshape(b, -1, 2, 16).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / 4.0)


@scenario(
    "hf_funnel",
    "adam",
    "attention_logit_growth",
    where="funnel.encoder.blocks.0.0.attention",
    diverges=None,
    onset=40,
    note="a per-step multiplier meant for init scales q/k every step",
    heldout=True,
)
def h12_funnel_qk_multiplier_every_step(ctx: Context) -> None:
    """A muP-style width multiplier for the first block's query/key projections, meant to be
    applied once at initialisation, sits in the training loop from step 40 (after a refactor moved
    the init into a callback that fires every step): q and k grow 1.5% a step, the attention
    logits ~3% a step, and the first block's attention turns one-hot."""
    gen = seeded(1201)
    model = _funnel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    att = model.funnel.encoder.blocks[0][0].attention
    probe, _ = next(bert_batches(torch.Generator().manual_seed(5)))
    start: list[float] = []

    def bug(step: int) -> None:
        if step == 40:
            start.append(_funnel_scores(model, probe))
        if step >= 40:
            with torch.no_grad():
                att.q_head.weight.mul_(1.015)
                att.k_head.weight.mul_(1.015)

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen),
        220,
        forward=lambda m, x: m(input_ids=x).logits,
        before=bug,
    )
    end = _funnel_scores(model, probe)
    ctx.check("attention logits grew 20x from step 40", end > 20 * start[0])


# -- output-logit divergence: XLNet LM with a z-loss of the wrong sign ----------------------------


def _xlnet():
    from transformers import XLNetConfig, XLNetLMHeadModel

    config = XLNetConfig(
        vocab_size=128,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_inner=64,
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return XLNetLMHeadModel(config)


def _xlnet_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    t = x.shape[1]
    causal = torch.triu(torch.ones(t, t), diagonal=1).expand(x.shape[0], t, t)
    return m(input_ids=x, perm_mask=causal).logits


@scenario(
    "hf_xlnet",
    "sgd_mom",
    "output_logit_divergence",
    where="lm_loss",
    diverges="auto",
    onset=0,
    note="z-loss added with the wrong sign",
    heldout=True,
)
def h12_xlnet_zloss_wrong_sign(ctx: Context) -> None:
    """A z-loss (3e-3 * log Z^2) is subtracted instead of added: it rewards a large
    log-partition, which cross-entropy does not see (it is shift-invariant), so the head's logits
    drift up together, slowly at first and faster as the push grows with log Z."""
    gen = seeded(1202)
    model = _xlnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    log_z: list[float] = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(logits.float(), dim=-1)
        log_z.append(float(z.mean().detach()))
        loss = lm_loss(logits, y)
        loss.z = z  # type: ignore[attr-defined]
        return loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        400,
        forward=_xlnet_forward,
        loss_fn=loss_fn,
        extra_loss=lambda step, loss: loss - 3e-3 * (loss.z**2).mean(),
    )
    finite = [v for v in log_z if math.isfinite(v)]
    ctx.check("log Z grew past 50", max(finite) > 50)
    ctx.check("loss fell first", min(ctx.losses[:100]) < ctx.losses[0] - 0.5)


# -- softmax collapse: RegNet with a contrastive temperature on a classifier ----------------------


def _regnet():
    from transformers import RegNetConfig, RegNetForImageClassification

    config = RegNetConfig(
        num_channels=1,
        embedding_size=8,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        groups_width=8,
        num_labels=10,
    )
    return RegNetForImageClassification(config)


@scenario(
    "hf_regnet",
    "sgd_nesterov",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    note="logits divided by a contrastive temperature of 0.02",
    heldout=True,
)
def h12_regnet_temperature_collapse(ctx: Context) -> None:
    """The classifier's logits are divided by a temperature of 0.02 carried over from the
    contrastive pre-training config: once the digits are learnt, float32 softmax rounds the
    target's probability to exactly 1.0 for most samples and those rows stop giving gradient."""
    gen = seeded(1203)
    model = _regnet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=x.reshape(-1, 1, 8, 8)).logits / 0.02

    fit(ctx, model, opt, digit_batches(gen, 64), 300, forward=forward)
    x, y = next(digit_batches(gen, 256))
    model.eval()
    with torch.no_grad():
        share = collapsed_fraction(forward(model, x), y)
    ctx.check("most rows collapsed to p = 1.0", share > 0.5)


# -- learning rate above the stability limit: OLMoE warm-up that overshoots -----------------------


def _olmoe():
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return OlmoeForCausalLM(config)


@scenario(
    "hf_olmoe",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=0,
    note="linear warm-up to a peak LR far too high",
    heldout=True,
)
def h12_olmoe_warmup_overshoot(ctx: Context) -> None:
    """A linear warm-up to a peak of 3 (an Adam recipe's schedule, scaled for SGD by a
    rule of thumb that assumed a far smaller model): the loss falls while the LR is small and breaks once it passes the limit."""
    gen = seeded(1204)
    model = _olmoe()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    lrs: list[float] = []

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 300)
        lrs.append(opt.param_groups[0]["lr"])

    fit(ctx, model, opt, text_batches(gen), 300, forward=_hf_logits, loss_fn=lm_loss, before=warmup)
    ctx.check("loss fell early", min(ctx.losses[:120]) < ctx.losses[0] - 1.0)


# -- exploding gradients: an S4D-like sequence classifier with an unconstrained decay ------------------------


class DiagonalSSM(nn.Module):
    """h_t = a * h_{t-1} + b * u_t, y_t = c * h_t + d * u_t, per channel (a diagonal SSM).

    The decay ``a`` is a raw parameter: the stable parameterisation (a = exp(-softplus(w)))
    was left out, so nothing keeps |a| below 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.linspace(0.9, 0.995, channels))
        self.b = nn.Parameter(torch.ones(channels))
        self.c = nn.Parameter(torch.randn(channels) / math.sqrt(channels))
        self.d = nn.Parameter(torch.zeros(channels))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(u[:, 0])
        out = []
        for t in range(u.shape[1]):
            h = self.a * h + self.b * u[:, t]
            out.append(self.c * h + self.d * u[:, t])
        return torch.stack(out, 1)


class S4DClassifier(nn.Module):
    def __init__(self, channels: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Linear(1, channels)
        self.ssm = DiagonalSSM(channels)
        self.mix = nn.Linear(channels, channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.encoder(x.reshape(x.shape[0], -1, 1))
        y = self.mix(F.gelu(self.ssm(u)))
        return self.head(y[:, -1])


@scenario(
    "s4d_like",
    "rmsprop",
    "exploding_gradients",
    where="ssm",
    diverges="auto",
    onset=50,
    note="SSM decoupled decay with its sign flipped; the decay is unconstrained",
    heldout=True,
)
def h12_s4d_ssm_decay_sign_flipped(ctx: Context) -> None:
    """A hand-written decoupled weight decay for the SSM's parameter group (S4 recipes give it
    its own settings) has its sign flipped from step 50: each step multiplies them by 1.0015 instead
    of 0.9985. The raw decays ``a`` (no constraint keeps |a| < 1) pass 1, and the state and its
    gradient grow like a^64 over the 64 pixels, slowly at first, then by orders of magnitude."""
    gen = seeded(1217)
    model = S4DClassifier()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def decay_wrong_sign(step: int) -> None:
        if step >= 50:
            with torch.no_grad():
                for p in model.ssm.parameters():
                    p.mul_(1.0015)

    fit(ctx, model, opt, digit_batches(gen, 32), 300, before=decay_wrong_sign)
    a = model.ssm.a.detach()
    a_max = float(a.abs().max()) if torch.isfinite(a).all() else math.inf
    ctx.check("a decay passed 1", a_max > 1.0)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm grew 100x", max(g) > 100 * max(g[:20]))


# -- loss of plasticity: Set Transformer with an activity penalty that kills units -----------------


class SAB(nn.Module):
    """Set attention block: multi-head self-attention and a row-wise feed-forward."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ln2(x + self.ff(x))


class PMA(nn.Module):
    """Pooling by multi-head attention onto one learnt seed."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.seed.expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0][:, 0]


class SetTransformer(nn.Module):
    def __init__(self, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.sab1 = SAB(dim)
        self.sab2 = SAB(dim)
        self.pool = PMA(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.sab2(self.sab1(self.embed(x)))))


def _set_batches(gen: torch.Generator, batch: int = 32, size: int = 24):
    """Sets of 2-D points from one of four shapes (disc, ring, line, two blobs): classify it."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        r = torch.rand(batch, size, generator=gen)
        ang = 2 * math.pi * torch.rand(batch, size, generator=gen)
        noise = 0.05 * torch.randn(batch, size, 2, generator=gen)
        disc = torch.stack([r.sqrt() * ang.cos(), r.sqrt() * ang.sin()], -1)
        ring = torch.stack([ang.cos(), ang.sin()], -1)
        line = torch.stack([2 * r - 1, 0.5 * (2 * r - 1)], -1)
        side = torch.where(r < 0.5, -0.6, 0.6)[..., None]
        blobs = torch.cat([side, torch.zeros_like(side)], -1) + 3 * noise
        shapes = torch.stack([disc, ring, line, blobs], 1)
        x = shapes[torch.arange(batch), y] + noise
        yield x, y


@scenario(
    "set_transformer",
    "sgd_mom",
    "loss_of_plasticity",
    where=("sab2.ff.0", "sab2.ff.1", "sab2.ff"),
    diverges=None,
    onset=80,
    note="an activity (L1) penalty 100x too strong on one feed-forward",
    heldout=True,
)
def h12_settransformer_activity_penalty(ctx: Context) -> None:
    """From step 80 an L1 activity penalty (meant for sparse features, coefficient 0.5 where
    0.005 was meant) on sab2's feed-forward hidden units drives their pre-activations below zero;
    a unit that is never positive gets no gradient back, so they stay dead."""
    gen = seeded(1206)
    model = SetTransformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    hidden: list[torch.Tensor] = []
    model.sab2.ff[1].register_forward_hook(lambda m, i, o: hidden.append(o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        h = hidden[-1]
        hidden.clear()
        return loss + (0.5 * h.abs().mean() * 64 if step >= 80 else 0.0)

    fit(ctx, model, opt, _set_batches(gen), 260, extra_loss=penalty)
    x, _ = next(_set_batches(gen, 128))
    with torch.no_grad():
        model(x)
    ctx.check("most of sab2.ff's units dead", dead_fraction(hidden[-1]) >= 0.8)
    ctx.check("loss had fallen before 80", min(ctx.losses[60:80]) < ctx.losses[0] - 0.3)


# -- a frozen layer: BEiT whose new head was never given to the optimizer -------------------------


def _beit(labels: int = 10):
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=labels,
        use_mean_pooling=True,
    )
    return BeitForImageClassification(config)


@scenario(
    "hf_beit",
    "nadam",
    "update_ratio_out_of_range",
    where="classifier",
    diverges=None,
    note="head replaced after the optimizer was built",
    heldout=True,
)
def h12_beit_head_swapped_after_optimizer(ctx: Context) -> None:
    """The optimizer is built, then the classifier head is swapped for a freshly initialised one
    (a fine-tuning recipe in the wrong order): the new head gets gradients every step but its
    parameters are in no param group, so it never moves; only the body adapts to it."""
    gen = seeded(1207)
    model = _beit()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    model.classifier = nn.Linear(32, 10)
    before = model.classifier.weight.detach().clone()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=x.reshape(-1, 1, 8, 8)).logits

    fit(ctx, model, opt, digit_batches(gen, 64), 200, forward=forward)
    ctx.check("head unchanged", torch.equal(before, model.classifier.weight))
    ctx.check("loss still fell", min(ctx.losses[-20:]) < ctx.losses[0] - 0.5)


# -- a data outlier: DLRM-style recommender fed one batch of raw counts ---------------------------


class DLRM(nn.Module):
    """Dense features through a bottom MLP, sparse ids through embedding tables, pairwise dot
    interactions of all the vectors, then a top MLP to one click logit."""

    def __init__(self, dense: int = 8, tables: tuple[int, ...] = (50, 30, 20), dim: int = 16):
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(dense, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in tables)
        for e in self.embeddings:
            nn.init.normal_(e.weight, std=0.1)
        vectors = len(tables) + 1
        pairs = vectors * (vectors - 1) // 2
        self.top = nn.Sequential(nn.Linear(dim + pairs, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        dense, sparse = x
        d = self.bottom(dense)
        vs = torch.stack([d] + [e(sparse[:, i]) for i, e in enumerate(self.embeddings)], 1)
        dots = vs @ vs.transpose(1, 2)
        i, j = torch.triu_indices(vs.shape[1], vs.shape[1], offset=1)
        return self.top(torch.cat([d, dots[:, i, j]], 1)).squeeze(-1)


def _ctr_batches(gen: torch.Generator, batch: int = 64):
    """Clicks drawn from a fixed random teacher over log-scaled dense counts and three ids."""
    teacher = torch.Generator().manual_seed(99)
    w = torch.randn(8, generator=teacher)
    tables = [torch.randn(n, generator=teacher) for n in (50, 30, 20)]
    while True:
        counts = torch.poisson(5 * torch.rand(batch, 8, generator=gen) ** 2 * 20, generator=gen)
        dense = torch.log1p(counts) - 2.0
        sparse = torch.stack(
            [torch.randint(0, n, (batch,), generator=gen) for n in (50, 30, 20)], 1
        )
        logit = dense @ w / 2 + sum(t[sparse[:, i]] for i, t in enumerate(tables))
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield (dense, sparse, counts), y


def _ctr_forward(m: nn.Module, x) -> torch.Tensor:
    return m((x[0], x[1]))


@scenario("dlrm", "adagrad", "data_outlier", diverges=150, onset=150, heldout=True)
def h12_dlrm_raw_counts_batch(ctx: Context) -> None:
    """One batch at step 150 comes from a shard written before the log transform was added: its
    dense features are raw counts (up to ~100) where the model saw values near 0."""
    gen = seeded(1208)
    model = DLRM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x, y):
        dense, sparse, counts = x
        if step == 150:
            dense = counts
        return (dense, sparse, counts), y

    fit(
        ctx,
        model,
        opt,
        _ctr_batches(gen),
        260,
        forward=_ctr_forward,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        classifier=False,
    )
    ctx.check("loss spiked at 150", _spiked(ctx.losses, 150))
    ctx.check(
        "recovered within 60 steps",
        min(ctx.losses[160:210]) < 1.2 * max(ctx.losses[140:150]),
    )


# -- a one-off NaN from one module: capsule net normalising a blank image -------------------------


class PerImageScale(nn.Module):
    """Scales each image to a maximum of 1 (contrast normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.amax(dim=(1, 2, 3), keepdim=True)


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsNet(nn.Module):
    """Conv -> primary capsules -> digit capsules by routing-by-agreement (3 iterations)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.norm = PerImageScale()
        self.conv = nn.Conv2d(1, 16, 3)
        self.primary = nn.Conv2d(16, 8 * 4, 3, stride=2)
        self.routes = 8 * 2 * 2
        self.w = nn.Parameter(0.1 * torch.randn(1, self.routes, classes, 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.reshape(-1, 1, 8, 8))
        u = self.primary(F.relu(self.conv(x)))  # (b, 32, 2, 2)
        u = u.reshape(x.shape[0], 8, 4, 2, 2).permute(0, 1, 3, 4, 2).reshape(x.shape[0], -1, 4)
        u = squash(u)
        u_hat = (self.w @ u[:, :, None, :, None]).squeeze(-1)  # (b, routes, classes, 8)
        logits = torch.zeros(u_hat.shape[:3])
        for _ in range(3):
            c = logits.softmax(dim=2)
            v = squash((c[..., None] * u_hat).sum(1))  # (b, classes, 8)
            logits = logits + (u_hat * v[:, None]).sum(-1)
        return v.norm(dim=-1)


def margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, lengths.shape[1]).float()
    pos = t * F.relu(0.9 - lengths) ** 2
    neg = 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return (pos + neg).sum(1).mean()


@scenario("capsnet", "sgd", "nonfinite", where="norm", diverges=170, onset=170, heldout=True)
def h12_capsnet_blank_image(ctx: Context) -> None:
    """At step 170 one sample is a blank (all-zero) scan: the per-image contrast normalisation
    divides 0 by 0, the NaN flows into the margin loss, and the SGD step writes it into every
    weight."""
    gen = seeded(1209)
    model = CapsNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = x.clone()
            x[11] = 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        200,
        loss_fn=margin_loss,
        alter=alter,
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    ctx.check("loss fell first", ctx.losses[160] < ctx.losses[0] - 0.1)


# -- AMP overflow: RetNet-style decoder under fp16 autocast with a too-high initial scale ---------


class Retention(nn.Module):
    """Multi-scale retention in its parallel form: (Q K^T * D) V with a causal decay mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.norm = nn.GroupNorm(heads, dim)
        gammas = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32))
        self.register_buffer("log_gamma", gammas.log(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        n = torch.arange(t)
        dist = (n[:, None] - n[None, :]).float()
        decay = torch.where(dist >= 0, (dist * self.log_gamma[:, None, None]).exp(), 0.0)
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * decay
        y = (scores @ v).transpose(1, 2).reshape(b * t, d)
        y = self.norm(y.float()).reshape(b, t, d)
        return self.out(F.silu(self.gate(x)) * y)


class RetNetBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.retention = Retention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.retention(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RetNetDecoder(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(RetNetBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@scenario(
    "retnet_like",
    "adam",
    "amp_overflow",
    diverges=None,
    note="GradScaler started at 2^40 with a short growth interval",
    heldout=True,
)
def h12_retnet_amp_scale_too_high(ctx: Context) -> None:
    """fp16 autocast with a GradScaler whose initial scale was set to 2^40 ("bigger is safer")
    and growth interval 25: the first steps overflow and are skipped while the scale backs off,
    then every 25 steps the scale doubles into an overflow again. Benign: training goes on."""
    gen = seeded(1210)
    model = RetNetDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scale backed off 15+ times", drops + (ctx.scales[0] < 2.0**40) >= 15)
    ctx.check("loss fell", min(ctx.losses[-20:]) < ctx.losses[0] - 1.0)


# -- Adam's second moment poisoned: MobileBERT with one absurd sample weight ----------------------


def _mobilebert():
    from transformers import MobileBertConfig, MobileBertForSequenceClassification

    config = MobileBertConfig(
        vocab_size=128,
        embedding_size=16,
        hidden_size=32,
        true_hidden_size=16,
        intra_bottleneck_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_feedforward_networks=1,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return MobileBertForSequenceClassification(config)


@scenario(
    "hf_mobilebert",
    "adamw",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=120,
    note="one sample weight of 1e6 from a corrupt metadata field",
    heldout=True,
)
def h12_mobilebert_giant_sample_weight(ctx: Context) -> None:
    """Per-sample weights come from a metadata column; at step 120 one sample's weight reads 1e6
    (a unit bug). Its gradient, ~1e6 times the usual, lands in AdamW's second moment, which then
    shrinks every step for hundreds of steps: the classifier stops learning."""
    gen = seeded(1211)
    model = _mobilebert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    weights: list[torch.Tensor] = []
    per_sample: list[torch.Tensor] = []

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        w = torch.ones(len(y))
        if step == 120:
            w[3] = 1e6
        weights.append(w)
        return x, y

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = F.cross_entropy(logits, y, reduction="none")
        per_sample.append(per)
        return per.mean()

    def weighted(step: int, loss: torch.Tensor) -> torch.Tensor:
        return (weights[-1] * per_sample[-1]).mean()

    snaps: dict[int, list[torch.Tensor]] = {}

    def snap(step: int) -> None:
        if step in (20, 120, 160, 260):
            snaps[step] = [p.detach().clone() for p in model.parameters()]

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen),
        330,
        forward=lambda m, x: m(input_ids=x).logits,
        loss_fn=loss_fn,
        alter=alter,
        extra_loss=weighted,
        before=snap,
    )

    def moved(a: int, b: int) -> float:
        return float(sum((p - q).norm() ** 2 for p, q in zip(snaps[a], snaps[b], strict=True)))

    ctx.check("updates over 160-260 under 1/10 of 20-120", moved(160, 260) < 0.1 * moved(20, 120))
    ctx.check(
        "grad norm at 120 over 1000x typical",
        ctx.grad_norms[120] > 1e3 * max(ctx.grad_norms[100:120]),
    )
    ctx.check("loss had fallen before 120", min(ctx.losses[100:120]) < ctx.losses[0] - 0.1)


# -- a slow divergence: echo-state network with a readout decay of the wrong sign -----------------


class EchoStateNet(nn.Module):
    """A fixed random reservoir (spectral radius 0.9, not trained) and a trained linear readout."""

    def __init__(self, reservoir: int = 200, seed: int = 7) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(reservoir, reservoir, generator=g) * (
            torch.rand(reservoir, reservoir, generator=g) < 0.1
        )
        w = w * (0.9 / torch.linalg.eigvals(w).abs().max())
        self.register_buffer("w_res", w)
        self.register_buffer("w_in", torch.randn(reservoir, 1, generator=g) * 0.5)
        self.readout = nn.Linear(reservoir, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(u.shape[0], self.w_res.shape[0])
        for t in range(u.shape[1]):
            h = torch.tanh(u[:, t : t + 1] @ self.w_in.T + h @ self.w_res.T)
        return self.readout(h)


def _series_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Windows of a noisy sum of sines; target: the next value."""
    t = torch.arange(4000, dtype=torch.float32)
    s = torch.sin(0.07 * t) + 0.5 * torch.sin(0.23 * t + 1.0) + 0.3 * torch.sin(0.011 * t)
    s = s + 0.02 * torch.randn(len(t), generator=torch.Generator().manual_seed(3))
    while True:
        start = torch.randint(0, len(t) - length - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(length + 1)
        w = s[idx]
        yield w[:, :-1], w[:, -1:]


@scenario(
    "echo_state",
    "adamax",
    "loss_divergence",
    diverges="auto",
    onset=80,
    note="hand-written readout decay with the wrong sign",
    heldout=True,
)
def h12_esn_readout_decay_sign(ctx: Context) -> None:
    """From step 80 a hand-written decoupled weight decay on the readout multiplies it by 1.02
    instead of 0.98 each step; Adamax's bounded steps cannot pull it back, the predictions
    scale up and the regression loss creeps up over ~100+ steps."""
    gen = seeded(1212)
    model = EchoStateNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)

    def grow(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                for p in model.readout.parameters():
                    p.mul_(1.02)

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        360,
        loss_fn=F.mse_loss,
        classifier=False,
        before=grow,
    )
    ctx.check("loss fell before 80", min(ctx.losses[60:80]) < 0.5 * ctx.losses[0])


# -- healthy controls -----------------------------------------------------------------------------


def _rwkv():
    from transformers import RwkvConfig, RwkvForCausalLM

    config = RwkvConfig(
        vocab_size=128,
        context_length=32,
        hidden_size=32,
        num_hidden_layers=2,
        attention_hidden_size=32,
        intermediate_size=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return RwkvForCausalLM(config)


@scenario("hf_rwkv", "sg_lion", "healthy", heldout=True)
def h12_healthy_rwkv_lion(ctx: Context) -> None:
    gen = seeded(1213)
    model = _rwkv()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, text_batches(gen), 200, forward=_hf_logits, loss_fn=lm_loss)
    ctx.check("loss fell", min(ctx.losses[-20:]) < ctx.losses[0] - 1.0)


def _jamba():
    from transformers import JambaConfig, JambaForCausalLM

    config = JambaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_dt_rank=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return JambaForCausalLM(config)


@scenario("hf_jamba", "radam", "healthy", heldout=True)
def h12_healthy_jamba_radam(ctx: Context) -> None:
    gen = seeded(1214)
    model = _jamba()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, text_batches(gen), 200, forward=_hf_logits, loss_fn=lm_loss)
    ctx.check("loss fell", min(ctx.losses[-20:]) < ctx.losses[0] - 1.0)


def _levit():
    from transformers import LevitConfig, LevitForImageClassification

    config = LevitConfig(
        image_size=32,
        num_channels=1,
        kernel_size=3,
        stride=2,
        padding=1,
        patch_size=16,
        hidden_sizes=[32, 48],
        num_attention_heads=[2, 2],
        depths=[1, 1],
        key_dim=[8, 8],
        drop_path_rate=0,
        mlp_ratio=[2, 2],
        attention_ratio=[2, 2],
        down_ops=[["Subsample", 8, 4, 4, 2, 2]],
        num_labels=10,
    )
    return LevitForImageClassification(config)


@scenario("hf_levit", "adamax", "healthy", heldout=True)
def h12_healthy_levit_adamax(ctx: Context) -> None:
    gen = seeded(1215)
    model = _levit()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="bilinear")
        return m(pixel_values=img).logits

    fit(ctx, model, opt, digit_batches(gen, 64), 200, forward=forward)
    ctx.check("loss fell", min(ctx.losses[-20:]) < ctx.losses[0] - 1.0)


@scenario("dlrm", "sgd", "healthy", heldout=True)
def h12_healthy_dlrm_sgd(ctx: Context) -> None:
    gen = seeded(1216)
    model = DLRM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(
        ctx,
        model,
        opt,
        _ctr_batches(gen),
        300,
        forward=_ctr_forward,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-30:]) / 30 < sum(ctx.losses[:30]) / 30 - 0.05)
