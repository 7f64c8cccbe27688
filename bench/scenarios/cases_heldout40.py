"""Held-out scenarios, set 40 (``h40_``): new families, written without reading steadygrad's
detectors, diagnosis or monitor, and never run on steadygrad while being written (each was tuned
only until its own ``ctx.check`` held, with a stand-in context that attaches nothing).

Families: Hugging Face Arcee and Seed-OSS causal LMs, FlauBERT and LUKE sequence classifiers and
an MLCD vision model with a linear classification head, all from configs; QR-DQN on a generated
chain, Noise2Noise U-Net denoiser (digits), ByteNet-style dilated causal-conv character LM,
Set2Set readout over generated graphs, MAF (masked autoregressive flow) on generated moons,
consistency distillation on 2-D points (analytic mixture teacher), stacked-hourglass keypoint net
on generated images (fp16 autocast).

Optimizers: SGD, SGD with momentum and with Nesterov, Adam, AdamW, RAdam, NAdam, Adamax,
Adagrad, RMSprop, and steadygrad.optim's Lion and AdaBelief.
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

# -- Hugging Face models from configs --------------------------------------------------------------


def _arcee(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import ArceeConfig, ArceeForCausalLM

    config = ArceeConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return ArceeForCausalLM(config)


def _seed_oss(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import SeedOssConfig, SeedOssForCausalLM

    config = SeedOssConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=dim // heads,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return SeedOssForCausalLM(config)


def _flaubert(vocab: int = 128, dim: int = 32, labels: int = 2):
    from transformers import FlaubertConfig, FlaubertForSequenceClassification

    config = FlaubertConfig(
        vocab_size=vocab,
        emb_dim=dim,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=64,
        num_labels=labels,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return FlaubertForSequenceClassification(config)


def _luke(vocab: int = 128, dim: int = 32, labels: int = 2):
    from transformers import LukeConfig, LukeForSequenceClassification

    config = LukeConfig(
        vocab_size=vocab,
        entity_vocab_size=8,
        hidden_size=dim,
        entity_emb_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return LukeForSequenceClassification(config)


class MLCDClassifier(nn.Module):
    """An MLCD vision tower (from a config) on 8x8 digits in 2x2 patches, a linear head on its
    pooled output."""

    def __init__(self, dim: int = 32, classes: int = 10) -> None:
        super().__init__()
        from transformers import MLCDVisionConfig, MLCDVisionModel

        config = MLCDVisionConfig(
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=1,
            image_size=8,
            patch_size=2,
        )
        self.vision = MLCDVisionModel(config)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vision(pixel_values=x.reshape(-1, 1, 8, 8)).pooler_output)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _fixed(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


# -- attention-logit growth: Arcee, q/k projections in a group with a typo'd LR multiplier ------


def _pre_rope_logit_max(model: nn.Module, x: torch.Tensor) -> float:
    """max |q.k|/sqrt(d) over heads and positions, from the q/k projections' outputs (RoPE only
    rotates pairs of coordinates, so the norms, and this bound's growth, are unchanged)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("q_proj", "k_proj")):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    best = 0.0
    heads = model.config.num_attention_heads
    for name in [n for n in seen if n.endswith("q_proj")]:
        q, k = seen[name], seen[name.replace("q_proj", "k_proj")]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        best = max(best, float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(d // heads)))
    return best


@scenario(
    "hf_arcee_lm",
    "adamw",
    "attention_logit_growth",
    where=(
        "model.layers.0.self_attn",
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.1.self_attn",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj",
    ),
    diverges=None,
    heldout=True,
    onset=0,
    note="q/k projections' LR x30 (meant x0.3), no weight decay on them",
)
def h40_arcee_attention_logit_growth(ctx: Context) -> None:
    """An Arcee causal LM on bytes; the q/k projections sit in their own group whose LR
    multiplier was typed 30 instead of 0.3, with weight decay 0: the query and key weights grow
    step after step and the pre-softmax attention logits with them."""
    gen = seeded(4001)
    model = _arcee()
    qk = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    base = 1e-3
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": base * 30, "weight_decay": 0.0}],
        lr=base,
        weight_decay=0.1,
    )
    batches = text_batches(gen)
    probe, _ = next(text_batches(torch.Generator().manual_seed(1)))
    first = _pre_rope_logit_max(model, probe)
    fit(ctx, model, opt, batches, 300, loss_fn=lm_loss, forward=_hf_logits, classifier=False)
    last = _pre_rope_logit_max(model, probe)
    ctx.check(f"attention logit bound grew 20x ({first:.2f} -> {last:.1f})", last > 20 * first)


# -- output-logit divergence: Seed-OSS with a z-loss of the wrong sign switched on at step 100 ---


@scenario(
    "hf_seed_oss_lm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=100,
    note="z-loss switched on at step 100 with its sign flipped",
)
def h40_seed_oss_zloss_sign(ctx: Context) -> None:
    """A Seed-OSS causal LM; the config turns a z-loss on after 100 steps, but the helper
    returns ``-coef * logZ**2``: log Z is rewarded for growing, slowly and then faster, and the
    cross-entropy follows it up once the logits' scale swamps what the model has learnt."""
    gen = seeded(4002)
    model = _seed_oss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    logz: list[float] = []

    state: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = m(x).logits
        state["logits"] = out
        return out

    def bugged(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(state["logits"].float(), dim=-1)
        logz.append(float(z.mean().detach()))
        if step < 100:
            return loss
        return loss - 2e-2 * (z**2).mean()  # meant: + 2e-4 * (z**2).mean()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        420,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=bugged,
        classifier=False,
    )
    ctx.check(
        f"log Z climbed by 20 after step 100 ({logz[100]:.1f} -> {logz[-1]:.1f})",
        logz[-1] > logz[100] + 20,
    )


# -- a learning rate above the stability limit: MLCD, warm-up to a peak meant for a big batch ---


@scenario(
    "hf_mlcd_vision_cls",
    "adam",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="warm-up to an SGD recipe's peak LR 0.2; past 0.04 from step 100 (0.03 trains fine)",
)
def h40_mlcd_warmup_overshoot(ctx: Context) -> None:
    """An MLCD vision tower + head on digits with Adam; the linear warm-up climbs over 500
    steps to the peak LR of the SGD recipe it was copied from (0.2). It learns while the LR is
    small and breaks once the LR passes what the curvature allows."""
    gen = seeded(4003)
    model = MLCDClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    lrs: list[float] = []

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.2 * min((step + 1) / 500, 1.0)
        lrs.append(opt.param_groups[0]["lr"])

    fit(ctx, model, opt, digit_batches(gen), 450, before=warmup)
    low = min(ctx.losses[:150])
    ends = sum(ctx.losses[-20:]) / 20
    ctx.check(f"learned first (min loss {low:.2f})", low < 0.5 * ctx.losses[0])
    ctx.check(f"lost it at the high LR (last 20 mean {ends:.2f})", ends > max(2 * low, low + 1.0))


# -- a frozen layer: LUKE, layer-wise LR that starts at zero --------------------------------------

_LUKE_LAYER0 = (
    "luke.encoder.layer.0",
    "luke.encoder.layer.0.attention.self.query",
    "luke.encoder.layer.0.attention.self.key",
    "luke.encoder.layer.0.attention.self.value",
    "luke.encoder.layer.0.attention.output.dense",
    "luke.encoder.layer.0.intermediate.dense",
    "luke.encoder.layer.0.output.dense",
)


@scenario(
    "hf_luke_cls",
    "radam",
    "update_ratio_out_of_range",
    where=_LUKE_LAYER0,
    diverges=None,
    heldout=True,
    note="layer-wise LR base * i / (L - 1): layer 0 gets 0",
)
def h40_luke_layerwise_lr_zero(ctx: Context) -> None:
    """A LUKE classifier with a hand-written layer-wise LR (higher for upper layers) computed
    as ``base * i / (L - 1)``: encoder layer 0 gets LR 0 and never moves; the rest trains."""
    gen = seeded(4004)
    model = _luke()
    layers = model.luke.encoder.layer
    groups = [
        {"params": list(layer.parameters()), "lr": 2e-3 * i / (len(layers) - 1)}
        for i, layer in enumerate(layers)
    ]
    ids = {id(p) for g in groups for p in g["params"]}
    groups.insert(0, {"params": [p for p in model.parameters() if id(p) not in ids]})
    opt = torch.optim.RAdam(groups, lr=2e-3)
    before = layers[0].attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 200, forward=_hf_logits)
    ctx.check(
        "encoder layer 0 unchanged", torch.equal(before, layers[0].attention.self.query.weight)
    )
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"the rest learned ({first:.3f} -> {last:.3f})", last < 0.8 * first)


