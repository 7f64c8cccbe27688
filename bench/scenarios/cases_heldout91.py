"""Held-out scenarios, set 91 (``h91_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or its control trained normally).

Families: Hugging Face M2M100 (encoder-decoder, generated reversal task), Switch Transformers
(MoE encoder-decoder, generated reversal task), CLAP text tower and SigLIP2 text tower (sequence
classifiers) from configs; graph transformer with Laplacian positional encodings on generated
block-model graphs, DNA promoter CNN with reverse-complement weight sharing on generated
sequences, temporal graph network (per-node memory) on a generated interaction stream,
SchNet-style continuous-filter convolution on generated molecules, hypergraph neural network
(HGNN) on generated hypergraphs,
protein contact-map predictor on generated sequences, single-cell VAE with a negative-binomial
likelihood on generated counts, ComplEx knowledge-graph embeddings (1-N scoring).

Optimizers: Lion, NAdam, Adamax, SGD with momentum, plain SGD, RAdam, AdamW, Adam, Grams,
AdaBelief, Adagrad, AdEMAMix, RMSprop, Adadelta, ASGD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- graph transformer with Laplacian positional encodings ----------------------------------------


def sbm_graph_batches(
    gen: torch.Generator, graphs: int = 8, n: int = 16, feat: int = 8, k: int = 4
):
    """Batches of generated two-block graphs: node features are weak block hints, labels the
    block; Laplacian eigenvectors (random signs) as positional encodings."""
    while True:
        xs, pes, adjs, ys = [], [], [], []
        for _ in range(graphs):
            y = (torch.rand(n, generator=gen) < 0.5).long()
            same = y[:, None] == y[None, :]
            p = torch.where(same, torch.tensor(0.5), torch.tensor(0.05))
            a = (torch.rand(n, n, generator=gen) < p).float().triu(1)
            a = a + a.T
            deg = a.sum(1).clamp(min=1.0)
            lap = torch.eye(n) - a / deg.sqrt()[:, None] / deg.sqrt()[None, :]
            _, vec = torch.linalg.eigh(lap)
            sign = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0)
            pes.append(vec[:, 1 : k + 1] * sign)
            x = torch.randn(n, feat, generator=gen)
            x[:, 0] += 0.6 * (2 * y.float() - 1)
            xs.append(x)
            adjs.append(a)
            ys.append(y)
        yield (torch.stack(xs), torch.stack(pes), torch.stack(adjs)), torch.stack(ys)


class GraphAttention(nn.Module):
    def __init__(self, dim: int, heads: int, scaled: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scaled = scaled
        self.last_logits: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = (
            f(h).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2)
        if self.scaled:
            logits = logits / math.sqrt(d // self.heads)
        logits = logits + adj[:, None]  # neighbours get a +1 structural bias
        probs = logits.softmax(-1)
        self.last_logits = logits.detach()
        self.last_probs = probs.detach()
        return self.o((probs @ v).transpose(1, 2).reshape(b, n, d))


class GTLayer(nn.Module):
    def __init__(self, dim: int, heads: int, scaled: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = GraphAttention(dim, heads, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), adj)
        return h + self.ffn(self.ln2(h))


class LapPEGraphTransformer(nn.Module):
    def __init__(
        self,
        feat: int = 8,
        k: int = 4,
        dim: int = 32,
        heads: int = 2,
        layers: int = 2,
        scaled: bool = True,
    ):
        super().__init__()
        self.embed = nn.Linear(feat, dim)
        self.pe_proj = nn.Linear(k, dim)
        self.layers = nn.ModuleList(GTLayer(dim, heads, scaled) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, inputs) -> torch.Tensor:
        x, pe, adj = inputs
        h = self.embed(x) + self.pe_proj(pe)
        for layer in self.layers:
            h = layer(h, adj)
        return self.head(self.ln_f(h))


def node_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def attention_entropy(probs: torch.Tensor) -> float:
    return float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())


@scenario(
    "h91_graph_transformer_lap_pe",
    "sg_lion",
    "attention_logit_growth",
    where=("layers.1.attn", "layers.0.attn"),
    diverges=None,
    heldout=True,
    note="hand-written attention without the 1/sqrt(d) scale, Lion at an Adam-sized LR, no decay",
)
def h91_graph_transformer_unscaled_lion(ctx: Context) -> None:
    """The attention was written by hand and the 1/sqrt(d_head) scale left out; Lion was run at
    the learning rate the Adam baseline used (3e-3) and without weight decay, so every q/k weight
    moves by the full LR each step and the pre-softmax logits keep growing."""
    gen = seeded(9101)
    model = LapPEGraphTransformer(scaled=False)
    from steadygrad.optim import Lion

    opt = Lion(model.parameters(), lr=3e-3, weight_decay=0.0)
    attn = model.layers[1].attn
    peaks: list[float] = []
    ents: list[float] = []

    def before(step: int) -> None:
        if attn.last_logits is not None:
            peaks.append(float(attn.last_logits.abs().amax()))
            ents.append(attention_entropy(attn.last_probs))

    fit(
        ctx,
        model,
        opt,
        sbm_graph_batches(gen),
        300,
        loss_fn=node_ce,
        before=before,
        classifier=False,
    )
    ctx.check("attention logits grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("attention entropy collapsed below a fifth", ents[-1] < 0.2 * ents[0])


@scenario("h91_graph_transformer_lap_pe", "asgd", "healthy", heldout=True)
def h91_graph_transformer_healthy_asgd(ctx: Context) -> None:
    gen = seeded(9102)
    model = LapPEGraphTransformer(scaled=True)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=200)
    fit(ctx, model, opt, sbm_graph_batches(gen), 300, loss_fn=node_ce, classifier=False)
    ctx.check("loss went down", sum(ctx.losses[-30:]) < 0.8 * sum(ctx.losses[:30]))


# -- Hugging Face encoder-decoders and text towers from configs -----------------------------------


def reversal_batches(
    gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 64, start: int = 2
):
    """Generated reversal task: (source, decoder input) -> reversed source."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec_in = torch.cat([torch.full((batch, 1), start), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


