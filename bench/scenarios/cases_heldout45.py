"""Held-out scenarios, set 45 (``h45_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face GraniteMoeHybrid (Mamba-2 + attention hybrid MoE) and Nemotron-H causal
LMs, a VisualBERT classifier on generated region features, a TAPAS classifier on generated token
sequences and an EnCodec audio autoencoder on generated tones (fp16 autocast), all from configs;
a GraphCast-style encode-process-decode mesh net on a generated ring field, a DimeNet-style
directional message-passing net on generated point molecules, a SIGN net (precomputed
propagations) on a generated block-model graph, a TabPFN-style in-context tabular transformer
on generated tasks, a two-tower retrieval model with sampled softmax and logQ correction (fp16
autocast control), an I-AutoRec recommender on generated ratings and a spectral (Fourier
Galerkin) PDE solver on a generated heat equation.

Optimizers: momentum SGD, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop,
Adadelta, ASGD, and steadygrad.optim's Lion and AdaBelief.
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
    fit,
    scenario,
    seeded,
    text_batches,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


# -- Hugging Face GraniteMoeHybrid: attention multiplier typo ------------------------------------


def _granite(attention_multiplier: float):
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    config = GraniteMoeHybridConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        shared_intermediate_size=64,
        num_hidden_layers=2,
        layer_types=["mamba", "attention"],
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=16,
        mamba_chunk_size=16,
        attention_multiplier=attention_multiplier,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GraniteMoeHybridForCausalLM(config)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h45_hf_granitemoehybrid_lm",
    "adamw",
    "attention_logit_growth",
    where="model.layers.1.self_attn",
    diverges=None,
    heldout=True,
    note="attention_multiplier set to sqrt(head_dim) instead of 1/sqrt(head_dim)",
)
def h45_granite_attention_multiplier_typo(ctx: Context) -> None:
    """GraniteMoeHybrid scales q.k by ``config.attention_multiplier`` instead of 1/sqrt(d). The
    config was written with ``head_dim ** 0.5`` (4.0) where ``head_dim ** -0.5`` (0.25) was
    meant: the attention logits are 16x too large, and with AdamW at a brisk rate the q/k
    projections of the attention layer keep growing them until the rows saturate to one-hot."""
    gen = seeded(4501)
    model = _granite(attention_multiplier=4.0)
    attn = model.model.layers[1].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach())),
    ]
    peaks: list[float] = []

    def record(step: int, loss: torch.Tensor) -> torch.Tensor:
        q = seen["q"].reshape(*seen["q"].shape[:2], 2, -1).transpose(1, 2)
        k = seen["k"].reshape(*seen["k"].shape[:2], 2, -1).transpose(1, 2)
        logits = attn.scaling * q @ k.transpose(-1, -2)
        peaks.append(float(logits.abs().amax()))
        return loss

    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.0)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        260,
        loss_fn=_lm_loss,
        forward=_lm_forward,
        extra_loss=record,
        classifier=False,
    )
    for h in hooks:
        h.remove()
    # saturation: share of query rows whose largest attention weight is above 0.99
    x, _ = next(text_batches(gen, batch=16, length=32))
    with torch.no_grad():
        model(input_ids=x)
        q = seen["q"].reshape(16, 32, 2, -1).transpose(1, 2)
        k = seen["k"].reshape(16, 32, 2, -1).transpose(1, 2)
        s = attn.scaling * q @ k.transpose(-1, -2)
        s = s.masked_fill(torch.ones(32, 32, dtype=torch.bool).triu(1), float("-inf"))
        sat = float((s.softmax(-1).amax(-1)[..., 8:] > 0.99).float().mean())
    ctx.check("attention logits grew 10x", max(peaks[-20:]) > 10 * peaks[0])
    ctx.check("over half the attention rows saturated (max weight > 0.99)", sat > 0.5)


@scenario("h45_hf_granitemoehybrid_lm", "radam", "healthy", heldout=True)
def h45_granite_healthy(ctx: Context) -> None:
    gen = seeded(4502)
    model = _granite(attention_multiplier=0.25)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        200,
        loss_fn=_lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))


# -- Hugging Face Nemotron-H: decoupled weight decay with the wrong sign on the head -------------


def _nemotron_h():
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = NemotronHConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        layers_block_type=["mamba", "attention", "mlp"],
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=1,
        chunk_size=16,
        max_position_embeddings=64,
        use_mamba_kernels=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return NemotronHForCausalLM(config)


@scenario(
    "h45_hf_nemotron_h_lm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=80,
    note="hand-written decay on the head grows it by (1 + 0.04) a step from step 80",
)
def h45_nemotron_h_head_decay_sign(ctx: Context) -> None:
    """From step 80 (a "phase 2" of the recipe) the head gets a hand-written decoupled weight
    decay, ``p.add_(p, alpha=lr_wd)``, where ``alpha=-lr_wd`` was meant: every step multiplies
    the head by 1.04. Adam's bounded steps cannot keep up with a multiplicative growth, so the
    output logits (and log Z) run away and the loss climbs."""
    gen = seeded(4503)
    model = _nemotron_h()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    spread: dict[int, float] = {}

    def decay(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                model.lm_head.weight.add_(model.lm_head.weight, alpha=0.04)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x).logits
        spread[len(spread)] = float(logits.detach().std(-1).mean())
        return logits

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        300,
        loss_fn=_lm_loss,
        forward=forward,
        before=decay,
        classifier=False,
    )
    s = list(spread.values())[1:]  # [0] is the probe batch
    ctx.check("logit spread grew 20x after step 80", _mean(s[-10:]) > 20 * _mean(s[70:80]))
    ctx.check(
        "loss climbed above its pre-bug level",
        _mean(ctx.losses[-10:]) > 2 * _mean(ctx.losses[70:80]),
    )


# -- Hugging Face VisualBERT: a temperature divided the wrong way --------------------------------


def _visual_batches(gen: torch.Generator, batch: int = 32, classes: int = 4):
    """Questions as random tokens, 6 region features of dim 16: the label is the prototype most
    of the regions are drawn around (an easy, separable task)."""
    protos = torch.randn(classes, 16, generator=gen) * 2.0
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        regions = protos[y][:, None] + 0.5 * torch.randn(batch, 6, 16, generator=gen)
        ids = torch.randint(3, 128, (batch, 8), generator=gen)
        yield (ids, regions), y


def _visual_bert(classes: int = 4):
    from transformers import VisualBertConfig, VisualBertForQuestionAnswering

    config = VisualBertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        visual_embedding_dim=16,
        num_labels=classes,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return VisualBertForQuestionAnswering(config)


@scenario(
    "h45_hf_visual_bert_cls",
    "sg_lion",
    "softmax_collapse",
    where="cls",
    diverges=None,
    heldout=True,
    note="logits divided by a 0.02 temperature meant as a multiplier",
)
def h45_visual_bert_temperature_inverted(ctx: Context) -> None:
    """The head's logits are divided by ``tau=0.02`` (the config's value was meant for a
    ``logits * tau`` convention): the logits come out 50x larger, the classifier passes zero
    training loss within a few dozen steps and the float32 softmax of most rows is exactly
    one-hot."""
    gen = seeded(4504)
    model = _visual_bert()
    tau = 0.02

    def forward(m: nn.Module, x) -> torch.Tensor:
        ids, regions = x
        out = m(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            visual_embeds=regions,
            visual_attention_mask=torch.ones(regions.shape[:2], dtype=torch.long),
        )
        return out.logits / tau

    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)
    batches = _visual_batches(gen)
    fit(ctx, model, opt, batches, 300, forward=forward)
    x, y = next(batches)
    with torch.no_grad():
        collapsed = collapsed_fraction(forward(model, x), y)
    ctx.check("over half the rows' softmax exactly one-hot", collapsed > 0.5)
    ctx.check("training loss reached ~0", _mean(ctx.losses[-10:]) < 1e-3)


# -- Hugging Face TAPAS: one gradient bucket summed, not averaged, over workers -------------------


def _tapas():
    from transformers import TapasConfig, TapasForSequenceClassification

    config = TapasConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return TapasForSequenceClassification(config)


def _column_batches(gen: torch.Generator, batch: int = 32, length: int = 12):
    """Flattened one-row tables: the label is whether the first cell's token is numeric
    (ids 3..40) or text (ids 41..127)."""
    while True:
        x = torch.randint(3, 128, (batch, length), generator=gen)
        yield x, (x[:, 1] <= 40).long()


_TAPAS_SPIKED = "tapas.encoder.layer.1.intermediate.dense.weight"


@scenario(
    "h45_hf_tapas_cls",
    "sgd_mom",
    "gradient_spike",
    where=("tapas.encoder.layer.1.intermediate.dense", _TAPAS_SPIKED),
    diverges=None,
    heldout=True,
    onset=150,
    note="one bucket's gradient summed over 64 simulated workers at step 150",
)
def h45_tapas_ddp_bucket_sum(ctx: Context) -> None:
    """A hand-rolled data-parallel all-reduce (simulated by a gradient hook) averages every
    bucket over the 64 workers; after a resume at step 150 the bucket holding layer 1's
    intermediate weight is reduced with SUM and not divided by the world size for that one step:
    its gradient is 64x. Not a data fault: the batch is ordinary. Momentum SGD carries the big
    step for a few iterations, then the run settles back."""
    gen = seeded(4506)
    model = _tapas()
    batches = _column_batches(gen)
    param = dict(model.named_parameters())[_TAPAS_SPIKED]
    state = {"step": 0}
    norms: list[float] = []

    def allreduce(g: torch.Tensor) -> torch.Tensor:
        g = g * 64 if state["step"] == 150 else g
        norms.append(float(g.norm()))
        return g

    param.register_hook(allreduce)

    def before(step: int) -> None:
        state["step"] = step

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x).logits

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(ctx, model, opt, batches, 220, forward=forward, before=before)
    base = sorted(norms[130:150])[10]
    ctx.check("that tensor's gradient 30x its median at 150", norms[150] > 30 * base)
    ctx.check(
        "loss back to its pre-spike level by the end",
        all(_finite(v) for v in ctx.losses)
        and _mean(ctx.losses[-20:]) < 1.2 * _mean(ctx.losses[130:150]) + 0.05,
    )


# -- Hugging Face EnCodec under fp16 autocast: a shard of raw int16 PCM ---------------------------


def _encodec():
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[4, 2],
        codebook_size=32,
        codebook_dim=16,
        num_lstm_layers=1,
        sampling_rate=8000,
        audio_channels=1,
        target_bandwidths=[1.5],
    )
    return EncodecModel(config)


def _tones(gen: torch.Generator, batch: int = 8, length: int = 256):
    t = torch.arange(length) / 8000.0
    while True:
        f = 200 + 1800 * torch.rand(batch, 2, 1, generator=gen)
        a = 0.2 + 0.3 * torch.rand(batch, 2, 1, generator=gen)
        x = (a * torch.sin(2 * math.pi * f * t)).sum(1, keepdim=True)
        yield x, x


def _codec_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Autoencoder pre-training: encoder then decoder, the quantiser bypassed."""
    return m.decoder(m.encoder(x))


