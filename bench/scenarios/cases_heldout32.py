"""Held-out set 32 (``h32_``): new families, written without reading steadygrad's detectors,
its diagnosis or its monitor, nor any other held-out file, and never run on steadygrad while it
was written (each scenario was tuned only with a stand-in context that attaches nothing, until
its own checks held or, for a healthy control, until it trained normally).

Families: Hugging Face Gemma (v1) causal LM, MVP encoder-decoder, MobileNetV1 image classifier,
GLPN depth estimation (regression) and NLLB-MoE encoder-decoder from configs; ChebNet spectral
graph classifier, R-GCN relational graph network, contrastive predictive coding (CPC) on
generated sequences, dueling double-DQN on a generated task, NODE (neural oblivious decision
ensembles) on breast cancer, ReZero transformer encoder (regression), sub-pixel 1-D audio
upsampler (reshape, no ``nn.PixelShuffle``; fp16 autocast).

Optimizers: SGD, SGD with momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam,
Adamax, steadygrad's AdaBelief and Lion.
"""

from __future__ import annotations

import copy
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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- Hugging Face Gemma (v1) causal LM ------------------------------------------------------------


def _gemma(layers: int = 2):
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        attn_implementation="sdpa",
    )
    return GemmaForCausalLM(config)


def _gemma_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _largest_attention_logit(model: nn.Module, x: torch.Tensor, layer: int) -> float:
    """max |q.k| / sqrt(d) of one layer on a batch (before rotary: rotation keeps the norms,
    so this bounds the logits the layer can form)."""
    attn = model.model.layers[layer].self_attn
    seen = {}
    handle = attn.q_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    with torch.no_grad():
        model(input_ids=x)
        h = seen["h"]
        b, t, _ = h.shape
        q = attn.q_proj(h).reshape(b, t, -1, 16)
        k = attn.k_proj(h).reshape(b, t, -1, 16)
        logits = torch.einsum("bqhd,bkd->bhqk", q, k[:, :, 0]) / 4.0
    handle.remove()
    return float(logits.abs().max())


@scenario(
    "h32_hf_gemma_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.1.self_attn", "model.layers.1.self_attn.q_proj"),
    diverges=None,
    onset=60,
    heldout=True,
)
def h32_attn_growth_gemma_adamw(ctx: Context) -> None:
    """A port of a muP-style "attention multiplier" applies it to layer 1's query and key
    projections on every step (meant: once, at init): from step 60 both weights grow by 1.5% a
    step, faster than AdamW (no decay on them) pulls them back, and layer 1's attention logits
    grow until its softmax saturates."""
    gen = seeded(3201)
    model = _gemma()
    attn = model.model.layers[1].self_attn
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    probe = next(text_batches(torch.Generator().manual_seed(1), 16, 32))[0]
    seen = {}

    def bug(step: int) -> None:
        if step == 60:
            seen["before"] = _largest_attention_logit(model, probe, 1)
        if step >= 60:
            with torch.no_grad():
                attn.q_proj.weight.mul_(1.015)
                attn.k_proj.weight.mul_(1.015)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        300,
        loss_fn=lm_loss,
        before=bug,
        forward=_gemma_logits,
        classifier=False,
    )
    after = _largest_attention_logit(model, probe, 1)
    ctx.check("layer 1's largest attention logit grew 20x", after > 20 * seen["before"])


@scenario(
    "h32_hf_gemma_lm", "adamw", "healthy", note="linear warm-up then cosine decay", heldout=True
)
def h32_healthy_gemma_adamw(ctx: Context) -> None:
    gen = seeded(3202)
    model = _gemma()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 220

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 20)
        opt.param_groups[0]["lr"] = 3e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        loss_fn=lm_loss,
        before=schedule,
        forward=_gemma_logits,
        classifier=False,
    )
    ctx.check("loss fell", _median(ctx.losses[-10:]) < _median(ctx.losses[:10]) - 1.0)