# -- softmax collapse: FlauBERT fine-tuned with a temperature typo -------------------------------


@scenario(
    "hf_flaubert_cls",
    "adamax",
    "softmax_collapse",
    where="sequence_summary.summary",
    diverges=None,
    heldout=True,
    note="logits divided by 0.01 (meant 1.0) on a fixed set of 64",
)
def h40_flaubert_temperature_collapse(ctx: Context) -> None:
    """A FlauBERT classifier fine-tuned on a fixed set of 64 sequences, logits divided by a
    temperature of 0.01 (a typo for 1.0): most rows' float32 softmax becomes exactly one-hot and
    their gradient exactly zero."""
    gen = seeded(4005)
    model = _flaubert()
    x, y = next(bert_batches(gen, batch=64))
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(x).logits / 0.01

    fit(ctx, model, opt, _fixed(x, y), 200, forward=forward)
    with torch.no_grad():
        share = collapsed_fraction(forward(model, x), y)
    ctx.check(f"half the rows collapsed ({share:.2f})", share > 0.5)


# -- exploding gradients: ByteNet, a reversed max-norm constraint on one block -------------------


class ByteNetBlock(nn.Module):
    """Residual block: 1x1 reduce, dilated causal conv, 1x1 expand (ReLU between)."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.reduce = nn.Conv1d(dim, dim // 2, 1)
        self.conv = nn.Conv1d(dim // 2, dim // 2, 3, dilation=dilation)
        self.expand = nn.Conv1d(dim // 2, dim, 1)
        self.pad = 2 * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(F.relu(x))
        h = self.conv(F.pad(F.relu(h), (self.pad, 0)))
        return x + self.expand(F.relu(h))


class ByteNet(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 48, dilations=(1, 2, 4, 8, 1, 2)) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(ByteNetBlock(dim, d) for d in dilations)
        self.out = nn.Conv1d(dim, vocab, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.out(F.relu(x)).transpose(1, 2)


@scenario(
    "bytenet_char_lm",
    "sgd_mom",
    "exploding_gradients",
    where=("blocks.2.conv", "blocks.2"),
    diverges="auto",
    heldout=True,
    onset=80,
    note="max-norm constraint with the comparison reversed, from step 80",
)
def h40_bytenet_maxnorm_reversed(ctx: Context) -> None:
    """A ByteNet-style character LM; from step 80 a hand-written max-norm constraint on block
    2's dilated conv (meant: shrink the weight when its norm exceeds the cap) multiplies by the
    ratio the wrong way up, so the weight grows 6% a step: the gradients of every layer below
    it grow with its Jacobian until the run blows up."""
    gen = seeded(4006)
    model = ByteNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conv = model.blocks[2].conv

    def constrain(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                norm = conv.weight.norm()
                cap = 0.94 * norm  # the cap tracks the norm: every step "exceeds" it
                conv.weight.mul_(norm / cap)  # meant: cap / norm

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=48),
        300,
        loss_fn=lm_loss,
        before=constrain,
        classifier=False,
    )
    g = ctx.grad_norms
    finite = [v for v in g[80:] if v == v and v != float("inf")]
    ctx.check(
        f"gradient norm grew 100x after step 80 ({g[79]:.2f} -> {max(finite):.3g})",
        max(finite) > 100 * g[79],
    )


# -- a NaN from one module on one bad sample: Set2Set readout over an empty graph ----------------


class Set2Set(nn.Module):
    """Set2Set readout (Vinyals et al. 2016): an LSTM query attends over a graph's nodes."""

    def __init__(self, dim: int, steps: int = 3) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)
        self.steps = steps

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, d = h.shape
        q_star = h.new_zeros(b, 2 * d)
        state = (h.new_zeros(b, d), h.new_zeros(b, d))
        for _ in range(self.steps):
            state = self.cell(q_star, state)
            q = state[0]
            e = (h * q[:, None]).sum(-1).masked_fill(~mask, float("-inf"))
            a = torch.softmax(e, dim=1)  # a graph with no nodes: every score -inf -> NaN
            r = (a[..., None] * h).sum(1)
            q_star = torch.cat([q, r], -1)
        return q_star