@scenario(
    "h45_hf_encodec_codec",
    "adamax",
    "amp_overflow",
    where="encoder.layers.0.conv",
    diverges=110,
    heldout=True,
    onset=110,
    note="from step 110 a shard of raw 24-bit PCM (not divided by 2**23) under fp16 autocast",
)
def h45_encodec_pcm24_shard_fp16(ctx: Context) -> None:
    """Under fp16 autocast, from step 110 the loader reaches a shard of 24-bit PCM stored in
    int32 and forgets to divide by 2**23: waveforms of amplitude ~10^6 go into the first
    convolution, whose fp16 activations exceed 65504 and become inf. Every later step is non-finite; the
    GradScaler skips them and halves its scale each time."""
    gen = seeded(4507)
    model = _encodec()
    first_inf: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def watch(m: nn.Module, i, o) -> None:
        if isinstance(o, torch.Tensor) and o.dtype == torch.float16 and not first_inf:
            if not torch.isfinite(o).all() and all(
                torch.isfinite(t).all() for t in i if isinstance(t, torch.Tensor)
            ):
                first_inf.append(names[m])

    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.ConvTranspose1d, nn.LSTM)):
            mod.register_forward_hook(watch)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 110:
            x = x * 8388607.0
            y = x
        return x, y

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(out, y)

    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(
        ctx,
        model,
        opt,
        _tones(gen),
        150,
        loss_fn=loss_fn,
        forward=_codec_forward,
        alter=alter,
        amp=True,
        scaler=scaler,
        classifier=False,
    )
    ctx.check(
        "finite until 110, not from 110",
        all(_finite(v) for v in ctx.losses[:110]) and not any(_finite(v) for v in ctx.losses[110:]),
    )
    ctx.check(
        "the first fp16 inf came out of encoder.layers.0.conv",
        first_inf[:1] == ["encoder.layers.0.conv"],
    )
    ctx.check(
        "loss fell before the shard", _mean(ctx.losses[100:110]) < 0.8 * _mean(ctx.losses[:5])
    )