# -- Hugging Face MVP encoder-decoder -------------------------------------------------------------


def _mvp():
    from transformers import MvpConfig, MvpForConditionalGeneration

    config = MvpConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        use_prompt=False,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
    )
    return MvpForConditionalGeneration(config)


def _reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 10, vocab: int = 64):
    """Reverse a sequence of tokens (4..vocab-1); the decoder input is the target shifted right."""
    while True:
        src = torch.randint(4, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield (src, dec), tgt


def _seq2seq_logits(m: nn.Module, x) -> torch.Tensor:
    return m(input_ids=x[0], decoder_input_ids=x[1]).logits


@scenario(
    "h32_hf_mvp_seq2seq",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=50,
    heldout=True,
)
def h32_zloss_sign_mvp_adam(ctx: Context) -> None:
    """An auxiliary z-loss (meant: + 3e-2 * log(Z)^2, to keep the output log-partition near 0)
    is added from step 50 with its sign flipped: it rewards a large log Z, and the decoder's
    output logits drift up without bound while the task loss still falls at first."""
    gen = seeded(3203)
    model = _mvp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    logz = []

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss if step < 50 else loss - 3e-2 * seen["logz"].pow(2).mean()

    seen = {}

    def forward(m: nn.Module, x) -> torch.Tensor:
        logits = _seq2seq_logits(m, x)
        seen["logz"] = torch.logsumexp(logits.float(), -1)
        logz.append(float(seen["logz"].detach().mean()))
        return logits

    fit(
        ctx,
        model,
        opt,
        _reverse_batches(gen),
        260,
        loss_fn=lm_loss,
        extra_loss=bug,
        forward=forward,
        classifier=False,
    )
    logz = logz[1:]  # the first value is the probe batch's
    ctx.check("mean log Z rose by 30 after step 50", max(logz[50:]) > logz[50] + 30)


# -- Hugging Face MobileNetV1 image classifier ----------------------------------------------------


def _mobilenet_v1():
    from transformers import MobileNetV1Config, MobileNetV1ForImageClassification

    config = MobileNetV1Config(
        num_channels=1,
        image_size=16,
        depth_multiplier=0.25,
        min_depth=4,
        num_labels=10,
        classifier_dropout_prob=0.0,
    )
    return MobileNetV1ForImageClassification(config)


def _digit_images(gen: torch.Generator, batch: int = 32):
    """Digits upsampled to 16x16, scaled to [-1, 1]."""
    for x, y in digit_batches(gen, batch):
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear")
        yield img * 2 - 1, y


def _image_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x).logits


def _fixed(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


@scenario(
    "h32_hf_mobilenet_v1_image",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
)
def h32_softmax_collapse_mobilenet_v1_adam(ctx: Context) -> None:
    """Fine-tuning on a small fixed set of 128 digits with the logits divided by a
    temperature of 0.02 (meant 2.0, a distillation setting): the float32 softmax of more and
    more rows rounds to exactly one-hot and their gradient to exactly zero."""
    gen = seeded(3204)
    x, y = next(_digit_images(gen, 128))
    model = _mobilenet_v1()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _image_logits(m, x) / 0.02

    fit(ctx, model, opt, _fixed(x, y), 150, forward=forward)
    model.eval()
    with torch.no_grad():
        ctx.check("a tenth of the rows collapsed", collapsed_fraction(forward(model, x), y) > 0.1)


@scenario("h32_hf_mobilenet_v1_image", "sgd_nesterov", "healthy", heldout=True)
def h32_healthy_mobilenet_v1_nesterov(ctx: Context) -> None:
    gen = seeded(3205)
    model = _mobilenet_v1()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    fit(ctx, model, opt, _digit_images(gen), 200, forward=_image_logits)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * _median(ctx.losses[:10]))


# -- Hugging Face GLPN depth estimation (regression) ----------------------------------------------