def hf_m2m100(vocab: int = 64):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab,
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
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    return M2M100ForConditionalGeneration(config)


def hf_switch(vocab: int = 64):
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    config = SwitchTransformersConfig(
        vocab_size=vocab,
        d_model=32,
        d_kv=16,
        d_ff=64,
        expert_capacity=64,
        num_layers=2,
        num_sparse_encoder_layers=1,
        num_decoder_layers=2,
        num_sparse_decoder_layers=1,
        num_heads=2,
        num_experts=4,
        router_jitter_noise=0.0,
        dropout_rate=0.0,
        decoder_start_token_id=2,
        pad_token_id=0,
    )
    return SwitchTransformersForConditionalGeneration(config)


def seq2seq_logits(model: nn.Module, inputs) -> torch.Tensor:
    src, dec_in = inputs
    return model(input_ids=src, decoder_input_ids=dec_in).logits


@scenario(
    "h91_hf_m2m100_reversal",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=120,
    note="z-loss switched on at step 120 with its sign flipped (subtracted, not added)",
)
def h91_m2m100_zloss_sign_nadam(ctx: Context) -> None:
    """An M2M100 trained on a reversal task; the z-loss (1e-2 * logZ^2) meant to keep the output
    log-partition near zero is switched on after 120 warm steps, but subtracted from the loss:
    it now rewards a larger log Z at the head."""
    gen = seeded(9103)
    model = hf_m2m100()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    logz: list[float] = []

    ctx.attach(model, opt)
    batches = reversal_batches(gen)
    for step in range(400):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        logits = seq2seq_logits(model, x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        z = torch.logsumexp(logits.float(), -1)
        total = ce - 1e-2 * z.pow(2).mean() if step >= 120 else ce
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(ce)
        opt.zero_grad(set_to_none=True)
        logz.append(float(z.detach().mean()))
    ctx.check("log Z at the head was moderate before the bug", abs(logz[115]) < 15)
    ctx.check("log Z drifted far upward after it", logz[-1] > 5 * max(abs(logz[115]), 5.0))


@scenario(
    "h91_hf_switch_moe_seq2seq",
    "adamw",
    "update_ratio_out_of_range",
    where=(
        "encoder.block.1.layer.1.mlp.router.classifier",
        "decoder.block.1.layer.2.mlp.router.classifier",
    ),
    diverges=None,
    heldout=True,
    note="router parameter group given lr 1e-1 instead of 1e-4 (an exponent typo)",
)
def h91_switch_router_lr_typo_adamw(ctx: Context) -> None:
    """Switch Transformers with its routers in their own parameter group (a smaller LR is the
    usual advice); the group's LR was typed 1e-1 instead of 1e-4, so each router step moves the
    router weights by a large fraction of their size while the rest trains at 1e-3."""
    gen = seeded(9104)
    model = hf_switch()
    router = [p for n, p in model.named_parameters() if "router" in n]
    rest = [p for n, p in model.named_parameters() if "router" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": router, "lr": 1e-1}], lr=1e-3, weight_decay=0.01
    )
    watch = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    ratios: dict[str, list[float]] = {n: [] for n in watch}
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        for n, p in watch.items():
            if n in prev:
                ratios[n].append(
                    float((p.detach() - prev[n]).norm() / prev[n].norm().clamp_min(1e-12))
                )
            prev[n] = p.detach().clone()

    fit(
        ctx,
        model,
        opt,
        reversal_batches(gen),
        250,
        loss_fn=lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1)),
        forward=seq2seq_logits,
        before=before,
        classifier=False,
    )
    med = {n: sorted(r)[len(r) // 2] for n, r in ratios.items()}
    routers = [v for n, v in med.items() if "router" in n]
    others = [v for n, v in med.items() if "router" not in n]
    ctx.check("router update/weight ratio median over 0.01", min(routers) > 0.01)
    ctx.check("20x the largest of every other matrix", min(routers) > 20 * max(others))


class HFTextClassifier(nn.Module):
    def __init__(self, text: nn.Module, dim: int, classes: int = 2) -> None:
        super().__init__()
        self.text = text
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.text(input_ids=ids).pooler_output)


def hf_clap_text_classifier() -> HFTextClassifier:
    from transformers import ClapTextConfig, ClapTextModel

    config = ClapTextConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        projection_dim=16,
    )
    return HFTextClassifier(ClapTextModel(config), 32)