# -- GraphCast-style encode-process-decode on a ring multi-mesh: LayerNorm left out ---------------


class MeshNet(nn.Module):
    """Grid -> mesh encoder, K rounds of shared-weight message passing over a multi-mesh (ring
    edges at hops 1, 2, 4, 8), mesh -> grid decoder. GraphCast puts a LayerNorm at the end of
    every MLP; this one was written without them."""

    def __init__(self, n: int = 48, hidden: int = 32, rounds: int = 8) -> None:
        super().__init__()
        src, dst = [], []
        for hop in (1, 2, 4, 8):
            for i in range(n):
                for j in (i + hop, i - hop):
                    src.append(j % n)
                    dst.append(i)
        self.register_buffer("src", torch.tensor(src))
        self.register_buffer("dst", torch.tensor(dst))
        self.n, self.rounds = n, rounds
        self.encoder = nn.Linear(2, hidden)
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.decoder = nn.Linear(hidden, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        pos = torch.linspace(0, 2 * math.pi, self.n + 1)[:-1].sin().expand_as(u)
        h = self.encoder(torch.stack([u, pos], -1))
        for _ in range(self.rounds):
            e = self.edge_mlp(torch.cat([h[:, self.src], h[:, self.dst]], -1))
            agg = torch.zeros_like(h).index_add_(1, self.dst, e)
            h = h + self.node_mlp(torch.cat([h, agg], -1))
        return self.decoder(h).squeeze(-1)


def _advection(gen: torch.Generator, batch: int = 16, n: int = 48):
    x = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    k = torch.arange(1, 4).float()
    while True:
        a = torch.randn(batch, 3, 1, generator=gen) / k[:, None]
        p = 2 * math.pi * torch.rand(batch, 3, 1, generator=gen)
        u0 = (a * torch.sin(k[:, None] * x + p)).sum(1)
        u1 = (a * torch.exp(-0.05 * k[:, None] ** 2) * torch.sin(k[:, None] * (x - 0.4) + p)).sum(1)
        yield u0, u1


def _mesh_init(model: MeshNet) -> MeshNet:
    for mlp in (model.edge_mlp, model.node_mlp):
        for layer in mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight, gain=0.3)
    return model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@scenario(
    "h45_graphcast_mesh",
    "adam",
    "update_ratio_out_of_range",
    where="decoder",
    diverges=None,
    heldout=True,
    note="the decoder's param group got lr=1e-1 (typo for 1e-3), 100x the rest",
)
def h45_graphcast_decoder_group_lr_typo(ctx: Context) -> None:
    """The recipe gives the mesh->grid decoder its own parameter group "to fine-tune it
    slower", written ``lr=1e-1`` where ``1e-3`` was meant: with Adam every decoder weight moves
    by ~0.1 a step, a relative update per step of order one, 100x the rest of the model's."""
    gen = seeded(4508)
    model = _mesh_init(MeshNet())
    dec = [p for n, p in model.named_parameters() if n.startswith("decoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    opt = torch.optim.Adam([{"params": rest}, {"params": dec, "lr": 1e-1}], lr=1e-3)
    ratios: dict[str, list[float]] = {"decoder": [], "rest": []}
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        now = _weights(model)
        if prev:
            for group, keep in (("decoder", True), ("rest", False)):
                r = [
                    float((now[n] - prev[n]).norm() / (prev[n].norm() + 1e-12))
                    for n in now
                    if n.endswith("weight") and n.startswith("decoder.") == keep
                ]
                ratios[group].append(_mean(r))
        prev.update(now)

    fit(ctx, model, opt, _advection(gen), 120, loss_fn=F.mse_loss, before=before, classifier=False)
    ratio = _mean(ratios["decoder"][20:]) / _mean(ratios["rest"][20:])
    ctx.check("decoder's update/weight ratio 10x the rest's", ratio > 10)


# -- DimeNet-style directional message passing: the angular projection left out of the optimizer -


class DirectionalNet(nn.Module):
    """Edge messages m_ji from a radial basis of d_ji; each interaction adds, over triplets
    k -> j -> i, a filter of the spherical-style basis (radial basis of d_kj x cos(l * angle_kji))
    times the incoming message m_kj; the energy is a sum over edges."""

    def __init__(self, atoms: int = 5, hidden: int = 32, radial: int = 6, orders: int = 4) -> None:
        super().__init__()
        edges = [(j, i) for i in range(atoms) for j in range(atoms) if i != j]
        index = {e: n for n, e in enumerate(edges)}
        trip = [
            (index[(k, j)], index[(j, i)], k, j, i)
            for (j, i) in edges
            for k in range(atoms)
            if k not in (i, j)
        ]
        self.register_buffer("e_src", torch.tensor([j for j, _ in edges]))
        self.register_buffer("e_dst", torch.tensor([i for _, i in edges]))
        self.register_buffer("t", torch.tensor(trip))
        self.radial, self.orders, self.edges = radial, orders, len(edges)
        self.embed = nn.Sequential(nn.Linear(radial, hidden), nn.SiLU())
        self.sbf_proj = nn.Linear(radial * orders, hidden, bias=False)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(2))
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def rbf(self, d: torch.Tensor) -> torch.Tensor:
        centres = torch.linspace(0.5, 3.0, self.radial)
        return torch.exp(-4.0 * (d[..., None] - centres) ** 2)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        vec = pos[:, self.e_dst] - pos[:, self.e_src]
        d = vec.norm(dim=-1)
        m = self.embed(self.rbf(d))
        kj, ji = self.t[:, 0], self.t[:, 1]
        a, b = -vec[:, kj], vec[:, ji]  # j->k and j->i
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        angle = torch.acos(cos.clamp(-0.999, 0.999))
        ang = torch.cos(torch.arange(self.orders) * angle[..., None])
        sbf = (self.rbf(d[:, kj])[..., :, None] * ang[..., None, :]).flatten(-2)
        filt = self.sbf_proj(sbf)
        for block in self.blocks:
            msg = filt * block(m)[:, kj]
            m = m + F.silu(torch.zeros_like(m).index_add_(1, ji, msg))
        return self.out(m).sum((1, 2))


def _molecules(gen: torch.Generator, batch: int = 32, atoms: int = 5):
    """Random 5-atom clusters; the energy has pair and angle (three-body) terms."""
    while True:
        pos = 1.2 * torch.randn(batch, atoms, 3, generator=gen)
        d = torch.cdist(pos, pos) + torch.eye(atoms) * 1e3
        pair = torch.exp(-d).sum((1, 2)) / 2
        v = pos[:, None, :, :] - pos[:, :, None, :]  # v[b, j, k] = pos_k - pos_j
        n = v / (v.norm(dim=-1, keepdim=True) + 1e-9)
        cosines = torch.einsum("bjkx,bjix->bjki", n, n)
        w = torch.exp(-d)[:, :, :, None] * torch.exp(-d)[:, :, None, :]
        three = (w * cosines).sum((1, 2, 3)) / 2
        yield pos, pair + three


@scenario(
    "h45_dimenet_directional",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="sbf_proj",
    diverges=None,
    heldout=True,
    note="sbf_proj missing from the optimizer's parameter list: gradients, no updates",
)
def h45_dimenet_sbf_left_out(ctx: Context) -> None:
    """The optimizer is built from ``embed``, ``blocks`` and ``out`` (the list predates the
    angular filter): ``sbf_proj`` gets a gradient every step but is never updated, so the
    three-body filter stays at its random init while the rest trains."""
    gen = seeded(4509)
    model = DirectionalNet()
    params = [*model.embed.parameters(), *model.blocks.parameters(), *model.out.parameters()]
    opt = sgo.AdaBelief(params, lr=2e-3)
    before = model.sbf_proj.weight.detach().clone()
    fit(ctx, model, opt, _molecules(gen, batch=16), 110, loss_fn=F.mse_loss, classifier=False)
    grad_seen = model.sbf_proj.weight.grad
    ctx.check("sbf_proj never changed", torch.equal(before, model.sbf_proj.weight))
    ctx.check("rest of the model trained", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))
    # not in the optimizer, so never zeroed either: its gradient piled up over the run
    ctx.check("sbf_proj got gradients", grad_seen is not None and float(grad_seen.norm()) > 0)