def _glpn():
    from transformers import GLPNConfig, GLPNForDepthEstimation

    config = GLPNConfig(
        num_channels=1,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[4, 2, 1, 1],
        hidden_sizes=[8, 16, 16, 32],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16,
        max_depth=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return GLPNForDepthEstimation(config)


def _depth_scenes(gen: torch.Generator, batch: int = 8, size: int = 32):
    """A tilted floor (depth 2..8) with one box in front (depth 1.5); the image is shading that
    falls off with depth plus a little noise."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    while True:
        tilt = torch.rand(batch, 1, 1, generator=gen)
        depth = 2 + 6 * (tilt * ys + (1 - tilt) * xs)
        c = torch.randint(4, size - 12, (batch, 2), generator=gen)
        for i in range(batch):
            depth[i, c[i, 0] : c[i, 0] + 8, c[i, 1] : c[i, 1] + 8] = 1.5
        image = 2.0 / depth + 0.05 * torch.randn(depth.shape, generator=gen)
        yield image[:, None], depth


def _depth(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x).predicted_depth


@scenario(
    "h32_hf_glpn_depth",
    "rmsprop",
    "sharpness_above_limit",
    diverges="auto",
    onset=100,
    heldout=True,
)
def h32_lr_raised_glpn_rmsprop(ctx: Context) -> None:
    """Resumed at step 100 from a checkpoint whose scheduler state was not restored: the base
    learning rate comes back 30x higher (3e-2 for 1e-3) and the depth regressor's steps
    overshoot."""
    gen = seeded(3206)
    model = _glpn()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def resume(step: int) -> None:
        if step == 100:
            opt.param_groups[0]["lr"] = 3e-2

    fit(
        ctx,
        model,
        opt,
        _depth_scenes(gen),
        200,
        loss_fn=F.mse_loss,
        before=resume,
        forward=_depth,
        classifier=False,
    )
    before = min(_median(ctx.losses[i : i + 5]) for i in range(80, 95))
    after = max(_median(ctx.losses[i : i + 5]) for i in range(100, 195))
    ctx.check("loss at least doubled after the raise", after > 2 * before)


# -- Hugging Face NLLB-MoE encoder-decoder --------------------------------------------------------


def _nllb_moe():
    from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration

    config = NllbMoeConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        moe_token_dropout=0.0,
        num_experts=4,
        expert_capacity=64,
        encoder_sparse_step=2,
        decoder_sparse_step=2,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return NllbMoeForConditionalGeneration(config)


_NLLB_EXPERTS = tuple(
    f"model.{side}.layers.1.ffn.experts.expert_{e}"
    for side in ("encoder", "decoder")
    for e in range(4)
)


@scenario(
    "h32_hf_nllb_moe_seq2seq",
    "adam",
    "update_ratio_out_of_range",
    where=_NLLB_EXPERTS,
    diverges=None,
    heldout=True,
)
def h32_frozen_experts_nllb_moe_adam(ctx: Context) -> None:
    """A two-stage recipe (train the dense part first, then everything) builds its expert
    parameter group with the first stage's learning-rate multiplier, 0.0, and it is never
    reset: the experts of both MoE layers get gradients but never move."""
    gen = seeded(3207)
    model = _nllb_moe()
    experts = [p for n, p in model.named_parameters() if ".experts." in n]
    dense = [p for n, p in model.named_parameters() if ".experts." not in n]
    opt = torch.optim.Adam([{"params": dense}, {"params": experts, "lr": 0.0}], lr=3e-3)
    before = torch.cat([p.detach().flatten() for p in experts]).clone()
    fit(
        ctx,
        model,
        opt,
        _reverse_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_seq2seq_logits,
        classifier=False,
    )
    after = torch.cat([p.detach().flatten() for p in experts])
    ctx.check("experts unchanged", torch.equal(before, after))


# -- ChebNet spectral graph classifier ------------------------------------------------------------


class ChebConv(nn.Module):
    """Chebyshev spectral filter of order K on dense graphs: sum_k T_k(L~) X W_k."""

    def __init__(self, d_in: int, d_out: int, order: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(order, d_in, d_out) / math.sqrt(order * d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor, lap: torch.Tensor) -> torch.Tensor:
        t_prev, t_cur = x, lap @ x
        out = t_prev @ self.weights[0] + t_cur @ self.weights[1]
        for k in range(2, self.weights.shape[0]):
            t_prev, t_cur = t_cur, 2 * lap @ t_cur - t_prev
            out = out + t_cur @ self.weights[k]
        return out + self.bias


class ChebNet(nn.Module):
    """Two Chebyshev layers, mean readout, linear head. ``lambda_max`` rescales the combinatorial
    Laplacian to [-1, 1]: ``L~ = 2 L / lambda_max - I``."""

    def __init__(self, d_in: int = 4, width: int = 16, classes: int = 2, order: int = 6):
        super().__init__()
        self.cheb1 = ChebConv(d_in, width, order)
        self.cheb2 = ChebConv(width, width, order)
        self.head = nn.Linear(width, classes)
        self.lambda_max: float | None = None

    def forward(self, batch) -> torch.Tensor:
        x, adj = batch
        lap = torch.diag_embed(adj.sum(-1)) - adj
        if self.lambda_max is None:  # the bug: estimated once, on the first batch, and cached
            self.lambda_max = float(torch.linalg.eigvalsh(lap).max())
        eye = torch.eye(adj.shape[-1])
        scaled = 2 * lap / self.lambda_max - eye
        h = F.relu(self.cheb1(x, scaled))
        h = F.relu(self.cheb2(h, scaled))
        return self.head(h.mean(1))


def _cheb_graphs(gen: torch.Generator, density, batch: int = 16, nodes: int = 20):
    """Random graphs with two communities or one; the label says which. ``density(step)`` is
    the edge probability (a curriculum)."""
    step = 0
    while True:
        p = density(step)
        y = torch.randint(0, 2, (batch,), generator=gen)
        side = torch.arange(nodes) < nodes // 2
        same = side[:, None] == side[None, :]
        prob = torch.where(y[:, None, None].bool() & ~same, 0.1 * p, p).expand(batch, -1, -1)
        upper = torch.triu(torch.rand(batch, nodes, nodes, generator=gen) < prob, 1).float()
        adj = upper + upper.transpose(1, 2)
        x = torch.cat([adj.sum(-1, keepdim=True) / nodes, torch.ones(batch, nodes, 3)], -1)
        yield (x, adj), y
        step += 1


@scenario(
    "h32_chebnet_graph",
    "sgd",
    "exploding_gradients",
    where=("cheb1", "cheb2"),
    diverges="auto",
    onset=60,
    heldout=True,
)
def h32_exploding_chebnet_sgd(ctx: Context) -> None:
    """The Laplacian's largest eigenvalue is estimated once, on the first (sparse) batch, and
    cached; from step 60 a curriculum makes the graphs denser, their eigenvalues outgrow the
    cached bound, the rescaled Laplacian leaves [-1, 1] and the Chebyshev polynomials of it grow
    geometrically in the order: activations and gradients of both filter layers grow."""
    gen = seeded(3208)
    model = ChebNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def density(step: int) -> float:
        return 0.12 if step < 60 else min(0.95, 0.12 + 0.83 * (step - 60) / 200)

    fit(ctx, model, opt, _cheb_graphs(gen, density), 300)
    early = _median(ctx.grad_norms[20:60])
    late = max(g for g in ctx.grad_norms if math.isfinite(g))
    ctx.check("gradient norm grew 100x", late > 100 * early)


# -- R-GCN relational graph network ---------------------------------------------------------------


class RGCNLayer(nn.Module):
    """h' = h W_0 + sum_r (1 / c_r) A_r h W_r + b (Schlichtkrull et al. 2018, no basis sharing)."""

    def __init__(self, d_in: int, d_out: int, relations: int) -> None:
        super().__init__()
        self.self_loop = nn.Linear(d_in, d_out)
        self.rel = nn.Parameter(torch.randn(relations, d_in, d_out) / math.sqrt(d_in))

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        norm = adj.sum(-1, keepdim=True).clamp(min=1)
        msgs = torch.einsum("rij,jd,rde->rie", adj / norm, h, self.rel)
        return self.self_loop(h) + msgs.sum(0)


class RGCN(nn.Module):
    def __init__(self, d_in: int = 8, width: int = 32, classes: int = 4, relations: int = 3):
        super().__init__()
        self.rgcn1 = RGCNLayer(d_in, width, relations)
        self.rgcn2 = RGCNLayer(width, width, relations)
        self.head = nn.Linear(width, classes)

    def forward(self, batch) -> torch.Tensor:
        x, adj = batch
        h = F.relu(self.rgcn1(x, adj))
        h = F.relu(self.rgcn2(h, adj))
        return self.head(h)


def _relational_graph(gen: torch.Generator, nodes: int = 96, relations: int = 3):
    """One generated multi-relational graph; a node's class is the class of the features of
    the nodes it points to along relation 0, shifted by the relation-1 neighbours' majority."""
    x = torch.randn(nodes, 8, generator=gen)
    adj = (torch.rand(relations, nodes, nodes, generator=gen) < 0.06).float()
    base = x[:, :4].argmax(1)
    via0 = (adj[0] @ F.one_hot(base, 4).float()).argmax(1)
    via1 = (adj[1] @ x[:, 4:5]).squeeze(1) > 0
    y = (via0 + via1.long()) % 4
    return x, adj, y


def _node_batches(gen: torch.Generator):
    x, adj, y = _relational_graph(gen)
    while True:
        mask = torch.rand(len(y), generator=gen) < 0.5
        yield (x, adj), torch.where(mask, y, -100)


def _masked_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, ignore_index=-100)