class GraphNet(nn.Module):
    def __init__(self, feats: int = 6, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.self_msg = nn.Linear(dim, dim)
        self.neigh_msg = nn.Linear(dim, dim)
        self.readout = Set2Set(dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, batch) -> torch.Tensor:
        x, adj, mask = batch
        h = F.relu(self.embed(x))
        deg = adj.sum(-1, keepdim=True).clamp(min=1)
        h = F.relu(self.self_msg(h) + self.neigh_msg(adj @ h / deg)) * mask[..., None]
        return self.head(self.readout(h, mask))


def _graph_batches(gen: torch.Generator, batch: int = 32, nmax: int = 10, feats: int = 6):
    """Random graphs of 3..10 nodes; label: is the graph's count of 'type 0' nodes (feature 0
    largest) connected to another type-0 node above 1?"""
    while True:
        n = torch.randint(3, nmax + 1, (batch,), generator=gen)
        mask = torch.arange(nmax)[None] < n[:, None]
        x = torch.randn(batch, nmax, feats, generator=gen) * mask[..., None]
        upper = torch.rand(batch, nmax, nmax, generator=gen) < 0.3
        adj = torch.triu(upper, 1).float()
        adj = (adj + adj.transpose(1, 2)) * mask[:, None] * mask[:, :, None]
        kind = (x.argmax(-1) == 0) & mask
        linked = ((adj @ kind.float()[..., None]).squeeze(-1) > 0) & kind
        y = (linked.sum(1) > 1).long()
        yield (x, adj, mask), y


@scenario(
    "set2set_graph_readout",
    "adagrad",
    "nonfinite",
    where="readout",
    diverges=170,
    heldout=True,
    onset=170,
    note="one empty graph (all atoms filtered out) at step 170",
)
def h40_set2set_empty_graph(ctx: Context) -> None:
    """A message-passing net with a Set2Set readout on generated graphs; at step 170 one graph
    in the batch arrives with no nodes (a preprocessing filter removed them all): the readout's
    masked softmax over an empty set is 0/0, NaN, and the NaN update spreads to every weight."""
    gen = seeded(4007)
    model = GraphNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, b, y):
        if step == 170:
            x, adj, mask = b
            mask = mask.clone()
            mask[9] = False
            b = (x * mask[..., None], adj * mask[:, None] * mask[:, :, None], mask)
        return b, y

    fit(ctx, model, opt, _graph_batches(gen), 220, alter=alter)
    finite = [v == v and abs(v) != float("inf") for v in ctx.losses]
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    first, before = sum(ctx.losses[:20]) / 20, sum(ctx.losses[150:170]) / 20
    ctx.check(f"learned before the bad graph ({first:.3f} -> {before:.3f})", before < 0.9 * first)