# -- SIGN: precomputed propagations, a warm-up target typo ----------------------------------------


def _sign_data(gen: torch.Generator, nodes: int = 300, classes: int = 3, feats: int = 16):
    y = torch.randint(0, classes, (nodes,), generator=gen)
    same = y[:, None] == y[None, :]
    p = torch.where(same, 0.06, 0.01)
    a = (torch.rand(nodes, nodes, generator=gen) < p).float().triu(1)
    a = a + a.T + torch.eye(nodes)
    dinv = a.sum(1).rsqrt()
    a = dinv[:, None] * a * dinv[None, :]
    x = torch.randn(classes, feats, generator=gen)[y] * 0.3 + 2.0 * torch.randn(
        nodes, feats, generator=gen
    )
    hops = [x]
    for _ in range(3):
        hops.append(a @ hops[-1])
    return torch.stack(hops, 1), y  # (nodes, 4, feats)


def _sign_batches(gen: torch.Generator, batch: int = 64):
    xs, y = _sign_data(gen)
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        yield xs[idx], y[idx]


class SIGN(nn.Module):
    def __init__(self, hops: int = 4, feats: int = 16, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.hop = nn.ModuleList(nn.Linear(feats, hidden) for _ in range(hops))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(hops * hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([f(x[:, i]) for i, f in enumerate(self.hop)], -1))


@scenario(
    "h45_sign_graph",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up ramps to 3.0 (typo for 0.3)",
)
def h45_sign_warmup_target_typo(ctx: Context) -> None:
    """The linear warm-up was meant to reach 0.3 over 150 steps; the config says 3.0. Somewhere
    on the way up the rate passes the momentum-SGD stability limit 2(1 + mu) / lambda_max of
    the loss and the run blows up; nothing else is wrong."""
    gen = seeded(4510)
    model = SIGN()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    rates: list[float] = []
    states: list[dict[str, torch.Tensor]] = []

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 150)
        rates.append(opt.param_groups[0]["lr"])
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(step: int, x: torch.Tensor, y: torch.Tensor):
        seen.append((x, y))
        return x, y

    fit(ctx, model, opt, _sign_batches(gen), 180, before=warmup, alter=keep)
    losses = ctx.losses
    broke = next(
        (
            i
            for i in range(20, len(losses))
            if not _finite(losses[i]) or losses[i] > max(2 * min(losses[:i]), min(losses[:i]) + 1)
        ),
        None,
    )
    ctx.check("the loss blew up", broke is not None)
    if broke is None:
        return
    # the largest Hessian eigenvalue of the step's batch just before the blow-up (power
    # iteration on Hessian-vector products)
    at = broke - 1
    xs, ys = seen[at]
    model.load_state_dict(states[at])
    params = list(model.parameters())
    loss = F.cross_entropy(model(xs), ys)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        nv = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / nv for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    ctx.check("the rate passed 2(1+mu)/lambda_max before the blow-up", rates[at] * lam > 2 * 1.9)


