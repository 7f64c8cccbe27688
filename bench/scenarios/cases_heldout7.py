"""Held-out scenarios, seventh set (``h7_``): families none of the other sets has.

Hugging Face Gemma2, StableLM and OLMo causal LMs from configs, DeBERTa-v2, ELECTRA and ALBERT
sequence classifiers from configs, a Hugging Face BART encoder-decoder from a config, a
Perceiver-style model (learned latents cross-attending to the input through
``F.scaled_dot_product_attention``), a graph attention network written here, a SIREN fitting a
generated signal, a pre-norm residual MLP, a convolutional autoencoder with transposed
convolutions, an InstanceNorm CNN, a highway network, a neural ODE (fixed-step Euler) and a
time-series ``nn.Transformer`` forecasting generated series. Optimizers: SGD (plain, momentum,
Nesterov), Adam, AdamW, RMSprop, RAdam, NAdam, Adagrad, and steadygrad.optim's AdaBelief
and Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out sets, and never run on steadygrad while it was
written: each scenario was adjusted, with a stand-in context that attaches nothing, only until
its own checks held (the fault really happened) or, for a healthy control, until it trained
normally.
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


def _lm(name: str, vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, **extra):
    """A small Hugging Face causal LM of the named family, built from a config (no download)."""
    import transformers as T

    common = dict(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    common.update(extra)
    config_cls, model_cls = {
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM),
        "stablelm": (T.StableLmConfig, T.StableLmForCausalLM),
        "olmo": (T.OlmoConfig, T.OlmoForCausalLM),
    }[name]
    config = config_cls(**common)
    # Gemma2 runs on the eager path (transformers refuses SDPA for it); the others on SDPA
    config._attn_implementation = "eager" if name == "gemma2" else "sdpa"
    return model_cls(config)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _fixed(x, y):
    while True:
        yield x, y


def _param_snapshot(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- attention-logit growth: Gemma2 with its attention scaled up and softcapping off ------------


@scenario(
    "hf_gemma2",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    onset=0,
    note="query_pre_attn_scalar=1 (scale 1, not 1/sqrt(d)), softcapping off, no weight decay",
)
def h7_attn_growth_gemma2(ctx: Context) -> None:
    """A Gemma2 config ported by hand: ``query_pre_attn_scalar=1`` (so q.k is scaled by 1, not
    1/sqrt(head_dim)) and the attention softcapping switched off. With AdamW at a high learning
    rate and no weight decay the query/key weights grow, the attention logits with them (to
    hundreds), and the attention rows saturate towards one-hot."""
    gen = seeded(701)
    model = _lm(
        "gemma2",
        head_dim=16,
        query_pre_attn_scalar=1,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    probe, _ = next(text_batches(torch.Generator().manual_seed(7), 8))
    seen = []

    def track(step: int) -> None:
        if step in (5, 250):
            seen.append(_max_attention_logit(model, probe))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=_logits,
        classifier=False,
        before=track,
    )
    with torch.no_grad():
        att = model(probe, output_attentions=True).attentions
    top = float(torch.stack([a.max(-1).values.mean() for a in att]).mean())
    ctx.check("attention logit bound grew 50x, past 200", seen[1] > max(50 * seen[0], 200))
    ctx.check("attention rows nearly one-hot (mean top weight > 0.9)", top > 0.9)


def _max_attention_logit(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |q.k| * scale over the layers, from the q/k projections (RoPE keeps norms, so
    ||q|| ||k|| * scale bounds the logit; the bound is what grows)."""
    cache: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("self_attn.q_proj") or name.endswith("self_attn.k_proj"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: cache.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    cfg = model.config
    scale = cfg.query_pre_attn_scalar**-0.5
    best = 0.0
    for name, q in cache.items():
        if not name.endswith("q_proj"):
            continue
        k = cache[name[: -len("q_proj")] + "k_proj"]
        b, t, _ = q.shape
        qh = q.reshape(b, t, -1, cfg.head_dim).norm(dim=-1)
        kh = k.reshape(b, t, -1, cfg.head_dim).norm(dim=-1)
        best = max(best, float(qh.max() * kh.max() * scale))
    return best


# -- output-logit divergence: StableLM with a z-loss whose sign is flipped ------------------------


@scenario(
    "hf_stablelm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=100,
    note="z-loss added with the wrong sign from step 100",
)
def h7_zloss_sign_stablelm(ctx: Context) -> None:
    """From step 100 an auxiliary z-loss (meant to keep log Z near 0) is added with the wrong
    sign: it rewards a large log-partition, so the output logits drift away together, step by
    step, until the loss follows them up."""
    gen = seeded(702)
    ZLOSS = 3e-2  # noqa: N806
    model = _lm("stablelm", hidden_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    probe, _ = next(text_batches(torch.Generator().manual_seed(8), 8))
    log_z = []
    last: list[torch.Tensor] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last[:] = [m(x).logits]
        return last[0]

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        z = torch.logsumexp(last[0].float(), -1)
        return loss - ZLOSS * (z**2).mean()  # meant: + ZLOSS * z^2

    def track(step: int) -> None:
        if step in (99, 299):
            with torch.no_grad():
                log_z.append(float(torch.logsumexp(model(probe).logits, -1).abs().mean()))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=forward,
        classifier=False,
        extra_loss=zloss,
        before=track,
    )
    ctx.check("|log Z| grew 10x after the bug", log_z[1] > 10 * max(log_z[0], 1.0))


# -- Adam's second moment poisoned: OLMo with one step's loss left scaled ------------------------


@scenario(
    "hf_olmo",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="one step's loss left multiplied by a 2**14 loss scale",
)
def h7_adam_poisoned_olmo(ctx: Context) -> None:
    """A manual loss-scaling path (meant for fp16) is taken on one step, 80, after a resume: the
    loss is multiplied by 2**14 and never unscaled. Adam's v keeps the squared spike for ~1000
    steps, and the updates of the next hundred steps are many times smaller."""
    gen = seeded(703)
    model = _lm("olmo")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    snaps = []

    def track(step: int) -> None:
        if step in (40, 70, 150, 180):
            snaps.append(_param_snapshot(model))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=_logits,
        classifier=False,
        extra_loss=lambda s, loss: loss * 2.0**14 if s == 80 else loss,
        before=track,
    )
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)
    ctx.check("loss stayed finite", all(math.isfinite(v) for v in ctx.losses))