def hf_siglip2_text_classifier() -> HFTextClassifier:
    from transformers import Siglip2TextConfig, Siglip2TextModel

    config = Siglip2TextConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        attention_dropout=0.0,
        projection_size=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return HFTextClassifier(Siglip2TextModel(config), 32)


@scenario(
    "h91_hf_clap_text_cls",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="linear warm-up to a peak LR of 2.0 (a LARS-recipe value) with plain SGD + momentum",
)
def h91_clap_text_warmup_overshoot_sgd(ctx: Context) -> None:
    """A CLAP text tower with a linear head, SGD with momentum 0.9 and a linear warm-up over 200
    steps to a peak LR of 2.0 copied from a large-batch LARS recipe; the step outgrows the
    curvature part-way through the warm-up."""
    gen = seeded(9105)
    model = hf_clap_text_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def warmup(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 2.0 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, bert_batches(gen), 300, before=warmup)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blew up (non-finite or 10x its start)",
        len(finite) < len(ctx.losses) or max(finite) > 10 * max(ctx.losses[:20]),
    )


@scenario("h91_hf_siglip2_text_cls", "sg_ademamix", "healthy", heldout=True)
def h91_siglip2_text_healthy_ademamix(ctx: Context) -> None:
    from steadygrad.optim import AdEMAMix

    gen = seeded(9106)
    model = hf_siglip2_text_classifier()
    opt = AdEMAMix(model.parameters(), lr=1e-3, alpha_warmup=150, beta3_warmup=150)
    fit(ctx, model, opt, bert_batches(gen), 220)
    ctx.check("loss went down", sum(ctx.losses[-30:]) < 0.8 * sum(ctx.losses[:30]))


# -- DNA promoter CNN with reverse-complement weight sharing ----------------------------------------

MOTIF = torch.tensor([3, 0, 3, 0, 0, 3])  # TATAAT, with A C G T = 0 1 2 3


def promoter_data(gen: torch.Generator, n: int, length: int = 60):
    """Generated sequences; a promoter carries a TATAAT box on either strand."""
    seq = torch.randint(0, 4, (n, length), generator=gen)
    y = (torch.rand(n, generator=gen) < 0.5).long()
    for i in range(n):
        if y[i]:
            pos = int(torch.randint(0, length - 6, (1,), generator=gen))
            box = MOTIF if torch.rand(1, generator=gen) < 0.5 else (3 - MOTIF).flip(0)
            seq[i, pos : pos + 6] = box
    windows = seq.unfold(1, 6, 1)
    has = (windows == MOTIF).all(-1) | (windows == (3 - MOTIF).flip(0)).all(-1)
    y = has.any(1).long()  # a box that turned up by chance counts too
    return F.one_hot(seq, 4).float().transpose(1, 2), y