@scenario("h45_sign_graph", "asgd", "healthy", heldout=True)
def h45_sign_healthy(ctx: Context) -> None:
    gen = seeded(4511)
    model = SIGN()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    fit(ctx, model, opt, _sign_batches(gen), 200)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))


# -- TabPFN-style in-context tabular transformer: one step's loss scale not removed ---------------


def _tasks(gen: torch.Generator, batch: int = 16, ctx_n: int = 40, query: int = 20, d: int = 4):
    """Each item is a whole small data set drawn from a prior (random linear boundary): the
    labelled context rows and the query rows whose labels are to be predicted."""
    while True:
        w = torch.randn(batch, d, 1, generator=gen)
        x = torch.randn(batch, ctx_n + query, d, generator=gen)
        y = ((x @ w).squeeze(-1) > 0).long()
        yield (x, y[:, :ctx_n]), y[:, ctx_n:].reshape(-1)


class InContextNet(nn.Module):
    def __init__(self, d: int = 4, hidden: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.x_embed = nn.Linear(d, hidden)
        self.y_embed = nn.Embedding(2, hidden)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
        self.head = nn.Linear(hidden, 2)

    def forward(self, batch) -> torch.Tensor:
        x, y_ctx = batch
        n = y_ctx.shape[1]
        h = self.x_embed(x)
        h = torch.cat([h[:, :n] + self.y_embed(y_ctx), h[:, n:]], 1)
        t = h.shape[1]
        mask = torch.zeros(t, t, dtype=torch.bool)
        mask[:, n:] = True  # everything attends to the labelled context only
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        return self.head(h[:, n:]).reshape(-1, 2)


@scenario(
    "h45_tabpfn_in_context",
    "nadam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=120,
    note="one step's gradient left multiplied by the 65536 loss scale",
)
def h45_tabpfn_unscaled_step(ctx: Context) -> None:
    """After resuming from a mixed-precision checkpoint at step 120, the first backward runs on
    the loss still multiplied by the saved loss scale (65536) and nothing unscales it: one
    gradient 65536x too large on every tensor. NAdam's second moment absorbs (65536 g)^2 and
    divides every later update by it: the updates shrink by orders of magnitude for hundreds of
    steps and learning stalls."""
    gen = seeded(4512)
    model = InContextNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    moves: list[float] = []
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        now = _weights(model)
        if prev:
            moves.append(math.sqrt(sum(float((now[k] - prev[k]).pow(2).sum()) for k in now)))
        prev.update(now)

    def unscaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 120 else loss

    fit(ctx, model, opt, _tasks(gen), 220, before=before, extra_loss=unscaled)
    # moves[i] is the update made at step i
    ctx.check(
        "updates 10x smaller 50 steps on than before the step",
        _mean(moves[170:219]) < _mean(moves[100:120]) / 10,
    )
    ctx.check("the loss stayed finite", all(_finite(v) for v in ctx.losses))


@scenario("h45_tabpfn_in_context", "adadelta", "healthy", heldout=True)
def h45_tabpfn_healthy(ctx: Context) -> None:
    gen = seeded(4513)
    model = InContextNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, _tasks(gen), 220)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))