@scenario(
    "h32_rgcn_relational",
    "adagrad",
    "loss_of_plasticity",
    where=("rgcn1", "rgcn1.self_loop"),
    diverges="auto",
    onset=80,
    heldout=True,
)
def h32_dead_units_rgcn_adagrad(ctx: Context) -> None:
    """A hand-written "activation sparsity" step meant to nudge the first layer's biases down
    by 3e-4 a step is off by three orders of magnitude: from step 80 it moves them down by 0.3
    a step, and rgcn1's units die one after another behind their ReLU."""
    gen = seeded(3209)
    model = RGCN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def bug(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                model.rgcn1.self_loop.bias.sub_(0.3)

    batches = _node_batches(gen)
    fit(ctx, model, opt, batches, 280, loss_fn=_masked_ce, before=bug, classifier=False)
    (x, adj), _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(F.relu(model.rgcn1(x, adj)))
    ctx.check("rgcn1's units all but dead", dead >= 0.9)


@scenario("h32_rgcn_relational", "sg_lion", "healthy", heldout=True)
def h32_healthy_rgcn_lion(ctx: Context) -> None:
    gen = seeded(3210)
    model = RGCN()
    opt = sgo.Lion(model.parameters(), lr=1e-3, weight_decay=0.01, fused=False)
    fit(ctx, model, opt, _node_batches(gen), 250, loss_fn=_masked_ce, classifier=False)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]))