# -- softmax collapse: a DeBERTa-v2 classifier with a temperature typo ---------------------------


def _deberta(labels: int = 2):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pooler_dropout=0.0,
        pooler_hidden_size=32,
    )
    return DebertaV2ForSequenceClassification(config)


@scenario(
    "hf_deberta_v2",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
    note="logits divided by a temperature of 0.02 (meant 2.0), small fixed set",
)
def h7_softmax_collapse_deberta(ctx: Context) -> None:
    """Fine-tuning on a small fixed set of 64 sequences with the logits divided by 0.02 (a
    temperature written as 0.02 for 2.0): most rows' float32 softmax rounds to exactly one-hot
    and their gradient to exactly zero."""
    gen = seeded(704)
    x, y = next(bert_batches(gen, 64))
    model = _deberta()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fwd(m: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return m(inp).logits / 0.02

    fit(ctx, model, opt, _fixed(x, y), 200, forward=fwd)
    with torch.no_grad():
        ctx.check("half the rows collapsed", collapsed_fraction(fwd(model, x), y) > 0.5)


# -- sharpness: a pre-norm residual MLP whose step schedule multiplies instead of divides --------


class PreNormBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class PreNormMLP(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(64, dim)
        self.blocks = nn.Sequential(*(PreNormBlock(dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))))


@scenario(
    "prenorm_residual_mlp",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="ExponentialLR with gamma=1.02 (meant 0.98) after a constant phase of 100 steps",
)
def h7_lr_raised_prenorm_mlp(ctx: Context) -> None:
    """A schedule of 100 constant steps then exponential decay, written with ``gamma=1.02``
    instead of 0.98: from step 100 the learning rate rises 2% a step, crosses 2/sharpness some
    hundred steps later and the run blows up."""
    gen = seeded(705)
    model = PreNormMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=100),
            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.02),
        ],
        milestones=[100],
    )
    calls = [0]

    def schedule(step: int) -> None:
        while calls[0] < step:
            sched.step()
            calls[0] += 1

    fit(ctx, model, opt, digit_batches(gen), 360, before=schedule)
    ctx.check("trained before the raise", ctx.losses[99] < 0.5 * ctx.losses[0])


# -- exploding gradients: a highway network with one layer's decay sign flipped ------------------


class HighwayLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.H = nn.Linear(dim, dim)
        self.T = nn.Linear(dim, dim)
        nn.init.constant_(self.T.bias, -2.0)  # carry-biased gates (Srivastava et al. 2015)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.T(x))
        return t * F.relu(self.H(x)) + (1 - t) * x


class Highway(nn.Module):
    def __init__(self, dim: int = 48, depth: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(64, dim)
        self.layers = nn.ModuleList(HighwayLayer(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@scenario(
    "highway",
    "sgd_mom",
    "exploding_gradients",
    where="layers.5",
    diverges="auto",
    heldout=True,
    onset=60,
    note="per-layer decay list with one negative entry: layers.5 grows 6% a step from 60",
)
def h7_explode_highway(ctx: Context) -> None:
    """Per-layer decoupled weight decay from a hand-written list whose entry for layer 5 lost
    its sign: from step 60 that layer's weights grow 6% a step. Its Jacobian grows with them,
    the gradients through it grow step after step, and SGD's steps with them, until the run
    explodes."""
    gen = seeded(706)
    model = Highway()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    decay = [1e-3] * 8
    decay[5] = -6e-2

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for i, layer in enumerate(model.layers):
                    layer.H.weight.mul_(1 - decay[i])

    fit(ctx, model, opt, digit_batches(gen), 300, before=bug)
    g = ctx.grad_norms
    early = sum(g[40:60]) / 20
    late = [v for v in g[150:] if math.isfinite(v)]
    ctx.check("gradients grew 10x after the bug", bool(late) and max(late) > 10 * early)


# -- loss of plasticity: an InstanceNorm CNN under a sparsity penalty 100x too strong ------------


class InstanceNormCNN(nn.Module):
    def __init__(self, width: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(width, affine=True)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(2 * width, affine=True)
        self.fc = nn.Linear(2 * width * 16, 64)
        self.head = nn.Linear(64, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x.reshape(-1, 1, 8, 8))))
        x = F.max_pool2d(F.relu(self.norm2(self.conv2(x))), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    "instancenorm_cnn",
    "sgd",
    "loss_of_plasticity",
    where="fc",
    diverges=None,
    heldout=True,
    onset=100,
    note="L1 activation-sparsity penalty on fc ramped from step 100 to 10.0 (meant 0.01)",
)
def h7_dead_sparsity_instancenorm(ctx: Context) -> None:
    """An InstanceNorm CNN with a hidden fully connected layer. An L1 sparsity penalty on fc's
    ReLU activations is switched on at step 100 and ramped over 50 steps to 10.0 (a typo for
    0.01): it drives fc's pre-activations below zero for every input, three quarters of its
    units die and, getting no gradient, never come back."""
    gen = seeded(707)
    model = InstanceNormCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    feats: list[torch.Tensor] = []
    model.fc.register_forward_hook(lambda m, i, o: feats.__setitem__(slice(None), [o]))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        strength = 10.0 * min(1.0, (step - 100) / 50)
        return loss + strength * F.relu(feats[0]).mean()

    held_out, _ = next(digit_batches(torch.Generator().manual_seed(77), 256))
    alive = []

    def track(step: int) -> None:
        if step == 99:
            with torch.no_grad():
                alive.append(dead_fraction(model.features(held_out)))

    fit(ctx, model, opt, digit_batches(gen), 320, extra_loss=penalty, before=track)
    ctx.check("under a tenth of fc's units dead before", alive[0] < 0.1)
    x = held_out
    with torch.no_grad():
        ctx.check("half of fc's units dead", dead_fraction(model.features(x)) >= 0.5)


# -- a frozen layer: a conv autoencoder whose optimizer misses the first decoder layer -----------


class ConvAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x.reshape(-1, 1, 8, 8)))).flatten(1)


def _reconstruct(gen: torch.Generator, batch: int = 64):
    for x, _ in digit_batches(gen, batch):
        yield x, x