# -- two-tower retrieval, sampled softmax with logQ correction ------------------------------------


class LogQ(nn.Module):
    """log of each item's sampling probability, from a count table built from the last log."""

    def __init__(self, counts: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("counts", counts.float())

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return torch.log(self.counts[items] / self.counts.sum())


class TwoTower(nn.Module):
    def __init__(self, counts: torch.Tensor, user_dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.user = nn.Sequential(nn.Linear(user_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.item_emb = nn.Embedding(len(counts), hidden)
        self.item = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden))
        self.logq = LogQ(counts)

    def forward(self, batch) -> torch.Tensor:
        u, items = batch
        zu = F.normalize(self.user(u), dim=-1)
        zi = F.normalize(self.item(self.item_emb(items)), dim=-1)
        return zu @ zi.T / 0.1 - self.logq(items)[None, :]


_ITEMS, _NEW = 300, 290  # items 290..299 are a catalogue drop absent from the count table


def _interactions(gen: torch.Generator, batch: int = 64, new_from: int | None = None):
    latent_u = torch.randn(16, 8, generator=gen)
    items = torch.randn(_ITEMS, 8, generator=gen)
    pop = 1.0 / torch.arange(1, _NEW + 1).float() ** 0.8
    step = 0
    while True:
        u = torch.randn(batch, 16, generator=gen)
        scores = (u @ latent_u) @ items[:_NEW].T + pop.log()
        pick = torch.distributions.Categorical(logits=scores).sample()
        if new_from is not None and step >= new_from:
            pick[:4] = _NEW + torch.randint(0, _ITEMS - _NEW, (4,), generator=gen)
        step += 1
        yield (u, pick), torch.arange(batch)


def _counts(gen: torch.Generator) -> torch.Tensor:
    pop = 1.0 / torch.arange(1, _NEW + 1).float() ** 0.8
    counts = torch.zeros(_ITEMS)
    counts[:_NEW] = torch.poisson(2000 * pop / pop.sum() * 10, generator=gen) + 1
    return counts


@scenario(
    "h45_two_tower_logq",
    "adagrad",
    "nonfinite",
    where="logq",
    diverges=140,
    heldout=True,
    onset=140,
    note="new items with count 0: log(0) in the logQ correction",
)
def h45_two_tower_logq_zero_count(ctx: Context) -> None:
    """The logQ correction subtracts log(count / total) from each in-batch logit, the counts
    coming from last month's log. From step 140 a catalogue drop puts items in the batches that
    the table has never seen: count 0, log(0) = -inf, the corrected logit is +inf and the
    softmax gives NaN."""
    gen = seeded(4514)
    model = TwoTower(_counts(gen))
    first: list[int] = []
    state = {"step": 0}

    def watch(m, i, o) -> None:
        if not first and not torch.isfinite(o).all():
            first.append(state["step"])

    model.logq.register_forward_hook(watch)

    def before(step: int) -> None:
        state["step"] = step

    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(ctx, model, opt, _interactions(gen, new_from=141), 170, before=before)
    # batch 0 is the probe: the stream's step 141 is training step 140
    ctx.check("logq produced the first -inf, at step 140", first == [140])
    ctx.check(
        "finite until 140, NaN from 140",
        all(_finite(v) for v in ctx.losses[:140]) and not _finite(ctx.losses[140]),
    )
    ctx.check("loss fell before", _mean(ctx.losses[130:140]) < 0.8 * _mean(ctx.losses[:5]))


@scenario("h45_two_tower_logq", "adamw", "healthy", heldout=True, note="fp16 autocast")
def h45_two_tower_healthy_fp16(ctx: Context) -> None:
    gen = seeded(4515)
    model = TwoTower(_counts(gen))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    fit(ctx, model, opt, _interactions(gen), 170, amp=True, scaler=scaler)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:5]))
    ctx.check("all finite", all(_finite(v) for v in ctx.losses))