# -- contrastive predictive coding (CPC) ----------------------------------------------------------


class CPC(nn.Module):
    """Strided 1-D conv encoder -> z_t, GRU over z -> c_t, one linear predictor of z_{t+k}."""

    def __init__(self, dim: int = 32, ahead: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, dim, 8, stride=4, padding=2), nn.ReLU(), nn.Conv1d(dim, dim, 3, padding=1)
        )
        self.context = nn.GRU(dim, dim, batch_first=True)
        self.predictor = nn.Linear(dim, dim)
        self.ahead = ahead

    def forward(self, wave: torch.Tensor, temperature: float):
        z = self.encoder(wave[:, None]).transpose(1, 2)  # (batch, steps, dim)
        c, _ = self.context(z)
        t = z.shape[1] // 2
        pred = self.predictor(c[:, t])  # predicts z at t + ahead
        target = z[:, t + self.ahead]
        logits = pred @ target.T / temperature  # the other sequences are the negatives
        return logits, torch.arange(len(wave))


def _waves(gen: torch.Generator, batch: int = 16, length: int = 128):
    """Sines with well-spread frequencies (a shuffled grid), random phases, a little noise."""
    t = torch.arange(length).float()
    grid = torch.linspace(0.05, 1.2, batch)
    while True:
        f = grid[torch.randperm(batch, generator=gen)][:, None]
        ph = 6.3 * torch.rand(batch, 1, generator=gen)
        yield torch.sin(f * t + ph) + 0.02 * torch.randn(batch, length, generator=gen)