class RCPromoterCNN(nn.Module):
    """One set of filters scans both strands (reverse complement = flip channels and positions)."""

    def __init__(self, filters: int = 16, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, filters, width)
        self.head = nn.Linear(filters, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd = F.relu(self.conv(x)).amax(-1)
        rev = F.relu(self.conv(x.flip(1).flip(2))).amax(-1)
        return self.head(torch.maximum(fwd, rev))


@scenario(
    "h91_promoter_rc_cnn",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="96 training sequences, full batch, Adamax at 0.2 (betas 0.9, 0.95), no decay, run long",
)
def h91_promoter_overfit_adamax(ctx: Context) -> None:
    """A reverse-complement-shared promoter CNN fitted to a small labelled set (96 sequences,
    full batch) with Adamax at a high LR and no regularisation, and left running long after it
    fits: the margins keep growing until the float32 softmax is exactly one-hot on the training
    rows."""
    gen = seeded(9107)
    x, y = promoter_data(gen, 96)
    model = RCPromoterCNN()
    opt = torch.optim.Adamax(model.parameters(), lr=0.2, betas=(0.9, 0.95))

    def batches():
        while True:
            yield x, y

    fit(ctx, model, opt, batches(), 600)
    with torch.no_grad():
        logits = model(x)
    ctx.check("over half the training rows exactly one-hot", collapsed_fraction(logits, y) > 0.5)
    ctx.check(
        "training loss reached 0.0 in float32", min(ctx.losses) == 0.0 or ctx.losses[-1] < 1e-7
    )


# -- temporal graph network on a generated interaction stream -------------------------------------


def interaction_stream(gen: torch.Generator, windows: int = 16, events: int = 32, nodes: int = 8):
    """Windows of a generated interaction stream: nodes talk mostly inside their community;
    each event comes with a random negative destination."""
    comm = torch.arange(nodes) % 2
    while True:
        src = torch.randint(0, nodes, (windows, events), generator=gen)
        same = torch.rand(windows, events, generator=gen) < 0.85
        cand = torch.randint(0, nodes // 2, (windows, events), generator=gen) * 2
        dst = torch.where(same, cand + comm[src], cand + 1 - comm[src])
        neg = torch.randint(0, nodes, (windows, events), generator=gen)
        dt = -torch.log(torch.rand(windows, events, generator=gen))
        yield (src, dst, neg, dt), None


class TGN(nn.Module):
    def __init__(
        self, nodes: int = 8, mem: int = 16, time_dim: int = 8, relu_cell: bool = False
    ) -> None:
        super().__init__()
        self.nodes, self.mem = nodes, mem
        self.time_enc = nn.Linear(1, time_dim)
        msg = 2 * mem + time_dim
        if relu_cell:
            self.memory_cell = nn.RNNCell(msg, mem, nonlinearity="relu")
        else:
            self.memory_cell = nn.GRUCell(msg, mem)
        self.node_emb = nn.Embedding(nodes, mem)
        self.decoder = nn.Sequential(nn.Linear(2 * mem, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, batch) -> torch.Tensor:
        src, dst, neg, dt = batch
        b, e = src.shape
        rows = torch.arange(b)
        memory = torch.zeros(b, self.nodes, self.mem)
        losses = []
        for i in range(e):
            u, v, w = src[:, i], dst[:, i], neg[:, i]
            z = memory + self.node_emb.weight
            pos = self.decoder(torch.cat([z[rows, u], z[rows, v]], -1)).squeeze(-1)
            ngt = self.decoder(torch.cat([z[rows, u], z[rows, w]], -1)).squeeze(-1)
            losses.append(F.softplus(-pos) + F.softplus(ngt))
            t = torch.cos(self.time_enc(dt[:, i : i + 1]))
            su, sv = memory[rows, u], memory[rows, v]
            new_u = self.memory_cell(torch.cat([su, sv, t], -1), su)
            new_v = self.memory_cell(torch.cat([sv, su, t], -1), sv)
            memory = memory.index_put((rows, u), new_u).index_put((rows, v), new_v)
        return torch.stack(losses).mean()


@scenario(
    "h91_tgn_interaction_stream",
    "sgd",
    "loss_of_plasticity",
    where="memory_cell",
    diverges=None,
    heldout=True,
    note="GRU memory updater swapped for a ReLU RNN cell, identity init scaled 1.8, SGD at 0.3",
)
def h91_tgn_relu_memory_dies_sgd(ctx: Context) -> None:
    """The TGN's GRU memory updater was swapped for a cheaper ReLU RNN cell with an IRNN-style
    identity initialisation, scaled 1.8 (meant 0.8); the first SGD steps are large and push the
    cell's pre-activations negative: its units stop firing and the memory never learns again."""
    gen = seeded(9108)
    model = TGN(relu_cell=True)
    with torch.no_grad():
        model.memory_cell.weight_hh.copy_(1.8 * torch.eye(model.mem))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    outputs: list[torch.Tensor] = []
    model.memory_cell.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))

    def before(step: int) -> None:
        outputs.clear()

    def loss_fn(out: torch.Tensor, y) -> torch.Tensor:
        return out

    dead: list[float] = []

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        dead.append(dead_fraction(torch.cat(outputs)))
        return loss

    fit(
        ctx,
        model,
        opt,
        interaction_stream(gen, events=20),
        200,
        loss_fn=loss_fn,
        before=before,
        extra_loss=extra,
        classifier=False,
    )
    ctx.check("memory-cell units alive at the start", dead[0] < 0.5)
    ctx.check("most memory-cell units dead at the end", sum(dead[-20:]) / 20 > 0.6)


# -- SchNet-style continuous-filter convolution on generated molecules ----------------------------


def molecule_batches(gen: torch.Generator, batch: int = 16, atoms: int = 8):
    """Generated chain molecules (bond length ~1.2, random directions, 4 atom types); energy is a
    sum of type-dependent Morse pair terms, per atom, roughly standardised."""
    depth = torch.rand(4, 4, generator=torch.Generator().manual_seed(91)) + 0.5
    depth = (depth + depth.T) / 2
    while True:
        n = torch.randint(4, atoms + 1, (batch,), generator=gen)
        mask = torch.arange(atoms)[None] < n[:, None]
        step = torch.randn(batch, atoms, 3, generator=gen)
        step = 1.2 * step / step.norm(dim=-1, keepdim=True)
        pos = step.cumsum(1)
        types = torch.randint(0, 4, (batch, atoms), generator=gen)
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
        pair = mask[:, :, None] & mask[:, None] & ~torch.eye(atoms, dtype=torch.bool)
        morse = (1 - torch.exp(-(d - 1.2))) ** 2 - 1
        e = 0.5 * (depth[types[:, :, None], types[:, None]] * morse * pair).sum((1, 2))
        yield (types, pos, mask), (e / n + 1.0) * 2.0


class ShiftedSoftplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x) - math.log(2.0)