@scenario(
    "conv_autoencoder",
    "rmsprop",
    "update_ratio_out_of_range",
    where="decoder.0",
    diverges=None,
    heldout=True,
    note="optimizer built from decoder[1:] (index 0 taken for an activation)",
)
def h7_frozen_deconv_autoencoder(ctx: Context) -> None:
    """The optimizer is built from ``encoder.parameters()`` and ``decoder[1:].parameters()``
    (the author thought index 0 was an activation): the first transposed convolution gets its
    gradient every step but is never updated."""
    gen = seeded(708)
    model = ConvAutoencoder()
    params = list(model.encoder.parameters()) + list(model.decoder[1:].parameters())
    opt = torch.optim.RMSprop(params, lr=1e-3)
    before = model.decoder[0].weight.detach().clone()
    fit(ctx, model, opt, _reconstruct(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("decoder.0 unchanged", torch.equal(before, model.decoder[0].weight))
    ctx.check("the rest learned", ctx.losses[-1] < 0.7 * ctx.losses[0])


# -- a data outlier: a SIREN fitting a signal, one batch of saturated sensor readings -------------


class Sine(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, w0: float = 30.0, first: bool = False):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.w0 = w0
        bound = 1 / fan_in if first else math.sqrt(6 / fan_in) / w0
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(Sine(1, hidden, first=True), Sine(hidden, hidden))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x))