def _cpc_run(ctx: Context, model: CPC, opt, gen, steps: int, temperature: float, alter) -> None:
    waves = _waves(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        logits, target = model(alter(step, next(waves)), temperature)
        ctx.targets(target)
        loss = F.cross_entropy(logits, target)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario("h32_cpc_contrastive", "nadam", "data_outlier", diverges=150, onset=150, heldout=True)
def h32_outlier_cpc_nadam(ctx: Context) -> None:
    """At step 150 four clips of the batch are decoded without dividing by 32768 (raw int16
    sample values): their encoder outputs are huge for one step."""
    gen = seeded(3211)
    model = CPC()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, wave: torch.Tensor) -> torch.Tensor:
        if step == 150:
            wave = wave.clone()
            wave[:4] = (wave[:4] * 32767).round()
        return wave

    _cpc_run(ctx, model, opt, gen, 220, 1.0, alter)
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))


# -- dueling double-DQN ---------------------------------------------------------------------------


class DuelingQ(nn.Module):
    def __init__(self, states: int = 8, actions: int = 4, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(states, width), nn.ReLU())
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, actions)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.trunk(s)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(1, keepdim=True)


def _chain_transitions(gen: torch.Generator, batch: int = 64, n: int = 8, actions: int = 4):
    """A ring of n states (one-hot): action 0 steps right, 1 left, others stay; reward 1 for
    reaching state n-1 (then back to 0). Transitions sampled uniformly (offline replay)."""
    while True:
        s = torch.randint(0, n, (batch,), generator=gen)
        a = torch.randint(0, actions, (batch,), generator=gen)
        nxt = torch.where(a == 0, (s + 1) % n, torch.where(a == 1, (s - 1) % n, s))
        r = (nxt == n - 1).float()
        done = r.bool()
        yield F.one_hot(s, n).float(), a, r, F.one_hot(nxt, n).float(), done