class Interaction(nn.Module):
    def __init__(self, dim: int = 32, rbf: int = 16, cutoff: float = 5.0) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.filter = nn.Sequential(nn.Linear(rbf, dim), ShiftedSoftplus(), nn.Linear(dim, dim))
        self.in2f = nn.Linear(dim, dim, bias=False)
        self.f2out = nn.Sequential(nn.Linear(dim, dim), ShiftedSoftplus(), nn.Linear(dim, dim))

    def forward(self, h, rbf, d, pair):
        w = (
            self.filter(rbf)
            * (0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0) * pair)[..., None]
        )
        msg = (w * self.in2f(h)[:, None]).sum(2)
        return h + self.f2out(msg)


class SchNet(nn.Module):
    def __init__(self, dim: int = 32, rbf: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, dim)
        self.register_buffer("centers", torch.linspace(0.0, 5.0, rbf))
        self.interactions = nn.ModuleList(Interaction(dim, rbf) for _ in range(blocks))
        self.out = nn.Sequential(nn.Linear(dim, dim), ShiftedSoftplus(), nn.Linear(dim, 1))

    def forward(self, inputs) -> torch.Tensor:
        types, pos, mask = inputs
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
        pair = (mask[:, :, None] & mask[:, None] & (d < 5.0)).float() * (
            1 - torch.eye(pos.shape[1])
        )
        rbf = torch.exp(-10.0 * (d[..., None] - self.centers) ** 2)
        h = self.embed(types)
        for block in self.interactions:
            h = block(h, rbf, d, pair)
        atom_e = self.out(h).squeeze(-1) * mask
        return atom_e.sum(1) / mask.sum(1)