# -- a data outlier: MAF on moons, one batch in the wrong units ------------------------------------


class MADE(nn.Module):
    """A 2-D masked autoencoder: outputs shift and log-scale of x_i from x_<i."""

    def __init__(self, dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 2 * dim)
        deg_in = torch.arange(1, dim + 1)
        deg_h = torch.arange(hidden) % (dim - 1) + 1 if dim > 1 else torch.ones(hidden)
        self.register_buffer("m1", (deg_h[:, None] >= deg_in[None]).float())
        self.register_buffer("m2", (deg_h[:, None] >= deg_h[None]).float())
        self.register_buffer("m3", (deg_in.repeat(2)[:, None] > deg_h[None]).float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(F.linear(x, self.fc1.weight * self.m1, self.fc1.bias))
        h = F.relu(F.linear(h, self.fc2.weight * self.m2, self.fc2.bias))
        mu, log_s = F.linear(h, self.fc3.weight * self.m3, self.fc3.bias).chunk(2, -1)
        return mu, torch.tanh(log_s)


class MAF(nn.Module):
    """Masked autoregressive flow: stacked MADEs with the coordinate order reversed between."""

    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.mades = nn.ModuleList(MADE() for _ in range(layers))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logdet = torch.zeros(len(x))
        for made in self.mades:
            mu, log_s = made(x)
            x = (x - mu) * torch.exp(-log_s)
            logdet = logdet - log_s.sum(-1)
            x = x.flip(-1)
        base = -0.5 * (x**2).sum(-1) - math.log(2 * math.pi)
        return base + logdet


def _moons(gen: torch.Generator, batch: int = 128):
    from sklearn.datasets import make_moons

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    pts, _ = make_moons(4096, noise=0.06, random_state=seed)
    pts = torch.tensor(pts, dtype=torch.float32)
    pts = (pts - pts.mean(0)) / pts.std(0)
    while True:
        order = torch.randperm(len(pts), generator=gen)
        for i in range(0, len(pts) - batch + 1, batch):
            x = pts[order[i : i + batch]]
            yield x, x


def _nll(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return -out.mean()


def _log_prob(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.log_prob(x)


@scenario(
    "maf_flow_2d",
    "nadam",
    "data_outlier",
    diverges=180,
    heldout=True,
    onset=180,
    note="six points in millimetres instead of metres at step 180",
)
def h40_maf_unit_outlier(ctx: Context) -> None:
    """A MAF on generated moons; at step 180 six points of one batch come from a file recorded
    in millimetres (1000x the scale): their negative log-likelihood is enormous for that one
    batch, the update it makes throws the flow off, and it then re-learns."""
    gen = seeded(4008)
    model = MAF()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 180:
            x = x.clone()
            x[:6] = x[:6] * 1000.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _moons(gen),
        280,
        loss_fn=_nll,
        forward=_log_prob,
        alter=alter,
        classifier=False,
    )
    before = ctx.losses[170:180]
    ctx.check(
        f"loss spiked at 180 ({max(before):.2f} -> {ctx.losses[180]:.3g})",
        ctx.losses[180] > max(before) + 5 * (max(before) - min(before)) + 5,
    )


@scenario("maf_flow_2d", "sg_adabelief", "healthy", heldout=True)
def h40_maf_healthy(ctx: Context) -> None:
    gen = seeded(4009)
    model = MAF()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _moons(gen), 250, loss_fn=_nll, forward=_log_prob, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]))