@scenario(
    "h32_dueling_double_dqn",
    "radam",
    "update_ratio_out_of_range",
    where="value",
    diverges=None,
    heldout=True,
)
def h32_frozen_value_dueling_dqn_radam(ctx: Context) -> None:
    """The value stream is re-initialised for a new task AFTER the optimizer was built: the new
    ``value`` layer gets gradients every step but is in no parameter group, so it never
    moves."""
    gen = seeded(3212)
    online = DuelingQ()
    opt = torch.optim.RAdam(online.parameters(), lr=1e-3)
    online.value = nn.Linear(64, 1)  # the bug: after the optimizer
    target = copy.deepcopy(online)
    before = online.value.weight.detach().clone()
    data = _chain_transitions(gen)
    ctx.attach(online, opt)
    grads = []
    for step in range(400):
        s, a, r, s2, done = next(data)
        with torch.no_grad():
            best = online(s2).argmax(1, keepdim=True)  # double DQN: online picks, target rates
            y = r + 0.9 * (~done).float() * target(s2).gather(1, best).squeeze(1)
        q = online(s).gather(1, a[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        loss.backward()
        grads.append(float(online.value.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(online))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 50 == 49:
            target.load_state_dict(online.state_dict())
    ctx.check("value layer unchanged", torch.equal(before, online.value.weight))
    ctx.check("value layer had gradients", min(grads) > 0)


# -- NODE (neural oblivious decision ensembles) on breast cancer ----------------------------------


class LogFeatures(nn.Module):
    """log1p of the (skewed, non-negative) raw features, then standardised with fixed
    statistics from the training set."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(x) - self.mean) / self.std


class ODST(nn.Module):
    """One layer of oblivious differentiable decision trees (Popov et al. 2019): soft feature
    choice per depth level, learnt thresholds and temperatures, a two-sided sigmoid bin per
    level, and a response per leaf. softmax stands in for entmax."""

    def __init__(self, d_in: int, trees: int = 16, depth: int = 3, out: int = 4) -> None:
        super().__init__()
        self.choice = nn.Parameter(torch.randn(d_in, trees, depth) * 0.1)
        self.threshold = nn.Parameter(torch.randn(trees, depth) * 0.1)
        self.log_temp = nn.Parameter(torch.zeros(trees, depth))
        self.response = nn.Parameter(torch.randn(trees, 2**depth, out) * 0.1)
        codes = torch.tensor([[(i >> d) & 1 for d in range(depth)] for i in range(2**depth)])
        self.register_buffer("codes", codes.float())  # (leaves, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = torch.einsum("bi,itd->btd", x, torch.softmax(self.choice, 0))
        right = torch.sigmoid((feat - self.threshold) * torch.exp(-self.log_temp))  # (b, t, d)
        go = right[:, :, None, :] * self.codes + (1 - right[:, :, None, :]) * (1 - self.codes)
        leaf = go.prod(-1)  # (b, t, leaves)
        return torch.einsum("btl,tlo->bto", leaf, self.response).flatten(1)


class NODE(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, classes: int = 2) -> None:
        super().__init__()
        self.prep = LogFeatures(mean, std)
        self.layer1 = ODST(mean.numel())
        self.layer2 = ODST(mean.numel() + 64)
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.prep(x)
        h1 = self.layer1(h)
        h2 = self.layer2(torch.cat([h, h1], 1))  # dense connection, as in NODE
        return self.head(torch.cat([h1, h2], 1))


def _cancer(gen: torch.Generator, batch: int = 64):
    """Raw breast-cancer features (non-negative, skewed) and labels, endless shuffled batches,
    plus the log1p statistics the model standardises with."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    logged = torch.log1p(x)
    stats = (logged.mean(0), logged.std(0))

    def batches():
        while True:
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y) - batch + 1, batch):
                yield x[order[i : i + batch]], y[order[i : i + batch]]

    return stats, batches()


@scenario(
    "h32_node_tabular",
    "sg_adabelief",
    "nonfinite",
    where="prep",
    diverges=150,
    onset=150,
    heldout=True,
)
def h32_nan_one_record_node_adabelief(ctx: Context) -> None:
    """At step 150 one record carries the upstream export's missing-value sentinel (-999) in
    one feature: log1p of it is NaN in ``prep``, and the NaN reaches the loss."""
    gen = seeded(3213)
    (mean, std), batches = _cancer(gen)
    model = NODE(mean, std)
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3, fused=False)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[7, 3] = -999.0
        return x, y

    fit(ctx, model, opt, batches, 180, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 150, not at 150", all(finite[:150]) and not finite[150])


@scenario("h32_node_tabular", "adam", "healthy", heldout=True)
def h32_healthy_node_adam(ctx: Context) -> None:
    gen = seeded(3214)
    (mean, std), batches = _cancer(gen)
    model = NODE(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, batches, 200)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * _median(ctx.losses[:10]))


# -- ReZero transformer encoder (regression) ------------------------------------------------------