def _signal(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(6 * t) + 0.5 * torch.sin(17 * t + 1.0) + 0.25 * torch.cos(41 * t)


def _signal_batches(gen: torch.Generator, batch: int = 128):
    while True:
        t = torch.rand(batch, 1, generator=gen) * 2 - 1
        yield t, _signal(t)


@scenario(
    "siren",
    "adam",
    "data_outlier",
    diverges=180,
    heldout=True,
    onset=180,
    note="one batch with 6 saturated readings (60.0) at step 180",
)
def h7_outlier_siren(ctx: Context) -> None:
    """A SIREN fitting a generated 1-D signal from sampled coordinates; at step 180 six readings
    of one batch come from a saturated sensor (60.0 where the signal is within +-2)."""
    gen = seeded(709)
    model = Siren()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 180:
            y = y.clone()
            y[:6] = 60.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _signal_batches(gen),
        260,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("fitted before", ctx.losses[170] < 0.2 * ctx.losses[0])
    ctx.check("loss spiked at 180", ctx.losses[180] > 20 * max(ctx.losses[170:180]))


# -- a one-off NaN: a GAT on a graph that arrives without self-loops and with an isolated node ---


class GATLayer(nn.Module):
    """One graph-attention layer (Velickovic et al. 2018), written here: attention over each
    node's neighbours given by a dense adjacency mask."""

    def __init__(self, fan_in: int, fan_out: int, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.dim = heads, fan_out
        self.proj = nn.Linear(fan_in, heads * fan_out, bias=False)
        self.att_src = nn.Parameter(torch.randn(heads, fan_out) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(heads, fan_out) * 0.1)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.proj(x).reshape(b, n, self.heads, self.dim)
        src = (h * self.att_src).sum(-1)  # (b, n, heads)
        dst = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(dst[:, :, None] + src[:, None, :], 0.2)  # (b, i, j, heads)
        e = e.masked_fill(~adj[..., None], float("-inf"))
        alpha = torch.softmax(e, dim=2)
        return torch.einsum("bijh,bjhd->bihd", alpha, h).reshape(b, n, -1)


class GAT(nn.Module):
    def __init__(self, fan_in: int = 8, hidden: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.gat1 = GATLayer(fan_in, hidden)
        self.gat2 = GATLayer(2 * hidden, hidden)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, inputs) -> torch.Tensor:
        x, adj = inputs
        h = F.elu(self.gat1(x, adj))
        h = F.elu(self.gat2(h, adj))
        return self.head(h).reshape(-1, self.head.out_features)


def _graph_batches(gen: torch.Generator, batch: int = 16, nodes: int = 12):
    """Random graphs; a node's label: is the feature-0 sum over its neighbourhood positive?
    The collate adds self-loops."""
    while True:
        x = torch.randn(batch, nodes, 8, generator=gen)
        a = torch.rand(batch, nodes, nodes, generator=gen) < 0.25
        adj = a | a.transpose(1, 2)
        adj = adj | torch.eye(nodes, dtype=torch.bool)
        y = ((adj.float() @ x[..., :1]).squeeze(-1) > 0).long().reshape(-1)
        yield (x, adj), y


@scenario(
    "gat",
    "sg_adabelief",
    "nonfinite",
    where=("gat1",),
    diverges=150,
    heldout=True,
    onset=150,
    note="one cached graph without self-loops, one node isolated, at step 150",
)
def h7_nan_isolated_node_gat(ctx: Context) -> None:
    """At step 150 one graph comes from a cache written before the collate added self-loops, and
    one of its nodes has no edges: its attention row is all -inf and the softmax in gat1 returns
    NaN for it, which then reaches the loss and the weights."""
    gen = seeded(710)
    model = GAT()
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3, fused=False)

    def alter(step: int, inputs, y: torch.Tensor):
        if step == 150:
            x, adj = inputs
            adj = adj.clone()
            adj[3] &= ~torch.eye(adj.shape[1], dtype=torch.bool)  # no self-loops in that graph
            adj[3, 5, :] = False  # and node 5 isolated
            adj[3, :, 5] = False
            inputs = (x, adj)
        return inputs, y

    fit(ctx, model, opt, _graph_batches(gen), 190, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, not after", all(finite[:150]) and not finite[150])
    ctx.check("learned before", sum(ctx.losses[140:150]) / 10 < 0.8 * ctx.losses[0])


# -- AMP overflow: a time-series nn.Transformer under float16 autocast with a GradScaler ---------


class Forecaster(nn.Module):
    """Encoder-decoder nn.Transformer: 24 past values in, the next 8 out (teacher forcing)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(torch.randn(32, dim) * 0.02)
        self.transformer = nn.Transformer(
            d_model=dim,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=64,
            dropout=0.0,
            batch_first=True,
        )
        self.out = nn.Linear(dim, 1)

    def forward(self, inputs) -> torch.Tensor:
        past, future_in = inputs
        src = self.embed(past[..., None]) + self.pos[: past.shape[1]]
        tgt = self.embed(future_in[..., None]) + self.pos[: future_in.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.out(self.transformer(src, tgt, tgt_mask=mask)).squeeze(-1)


def _series_batches(gen: torch.Generator, batch: int = 32, past: int = 24, ahead: int = 8):
    t = torch.arange(past + ahead, dtype=torch.float32)
    while True:
        period = 6 + 10 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        s = torch.sin(2 * math.pi * t / period + phase)
        s = s + 0.05 * torch.randn(s.shape, generator=gen)
        yield (s[:, :past], s[:, past - 1 : -1]), s[:, past:]


@scenario(
    "ts_transformer",
    "adamw",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="float16 autocast, GradScaler from 2**24 growing every 25 steps: benign overflows",
)
def h7_amp_overflow_forecaster(ctx: Context) -> None:
    """float16 autocast on CPU with a GradScaler started at 2**24 and growing every 25 steps:
    the scaled gradients overflow float16 now and then, the scaler skips those steps and halves
    its scale; training carries on."""
    gen = seeded(711)
    model = Forecaster()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**24) >= 2)
    ctx.check(
        "loss finite and fell",
        all(map(math.isfinite, ctx.losses)) and ctx.losses[-1] < 0.5 * ctx.losses[0],
    )


# -- a slow divergence with no mechanism: a neural ODE whose cached targets are rescaled in place --


class ODEFunc(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class NeuralODE(nn.Module):
    """Encode, integrate dh/dt = f(h) with fixed-step Euler over t in [0, 1], read out."""

    def __init__(self, fan_in: int = 4, dim: int = 16, steps: int = 8) -> None:
        super().__init__()
        self.encode = nn.Linear(fan_in, dim)
        self.field = ODEFunc(dim)
        self.readout = nn.Linear(dim, 1)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        dt = 1.0 / self.steps
        for _ in range(self.steps):
            h = h + dt * self.field(h)
        return self.readout(h)


class _ScaledTargets:
    """A dataset whose ``__getitem__`` converts units on the cached target tensor in place
    (``y *= factor``) from a given step: every draw rescales the stored targets again."""

    def __init__(self, gen: torch.Generator, start: int, factor: float, n: int = 512):
        self.x = torch.randn(n, 4, generator=gen)
        x = self.x
        self.y = (torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] - 0.5 * x[:, 3:4]).clone()
        self.gen, self.start, self.factor = gen, start, factor

    def batches(self, batch: int = 64):
        step = 0
        while True:
            idx = torch.randint(0, len(self.y), (batch,), generator=self.gen)
            if step >= self.start:
                self.y.mul_(self.factor)  # the bug: meant to scale a copy, once
            step += 1
            yield self.x[idx], self.y[idx].clone()


@scenario(
    "neural_ode",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="cached targets rescaled in place by 1% every draw from step 100",
)
def h7_slow_divergence_target_scale_ode(ctx: Context) -> None:
    """A neural ODE regressor whose dataset, from step 100 (when a unit conversion was switched
    on), rescales its cached target tensor in place on every draw: the targets drift up 0.8% a
    step, faster than the model follows, and the MSE creeps up over ~100 steps and keeps
    climbing. Nothing in the model is unstable; the climb is all there is."""
    gen = seeded(712)
    data = _ScaledTargets(gen, start=101, factor=1.008)  # draw 0 is the probe batch
    model = NeuralODE()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, data.batches(128), 400, loss_fn=F.mse_loss, classifier=False)
    ctx.check("fitted before the bug", sum(ctx.losses[90:100]) < 0.8 * sum(ctx.losses[:10]))
    ctx.check("loss 10x up at the end", sum(ctx.losses[-10:]) > 10 * sum(ctx.losses[90:100]))
    ctx.check("loss finite throughout", all(map(math.isfinite, ctx.losses)))


# -- healthy controls -----------------------------------------------------------------------------


class Perceiver(nn.Module):
    """Learned latents cross-attend to the 64 pixels of a digit (value + learned position), then
    self-attend; mean-pooled latents are classified. Attention through SDPA."""

    def __init__(self, dim: int = 32, latents: int = 8, heads: int = 2, classes: int = 10):
        super().__init__()
        self.heads = heads
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.02)
        self.pixel = nn.Linear(1, dim)
        self.pos = nn.Parameter(torch.randn(64, dim) * 0.02)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.self_norm = nn.LayerNorm(dim)
        self.self_qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.head = nn.Linear(dim, classes)

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        b, t, d = z.shape
        return z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, z: torch.Tensor) -> torch.Tensor:
        b, h, t, d = z.shape
        return z.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.pixel(x[..., None]) + self.pos
        lat = self.latents.expand(x.shape[0], -1, -1)
        k, v = self.cross_kv(self.cross_norm(inp)).chunk(2, -1)
        q = self.cross_q(lat)
        att = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        lat = lat + self.cross_out(self._merge(att))
        q, k, v = self.self_qkv(self.self_norm(lat)).chunk(3, -1)
        att = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        lat = lat + self.self_out(self._merge(att))
        lat = lat + self.mlp(lat)
        return self.head(lat.mean(1))


@scenario("perceiver", "nadam", "healthy", heldout=True)
def h7_healthy_perceiver_nadam(ctx: Context) -> None:
    gen = seeded(721)
    model = Perceiver()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, digit_batches(gen), 220)
    ctx.check("learned", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])


def _bart():
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    return BartForConditionalGeneration(config)


def _reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 10):
    """Source: random tokens; target: the source reversed; decoder input shifted right."""
    while True:
        src = torch.randint(3, 64, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec_in = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


@scenario("hf_bart", "adamw", "healthy", heldout=True, note="sequence reversal")
def h7_healthy_bart_adamw(ctx: Context) -> None:
    gen = seeded(722)
    model = _bart()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def fwd(m: nn.Module, inputs) -> torch.Tensor:
        src, dec_in = inputs
        return m(input_ids=src, decoder_input_ids=dec_in).logits

    fit(ctx, model, opt, _reverse_batches(gen), 250, loss_fn=lm_loss, forward=fwd, classifier=False)
    ctx.check("learned", sum(ctx.losses[-10:]) / 10 < 0.7 * ctx.losses[0])


@scenario("hf_electra", "sg_lion", "healthy", heldout=True)
def h7_healthy_electra_lion(ctx: Context) -> None:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    gen = seeded(723)
    config = ElectraConfig(
        vocab_size=128,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ElectraForSequenceClassification(config)
    opt = sgo.Lion(model.parameters(), lr=2e-4, weight_decay=0.1, fused=False)
    fit(ctx, model, opt, bert_batches(gen, 64), 250, forward=_logits)
    ctx.check("learned", sum(ctx.losses[-20:]) / 20 < 0.7 * ctx.losses[0])


@scenario("hf_albert", "adagrad", "healthy", heldout=True)
def h7_healthy_albert_adagrad(ctx: Context) -> None:
    from transformers import AlbertConfig, AlbertForSequenceClassification

    gen = seeded(724)
    config = AlbertConfig(
        vocab_size=128,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    model = AlbertForSequenceClassification(config)
    opt = torch.optim.Adagrad(model.parameters(), lr=1.5e-3)
    fit(ctx, model, opt, bert_batches(gen, 64), 250, forward=_logits)
    ctx.check("learned", sum(ctx.losses[-20:]) / 20 < 0.7 * ctx.losses[0])