@scenario(
    "h91_schnet_cfconv_molecules",
    "sg_grams",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=200,
    note="at step 200 a batch whose energy labels are in kcal/mol (x627.5) instead of hartree",
)
def h91_schnet_unit_mixup_grams(ctx: Context) -> None:
    """A SchNet-style energy model trained with Grams; at step 200 one batch comes from a second
    source whose energies were stored in kcal/mol instead of hartree (x627.5): a loss spike."""
    from steadygrad.optim import Grams

    gen = seeded(9109)
    model = SchNet()
    opt = Grams(model.parameters(), lr=1e-3)

    def alter(step: int, x, y):
        if step == 200:
            y = y * 627.5
        return x, y

    fit(
        ctx,
        model,
        opt,
        molecule_batches(gen),
        300,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    before = sorted(ctx.losses[160:200])[20]
    ctx.check("loss fell before the bad batch", before < 0.5 * sum(ctx.losses[:10]) / 10)
    ctx.check("bad batch's loss over 1000x the median before it", ctx.losses[200] > 1000 * before)


# -- hypergraph neural network (HGNN) ---------------------------------------------------------------


def hypergraph_batches(
    gen: torch.Generator, n: int = 48, classes: int = 3, feat: int = 16, edges: int = 32
):
    """Generated hypergraphs: hyperedges mostly gather nodes of one class; features are noisy
    class means (the signal is spread over the hyperedges)."""
    means = torch.randn(classes, feat, generator=torch.Generator().manual_seed(92))
    while True:
        y = torch.randint(0, classes, (n,), generator=gen)
        x = 0.4 * means[y] + torch.randn(n, feat, generator=gen)
        inc = torch.zeros(n, edges)
        for e in range(edges):
            c = int(torch.randint(0, classes, (1,), generator=gen))
            pool = torch.where(y == c)[0]
            size = int(torch.randint(3, 7, (1,), generator=gen))
            pick = pool[torch.randint(0, len(pool), (size,), generator=gen)]
            inc[pick, e] = 1.0
            stray = torch.randint(0, n, (1,), generator=gen)
            inc[stray, e] = 1.0
        yield (x, inc), y


class HGNNConv(nn.Module):
    """X' = Dv^-1/2 H De^-1 H^T Dv^-1/2 X Theta (unit hyperedge weights)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.theta = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, inc: torch.Tensor) -> torch.Tensor:
        dv = inc.sum(1).clamp(min=1.0).rsqrt()
        de = inc.sum(0).clamp(min=1.0).reciprocal()
        g = (dv[:, None] * inc * de) @ (inc.T * dv)
        return g @ self.theta(x)


class HGNN(nn.Module):
    def __init__(self, feat: int = 16, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = HGNNConv(feat, hidden)
        self.conv2 = HGNNConv(hidden, classes)

    def forward(self, inputs) -> torch.Tensor:
        x, inc = inputs
        return self.conv2(F.relu(self.conv1(x, inc)), inc)


@scenario(
    "h91_hgnn_hypergraph_nodes",
    "adam",
    "adam_second_moment_poisoned",
    where=("conv1", "conv1.theta"),
    diverges=None,
    heldout=True,
    onset=150,
    note="one hypergraph at step 150 with unstandardised features (raw 12-bit scale, x3000)",
)
def h91_hgnn_raw_features_once_adam(ctx: Context) -> None:
    """An HGNN node classifier trained with Adam (beta2 0.999) on a stream of generated
    hypergraphs; at step 150 one hypergraph arrives with its features unstandardised (raw
    12-bit scale, about 3000x): one giant gradient in the first layer fills its second moments, and its
    updates stay tiny for hundreds of steps."""
    gen = seeded(9110)
    model = HGNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    theta = model.conv1.theta.weight
    grads: list[float] = []
    moves: list[float] = []
    prev = [theta.detach().clone()]

    def alter(step: int, x, y):
        if step == 150:
            x = (x[0] * 3000.0, x[1])
        return x, y

    def before(step: int) -> None:
        moves.append(float((theta.detach() - prev[0]).norm()))
        prev[0] = theta.detach().clone()

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    model.conv1.theta.weight.register_hook(lambda g: grads.append(float(g.norm())) or g)
    fit(ctx, model, opt, hypergraph_batches(gen), 400, alter=alter, before=before)
    med = sorted(grads[:150])[75]
    ctx.check("first-layer gradient at step 150 over 100x its median", grads[150] > 100 * med)
    early = sum(moves[100:150]) / 50
    late = sum(moves[160:400]) / 240
    ctx.check("first-layer updates after it under a tenth of those before", late < 0.1 * early)


# -- single-cell VAE with a negative-binomial likelihood ------------------------------------------


def count_batches(gen: torch.Generator, batch: int = 64, genes: int = 50, types: int = 3):
    """Generated UMI counts: three cell types, lognormal library sizes, Gamma-Poisson noise."""
    profiles = torch.softmax(
        1.5 * torch.randn(types, genes, generator=torch.Generator().manual_seed(93)), -1
    )
    while True:
        t = torch.randint(0, types, (batch,), generator=gen)
        lib = torch.exp(math.log(500.0) + 0.5 * torch.randn(batch, 1, generator=gen))
        mu = lib * profiles[t]
        rate = torch.distributions.Gamma(5.0, 5.0 / mu).sample()
        yield torch.poisson(rate, generator=gen), t


class NegBinomialLogLik(nn.Module):
    """log NB(x; mu, theta), written out term by term."""

    def forward(self, x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        log_theta_mu = torch.log(theta + mu)
        return (
            torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - torch.lgamma(x + 1)
            + theta * (torch.log(theta) - log_theta_mu)
            + x * (torch.log(mu) - log_theta_mu)
        ).sum(-1)


class SCVAE(nn.Module):
    def __init__(self, genes: int = 50, hidden: int = 64, latent: int = 4) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(genes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, genes))
        self.log_theta = nn.Parameter(torch.zeros(genes))
        self.nb = NegBinomialLogLik()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, logv = self.enc(torch.log1p(x)).chunk(2, -1)
        z = m + torch.randn_like(m) * (0.5 * logv).exp()
        scale = torch.softmax(self.dec(z), -1)
        library = x.sum(-1, keepdim=True)  # observed library size
        ll = self.nb(x, library * scale, self.log_theta.exp())
        kl = 0.5 * (m.pow(2) + logv.exp() - logv - 1).sum(-1)
        return (kl - ll).mean() / x.shape[-1]


def elbo_loss(out: torch.Tensor, y) -> torch.Tensor:
    return out


@scenario(
    "h91_scvi_nb_vae",
    "sg_adabelief",
    "nonfinite",
    where="nb",
    diverges=160,
    heldout=True,
    onset=160,
    note="an empty droplet (all-zero counts) in the batch at step 160: 0 * log(0) in the NB term",
)
def h91_scvi_empty_droplet_adabelief(ctx: Context) -> None:
    """A single-cell VAE with a negative-binomial likelihood written out by hand; at step 160
    the batch holds an empty droplet that QC did not filter (all counts zero). Its library size
    is zero, so mu = 0 and the term x * log(mu) is 0 * -inf = NaN in the likelihood module."""
    from steadygrad.optim import AdaBelief

    gen = seeded(9111)
    model = SCVAE()
    opt = AdaBelief(model.parameters(), lr=1e-3)
    first_bad: list[str] = []
    for name in ("enc", "dec", "nb"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: (
                first_bad.append(name) if not torch.isfinite(o).all() and not first_bad else None
            )
        )

    def alter(step: int, x, y):
        if step == 160:
            x = x.clone()
            x[9] = 0.0
        return x, y

    fit(ctx, model, opt, count_batches(gen), 200, loss_fn=elbo_loss, alter=alter, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite before 160, NaN at 160", all(finite[:160]) and not finite[160])
    ctx.check(
        "the NB likelihood module produced the first non-finite value", first_bad[:1] == ["nb"]
    )


@scenario("h91_scvi_nb_vae", "adadelta", "healthy", heldout=True)
def h91_scvi_healthy_adadelta(ctx: Context) -> None:
    gen = seeded(9112)
    model = SCVAE()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, count_batches(gen), 300, loss_fn=elbo_loss, classifier=False)
    ctx.check(
        "loss went down and stayed finite",
        all(math.isfinite(v) for v in ctx.losses) and sum(ctx.losses[-30:]) < sum(ctx.losses[:30]),
    )


# -- ComplEx knowledge-graph embeddings (1-N scoring) -----------------------------------------------


def kg_batches(
    gen: torch.Generator, ents: int = 64, rels: int = 4, clusters: int = 8, batch: int = 128
):
    """A generated knowledge graph: relation r sends an entity's cluster to cluster perm_r(c);
    each (head, relation) has two tails there."""
    g = torch.Generator().manual_seed(94)
    cluster = torch.arange(ents) % clusters
    perms = torch.stack([torch.randperm(clusters, generator=g) for _ in range(rels)])
    triples = []
    for h in range(ents):
        for r in range(rels):
            target = perms[r, cluster[h]]
            members = torch.where(cluster == target)[0]
            for t in members[torch.randperm(len(members), generator=g)[:2]]:
                triples.append((h, r, int(t)))
    triples = torch.tensor(triples)
    while True:
        idx = torch.randint(0, len(triples), (batch,), generator=gen)
        tr = triples[idx]
        yield tr[:, :2], tr[:, 2]


class ComplEx(nn.Module):
    def __init__(self, ents: int = 64, rels: int = 4, dim: int = 16) -> None:
        super().__init__()
        self.ent_re = nn.Embedding(ents, dim)
        self.ent_im = nn.Embedding(ents, dim)
        self.rel_re = nn.Embedding(rels, dim)
        self.rel_im = nn.Embedding(rels, dim)
        for e in (self.ent_re, self.ent_im, self.rel_re, self.rel_im):
            nn.init.normal_(e.weight, std=0.1)

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        h_re, h_im = self.ent_re(hr[:, 0]), self.ent_im(hr[:, 0])
        r_re, r_im = self.rel_re(hr[:, 1]), self.rel_im(hr[:, 1])
        a = h_re * r_re - h_im * r_im
        b = h_re * r_im + h_im * r_re
        return a @ self.ent_re.weight.T + b @ self.ent_im.weight.T


@scenario(
    "h91_complex_kg_1n",
    "adagrad",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=250,
    note="resumed at step 250 from a checkpoint without the optimizer: Adagrad's sums start at 0",
)
def h91_complex_resume_resets_adagrad(ctx: Context) -> None:
    """ComplEx with 1-N scoring and Adagrad (lr 0.5, as in the usual recipes); at step 250 the job
    resumes from a checkpoint that saved the embeddings but not the optimizer, so the Adagrad
    accumulators restart at zero and the next steps are far larger than the ones before."""
    gen = seeded(9113)
    model = ComplEx()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)

    def before(step: int) -> None:
        if step == 250:
            for state in opt.state.values():
                state["sum"].zero_()
                state["step"].zero_()

    fit(ctx, model, opt, kg_batches(gen), 400, before=before)
    calm = sum(ctx.losses[230:250]) / 20
    ctx.check("loss had settled before the resume", calm < 0.5 * ctx.losses[0])
    ctx.check("loss jumped over 2x just after it", max(ctx.losses[250:256]) > 2 * calm)


# -- protein contact-map predictor on generated sequences -------------------------------------------


def contact_batches(gen: torch.Generator, batch: int = 16, length: int = 24):
    """Generated sequences over 20 residues; residues i, j (3 <= |i-j| <= 10) are in contact when
    their types are complementary under a fixed random pairing table."""
    g = torch.Generator().manual_seed(95)
    a = torch.rand(20, 20, generator=g)
    compat = ((a + a.T) / 2) > 0.75
    sep = (torch.arange(length)[:, None] - torch.arange(length)[None]).abs()
    band = (sep >= 3) & (sep <= 10)
    while True:
        seq = torch.randint(0, 20, (batch, length), generator=gen)
        y = (compat[seq[:, :, None], seq[:, None]] & band).float()
        yield seq, y


class SeqInstanceNorm(nn.Module):
    """Per-sequence, per-channel normalisation over positions (eps copied from BERT: 1e-12)."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu = h.mean(1, keepdim=True)
        var = (h - mu).pow(2).mean(1, keepdim=True)
        return (h - mu) / torch.sqrt(var + self.eps)


class ContactNet(nn.Module):
    def __init__(self, dim: int = 32, length: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, dim)
        self.seq_norm = SeqInstanceNorm()
        self.conv = nn.Conv1d(dim, dim, 5, padding=2)
        self.sep_emb = nn.Embedding(length, 16)
        self.pair_mlp = nn.Sequential(nn.Linear(dim + 16, 32), nn.ReLU(), nn.Linear(32, 1))
        self.register_buffer(
            "sep", (torch.arange(length)[:, None] - torch.arange(length)[None]).abs()
        )

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h = self.seq_norm(self.embed(seq))
        h = F.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        pair = h[:, :, None] * h[:, None]
        pair = torch.cat([pair, self.sep_emb(self.sep).expand(seq.shape[0], -1, -1, -1)], -1)
        logits = self.pair_mlp(pair).squeeze(-1)
        return 0.5 * (logits + logits.transpose(1, 2))


def contact_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sep = (torch.arange(y.shape[1])[:, None] - torch.arange(y.shape[1])[None]).abs()
    keep = sep >= 3
    return F.binary_cross_entropy_with_logits(logits[:, keep], y[:, keep])


@scenario("h91_protein_contact_map", "rmsprop", "healthy", heldout=True)
def h91_contact_healthy_rmsprop(ctx: Context) -> None:
    gen = seeded(9115)
    model = ContactNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, contact_batches(gen), 300, loss_fn=contact_loss, classifier=False)
    ctx.check(
        "loss went down and stayed finite",
        all(math.isfinite(v) for v in ctx.losses)
        and sum(ctx.losses[-30:]) < 0.8 * sum(ctx.losses[:30]),
    )