class ReZeroLayer(nn.Module):
    """x + alpha * attn(x); x + alpha * ffn(x), alpha starting at 0 (Bachlechner et al. 2020)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.alpha * self.attn(x, x, x, need_weights=False)[0]
        return x + self.alpha * self.ffn(x)


class ReZeroEncoder(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.layers = nn.ModuleList(ReZeroLayer(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def _weighted_sums(gen: torch.Generator, batch: int = 32, length: int = 12):
    """Each token is (value, flag); the target is the sum of the flagged values."""
    while True:
        v = torch.randn(batch, length, generator=gen)
        f = (torch.rand(batch, length, generator=gen) < 0.3).float()
        yield torch.stack([v, f], -1), (v * f).sum(1, keepdim=True)


@scenario(
    "h32_rezero_encoder", "adamax", "loss_divergence", diverges="auto", onset=80, heldout=True
)
def h32_target_scale_drift_rezero_adamax(ctx: Context) -> None:
    """Targets are standardised with a running scale that a bug shrinks by 1.5% a step from
    step 80 (meant: an exponential average of the batch std): the standardised targets grow
    steadily and the regression loss climbs with nothing in the model to blame."""
    gen = seeded(3215)
    model = ReZeroEncoder()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scale = {"s": 1.0}

    def normalise(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 80:
            scale["s"] *= 0.985
        return x, y / (1.6 * scale["s"])

    fit(
        ctx,
        model,
        opt,
        _weighted_sums(gen),
        300,
        loss_fn=F.mse_loss,
        alter=normalise,
        classifier=False,
    )
    best = min(_median(ctx.losses[i : i + 5]) for i in range(0, 80))
    ctx.check("loss climbed 5x above its best", _median(ctx.losses[-5:]) > 5 * best)


# -- sub-pixel 1-D audio upsampler (fp16 autocast) ------------------------------------------------


class SubPixelUpsampler(nn.Module):
    """Conv stack -> r * C channels -> interleaved into r times longer signal by a reshape (the
    1-D sub-pixel shuffle, written by hand)."""

    def __init__(self, width: int = 32, factor: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, width, 9, padding=4)
        self.body = nn.Sequential(
            nn.Conv1d(width, width, 9, padding=4), nn.PReLU(), nn.Conv1d(width, width, 9, padding=4)
        )
        self.expand = nn.Conv1d(width, factor, 9, padding=4)
        self.factor = factor

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(low[:, None]))
        h = h + self.body(h)
        sub = self.expand(h)  # (b, r, t)
        return sub.transpose(1, 2).reshape(len(low), -1)  # (b, t * r), sub-pixel interleave


def _audio_pairs(gen: torch.Generator, batch: int = 16, length: int = 256, factor: int = 4):
    """High-rate signals (a few harmonics with decay) and their low-rate versions (average
    pooling by the factor)."""
    t = torch.arange(length).float() / length
    while True:
        f0 = 2 + 10 * torch.rand(batch, 1, generator=gen)
        amp = torch.rand(batch, 3, generator=gen)
        high = sum(amp[:, i : i + 1] * torch.sin(2 * math.pi * (i + 1) * f0 * t) for i in range(3))
        high = high * torch.exp(-2 * t)
        low = F.avg_pool1d(high[:, None], factor).squeeze(1)
        yield low, high


@scenario("h32_subpixel_audio_upsampler", "sgd_mom", "amp_overflow", diverges=None, heldout=True)
def h32_amp_overflow_subpixel_sgd_momentum(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**30 (copied from a large-model recipe)
    and growing every 25 steps: its scaled gradients overflow float16 a few times, those steps
    are skipped and the scale comes down; training is otherwise fine."""
    gen = seeded(3216)
    model = SubPixelUpsampler()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        _audio_pairs(gen),
        200,
        loss_fn=F.mse_loss,
        scaler=scaler,
        amp=True,
        classifier=False,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.5 * _median(ctx.losses[:10]))