# -- I-AutoRec: a warm-restart rate typo saturates the sigmoid code -------------------------------


def _ratings(gen: torch.Generator, users: int = 100, items: int = 150):
    u = torch.randn(users, 3, generator=gen)
    v = torch.randn(items, 3, generator=gen)
    r = (3 + (v @ u.T)).clamp(1, 5)  # (items, users)
    mask = (torch.rand(items, users, generator=gen) < 0.4).float()
    return r, mask


def _item_batches(gen: torch.Generator, batch: int = 32):
    r, mask = _ratings(gen)
    while True:
        idx = torch.randint(0, len(r), (batch,), generator=gen)
        yield r[idx] * mask[idx], (r[idx], mask[idx])


class AutoRec(nn.Module):
    def __init__(self, users: int = 100, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Linear(users, hidden)
        self.decoder = nn.Linear(hidden, users)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.code(x))


def _masked_mse(out: torch.Tensor, target) -> torch.Tensor:
    r, mask = target
    return ((out - r) ** 2 * mask).sum() / mask.sum()


@scenario(
    "h45_autorec_recommender",
    "rmsprop",
    "loss_of_plasticity",
    where="encoder",
    diverges=None,
    heldout=True,
    onset=120,
    note="warm restart at 120 sets lr = base * 1000 for 10 steps",
)
def h45_autorec_restart_saturates_code(ctx: Context) -> None:
    """A warm restart at step 120 was meant to reset the rate to its base value; the schedule
    multiplies by the restart factor twice and sets 1000x for 10 steps. RMSprop's normalised
    steps move every encoder weight by ~1 per step: the pre-activations reach tens and the
    sigmoid code saturates for every item, its gradient vanishes, and the encoder cannot learn
    its way back once the rate is normal again."""
    gen = seeded(4516)
    model = AutoRec()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    r, mask = _ratings(seeded(4516))
    saturated: dict[str, float] = {}

    def sat() -> float:
        with torch.no_grad():
            s = model.code(r * mask)
        return float(((s * (1 - s)) < 1e-3).all(0).float().mean())

    def restart(step: int) -> None:
        if step == 120:
            saturated["before"] = sat()
        opt.param_groups[0]["lr"] = 1.0 if 120 <= step < 130 else 1e-3

    fit(
        ctx,
        model,
        opt,
        _item_batches(gen),
        260,
        loss_fn=_masked_mse,
        before=restart,
        classifier=False,
    )
    saturated["after"] = sat()
    ctx.check("few code units saturated before 120", saturated["before"] < 0.1)
    ctx.check("over 80% of the code units saturated at the end", saturated["after"] > 0.8)
    ctx.check(
        "no progress after the restart: loss no lower than before it",
        _mean(ctx.losses[-20:]) > _mean(ctx.losses[100:120]),
    )