# -- slow divergence: consistency distillation with an uncapped EMA schedule ---------------------

_CENTRES = torch.tensor(
    [[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)]
)
_SPREAD = 0.1


def _mixture_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t = x0 + t z] for the 8-Gaussian ring (exact): the teacher's denoiser."""
    var = _SPREAD**2 + t**2  # (b, 1)
    d2 = ((x[:, None] - _CENTRES[None]) ** 2).sum(-1)  # (b, 8)
    w = torch.softmax(-0.5 * d2 / var, dim=1)
    post = _CENTRES[None] + (_SPREAD**2 / var)[..., None] * (x[:, None] - _CENTRES[None])
    return (w[..., None] * post).sum(1)


class ConsistencyNet(nn.Module):
    """f(x, t) = c_skip(t) x + c_out(t) F(x, t) (Song et al. 2023 parameterisation)."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, sd = 0.002, 0.5
        c_skip = sd**2 / ((t - eps) ** 2 + sd**2)
        c_out = sd * (t - eps) / (sd**2 + t**2).sqrt()
        return c_skip * x + c_out * self.net(torch.cat([x, torch.log(t)], -1))


def _karras_times(n: int = 18, lo: float = 0.002, hi: float = 2.0) -> torch.Tensor:
    i = torch.arange(n) / (n - 1)
    return (lo ** (1 / 7) + i * (hi ** (1 / 7) - lo ** (1 / 7))) ** 7


@scenario(
    "consistency_distill_2d",
    "sg_lion",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=200,
    note="target EMA decay ramp not capped: above 1 from step 200",
)
def h40_consistency_ema_above_one(ctx: Context) -> None:
    """Consistency distillation of an exact mixture teacher on 2-D points (Euler step of the
    PF-ODE between adjacent Karras times, target network by EMA). The EMA decay ramps from 0.95
    by 2.5e-4 a step and the cap was forgotten: past step 200 the target extrapolates away from
    the online net instead of averaging, slowly, and the loss climbs with nothing else amiss."""
    gen = seeded(4010)
    model = ConsistencyNet()
    target = ConsistencyNet()
    target.load_state_dict(model.state_dict())
    target.requires_grad_(False)
    opt = sgo.Lion(model.parameters(), lr=1e-4, fused=False)
    times = _karras_times()

    def batches():
        while True:
            k = torch.randint(0, 8, (256,), generator=gen)
            x0 = _CENTRES[k] + _SPREAD * torch.randn(256, 2, generator=gen)
            yield x0, x0

    def forward(m: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        n = torch.randint(0, len(times) - 1, (len(x0), 1), generator=gen)
        t1, t0 = times[n + 1], times[n]
        x1 = x0 + t1 * torch.randn(x0.shape, generator=gen)
        d = (x1 - _mixture_denoiser(x1, t1)) / t1  # PF-ODE direction dx/dt
        x_prev = x1 + (t0 - t1) * d
        with torch.no_grad():
            goal = target(x_prev, t0)
        return m(x1, t1) - goal

    def ema(step: int) -> None:
        mu = 0.95 + 2.5e-4 * step  # meant: min(0.95 + 2.5e-4 * step, 0.999)
        with torch.no_grad():
            for pt, p in zip(target.parameters(), model.parameters(), strict=True):
                pt.mul_(mu).add_(p, alpha=1 - mu)

    fit(
        ctx,
        model,
        opt,
        batches(),
        450,
        loss_fn=lambda r, _y: (r**2).sum(-1).mean(),
        forward=forward,
        before=ema,
        classifier=False,
    )
    low = min(ctx.losses[150:200])
    high = max(v for v in ctx.losses[200:] if math.isfinite(v))
    ctx.check(f"loss climbed 10x after step 200 ({low:.4f} -> {high:.3g})", high > 10 * low)


# -- dead units: Noise2Noise U-Net with an activation-sparsity penalty far too strong ------------


class TinyUNet(nn.Module):
    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, width, 3, padding=1)
        self.enc2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 1)
        self.bottleneck: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))
        self.bottleneck = e2
        d = F.relu(self.dec(torch.cat([self.up(e2), e1], 1)))
        return self.out(d).flatten(1)


def _noisy_pairs(gen: torch.Generator, batch: int = 64):
    """Noise2Noise: two independently noised copies of each digit; no clean target."""
    for x, _ in digit_batches(gen, batch):
        yield (
            x + 0.3 * torch.randn(x.shape, generator=gen),
            x + 0.3 * torch.randn(x.shape, generator=gen),
        )


@scenario(
    "noise2noise_unet",
    "rmsprop",
    "loss_of_plasticity",
    where="enc2",
    diverges=None,
    heldout=True,
    onset=100,
    note="L1 activation penalty on the bottleneck, weight 1.0 (meant 1e-4), from step 100",
)
def h40_noise2noise_sparsity_kills(ctx: Context) -> None:
    """A Noise2Noise U-Net; from step 100 an activation-sparsity penalty on the bottleneck's
    ReLU output comes in with weight 1.0 instead of 1e-4: it pushes every positive
    pre-activation of ``enc2`` down until its channels are dead, and a dead ReLU gets no
    gradient back. The skip path keeps the denoiser going, worse."""
    gen = seeded(4011)
    model = TinyUNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        return loss + 1.0 * model.bottleneck.abs().mean()

    fit(
        ctx,
        model,
        opt,
        _noisy_pairs(gen),
        400,
        loss_fn=F.mse_loss,
        extra_loss=penalty,
        classifier=False,
    )
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        model(x)
    share = dead_fraction(model.bottleneck)
    ctx.check(f"over half of enc2's channels dead ({share:.2f})", share >= 0.5)


# -- AMP overflow: stacked hourglass under fp16 autocast with a big initial scale ----------------


class Hourglass(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(width, width, 3, padding=1)
        self.inner = nn.Conv2d(width, width, 3, padding=1)
        self.skip = nn.Conv2d(width, width, 1)
        self.up = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.down(F.max_pool2d(x, 2)))
        h = F.relu(self.inner(h))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return F.relu(self.up(h) + self.skip(x))


class StackedHourglass(nn.Module):
    """Two hourglasses with intermediate heatmap supervision (Newell et al. 2016)."""

    def __init__(self, width: int = 16, joints: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.hg1 = Hourglass(width)
        self.head1 = nn.Conv2d(width, joints, 1)
        self.remap = nn.Conv2d(joints, width, 1)
        self.hg2 = Hourglass(width)
        self.head2 = nn.Conv2d(width, joints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h1 = self.hg1(h)
        p1 = self.head1(h1)
        p2 = self.head2(self.hg2(h1 + self.remap(p1)))
        return torch.stack([p1, p2], 1)


def _keypoint_batches(gen: torch.Generator, batch: int = 32, size: int = 16, joints: int = 2):
    """Images with a bright blob at each of two random keypoints, targets Gaussian heatmaps."""
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    while True:
        pts = torch.randint(2, size - 2, (batch, joints, 2), generator=gen).float()
        d2 = ((grid[None, None].float() - pts[:, :, None, None]) ** 2).sum(-1)
        heat = torch.exp(-d2 / 2.0)
        img = heat.sum(1, keepdim=True) + 0.1 * torch.randn(batch, 1, size, size, generator=gen)
        yield img, heat


def _heatmap_loss(out: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    return ((out - heat[:, None]) ** 2).mean() * 100


@scenario(
    "stacked_hourglass_keypoints",
    "sgd",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast, GradScaler from 2**30 growing every 20 steps",
)
def h40_hourglass_amp_overflow(ctx: Context) -> None:
    """A stacked-hourglass keypoint net under fp16 autocast; the GradScaler starts at 2**30 and
    grows every 20 steps: the scaled gradients overflow float16 now and then, the scaler skips
    those steps and backs off, and training carries on (benign)."""
    gen = seeded(4012)
    model = StackedHourglass()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=20)
    fit(
        ctx,
        model,
        opt,
        _keypoint_batches(gen),
        150,
        loss_fn=_heatmap_loss,
        scaler=scaler,
        amp=True,
        classifier=False,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check(f"scaler skipped steps ({drops + (ctx.scales[0] < 2.0**30)})", drops >= 2)
    first, last = sum(ctx.losses[:20]) / 20, sum(ctx.losses[-20:]) / 20
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.8 * first)


@scenario("stacked_hourglass_keypoints", "adam", "healthy", heldout=True)
def h40_hourglass_healthy(ctx: Context) -> None:
    gen = seeded(4013)
    model = StackedHourglass()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _keypoint_batches(gen), 200, loss_fn=_heatmap_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- Adam's second moment poisoned: QR-DQN, an importance weight left unnormalised once ----------


class QRNet(nn.Module):
    def __init__(self, states: int = 10, actions: int = 2, quantiles: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(states, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, actions * quantiles)
        self.actions, self.quantiles = actions, quantiles

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc2(F.relu(self.fc1(s))))
        return self.out(h).reshape(-1, self.actions, self.quantiles)


def _chain_transitions(gen: torch.Generator, states: int = 10, batch: int = 64):
    """Uniform replay from a generated chain: action 1 moves right, 0 left; reward 1 on
    reaching the right end (which ends the episode), a small cost per step, noisy."""
    while True:
        s = torch.randint(0, states - 1, (batch,), generator=gen)
        a = torch.randint(0, 2, (batch,), generator=gen)
        s2 = (s + 2 * a - 1).clamp(0, states - 1)
        done = (s2 == states - 1).float()
        r = done - 0.01 + 0.05 * torch.randn(batch, generator=gen)
        yield (
            F.one_hot(s, states).float(),
            a,
            r,
            F.one_hot(s2, states).float(),
            done,
        )


def _qr_loss(
    online: QRNet, target: QRNet, batch, weights: torch.Tensor | None = None, gamma: float = 0.9
) -> torch.Tensor:
    s, a, r, s2, done = batch
    n = online.quantiles
    taus = (torch.arange(n) + 0.5) / n
    theta = online(s)[torch.arange(len(a)), a]  # (b, n)
    with torch.no_grad():
        nxt = target(s2)
        best = nxt.mean(-1).argmax(-1)
        goal = r[:, None] + gamma * (1 - done[:, None]) * nxt[torch.arange(len(a)), best]
    u = goal[:, None, :] - theta[:, :, None]  # (b, n_theta, n_goal)
    huber = torch.where(u.abs() <= 1, 0.5 * u**2, u.abs() - 0.5)
    per = ((taus[None, :, None] - (u < 0).float()).abs() * huber).mean(-1).sum(-1)
    if weights is not None:
        per = per * weights
    return per.mean()


def _run_qr_dqn(ctx: Context, opt_fn, seed: int, steps: int, poison_at: int | None, track=None):
    gen = seeded(seed)
    online, target = QRNet(), QRNet()
    target.load_state_dict(online.state_dict())
    opt = opt_fn(online.parameters())
    ctx.attach(online, opt)
    data = _chain_transitions(gen)
    for step in range(steps):
        batch = next(data)
        if track is not None:
            track(step, online)
        weights = torch.ones(len(batch[1]))
        if step == poison_at:
            # prioritized replay: w = (N P)^-beta / max w; this once the priorities were read
            # from a freshly reset buffer (P ~ 1e-6) and the division by max w was skipped
            weights = 1e4 * (
                1 + torch.rand(len(weights), generator=torch.Generator().manual_seed(1))
            )
        loss = _qr_loss(online, target, batch, weights)
        loss.backward()
        grads = [p.grad.norm() for p in online.parameters()]
        ctx.grad_norms.append(float(torch.stack(grads).norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 50 == 49:
            target.load_state_dict(online.state_dict())


@scenario(
    "qr_dqn_chain",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="prioritized-replay weights left unnormalised (~1e4) at step 80",
)
def h40_qr_dqn_is_weight_spike(ctx: Context) -> None:
    """QR-DQN on a generated chain with a target network; at step 80 one batch's
    importance-sampling weights come out unnormalised (1e4 to 2e4): one giant gradient, then Adam's v
    (which forgets over ~1000 steps) holds its square and every later update is tiny."""
    moved: list[torch.Tensor] = []

    def track(step: int, net: nn.Module) -> None:
        if step in (40, 75, 150, 185):
            moved.append(torch.cat([p.detach().flatten() for p in net.parameters()]).clone())

    _run_qr_dqn(
        ctx,
        lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999)),
        4014,
        260,
        poison_at=80,
        track=track,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check(
        f"updates shrank 3x after the spike ({before:.3f} -> {after:.3f})", after < before / 3
    )


@scenario("qr_dqn_chain", "sgd_nesterov", "healthy", heldout=True)
def h40_qr_dqn_healthy(ctx: Context) -> None:
    _run_qr_dqn(
        ctx,
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, nesterov=True),
        4015,
        260,
        poison_at=None,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]))


# -- healthy: MLCD on digits ----------------------------------------------------------------------


@scenario("hf_mlcd_vision_cls", "adamw", "healthy", heldout=True)
def h40_mlcd_healthy(ctx: Context) -> None:
    gen = seeded(4016)
    model = MLCDClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    fit(ctx, model, opt, digit_batches(gen), 200)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))