# -- spectral (Fourier-Galerkin) solver for the heat equation: a batch in the wrong units --------


class SpectralSolver(nn.Module):
    """Maps the first 16 Fourier coefficients of u(x, 0) to those of u(x, T) with an MLP, and
    evaluates the solution on the grid by an inverse real FFT."""

    def __init__(self, modes: int = 16, n: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.modes, self.n = modes, n
        self.net = nn.Sequential(
            nn.Linear(2 * modes, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * modes),
        )

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        c = torch.fft.rfft(u0, dim=-1)[:, : self.modes] / self.n
        z = self.net(torch.cat([c.real, c.imag], -1))
        out = torch.complex(z[:, : self.modes], z[:, self.modes :])
        full = torch.zeros(u0.shape[0], self.n // 2 + 1, dtype=out.dtype)
        full[:, : self.modes] = out
        return torch.fft.irfft(full * self.n, n=self.n, dim=-1)


def _heat(gen: torch.Generator, batch: int = 32, n: int = 64, nu_t: float = 0.02):
    x = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    k = torch.arange(1, 6).float()[:, None]
    while True:
        a = torch.randn(batch, 5, 1, generator=gen) / k
        p = 2 * math.pi * torch.rand(batch, 5, 1, generator=gen)
        u0 = (a * torch.sin(k * x + p)).sum(1)
        ut = (a * torch.exp(-nu_t * k**2) * torch.sin(k * x + p)).sum(1)
        yield u0, ut + 0.3 * ut**2


@scenario(
    "h45_spectral_pde_solver",
    "nesterov",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="two initial conditions of batch 150 in the wrong units (x20)",
)
def h45_spectral_wrong_units_batch(ctx: Context) -> None:
    """Batch 150 holds two initial conditions exported in different units (20x): a one-off
    loss spike; the model and optimizer recover and the loss returns to its level."""
    gen = seeded(4517)
    model = SpectralSolver()

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x, y = x.clone(), y.clone()
            x[:2] *= 20.0
            y[:2] *= 20.0
        return x, y

    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, _heat(gen), 280, loss_fn=F.mse_loss, alter=alter, classifier=False)
    ctx.check("loss spiked at 150", ctx.losses[150] > 10 * max(ctx.losses[140:150]))
    ctx.check(
        "recovered to its pre-spike level",
        all(_finite(v) for v in ctx.losses)
        and _mean(ctx.losses[-20:]) < 1.5 * _mean(ctx.losses[130:150]),
    )
