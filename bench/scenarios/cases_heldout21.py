"""Held-out set 21 (``h21_``): families none of the other case files has.

Hugging Face GLM causal LM, MBart encoder-decoder, RemBERT classifier, UniSpeech audio classifier
on generated tones and ViTMAE pre-training, all from configs; VICReg on digits, a prototypical
network on few-shot digit episodes, a triplet-loss embedding net (fp16 autocast), an
E(n)-equivariant GNN on generated point sets, a neural CDE on generated series, an AutoInt-style
tabular net (breast cancer) and a SAC-style actor-critic on a generated continuous bandit.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, Adamax, RMSprop, NAdam, RAdam, Adagrad and
``steadygrad.optim.Lion``.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was tuned with a stand-in context that attaches nothing, only until its own
checks held (healthy ones: until they trained normally).
"""

from __future__ import annotations

import math
from functools import partial

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
    digits,
    fit,
    grad_norm,
    lm_loss,
    seeded,
    text_batches,
)
from scenarios.common import scenario as register

scenario = partial(register, heldout=True)  # every scenario of this file is held out

# -- Hugging Face models from configs -------------------------------------------------------------


def hf_glm(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import GlmConfig, GlmForCausalLM

    config = GlmConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=dim // 2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        attention_dropout=0.0,
    )
    config._attn_implementation = "eager"
    return GlmForCausalLM(config)


def hf_mbart(vocab: int = 64, dim: int = 32):
    from transformers import MBartConfig, MBartForConditionalGeneration

    config = MBartConfig(
        vocab_size=vocab,
        d_model=dim,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        decoder_ffn_dim=2 * dim,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    return MBartForConditionalGeneration(config)


def hf_rembert(vocab: int = 128, dim: int = 32):
    from transformers import RemBertConfig, RemBertForSequenceClassification

    config = RemBertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        input_embedding_size=16,
        output_embedding_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return RemBertForSequenceClassification(config)


def hf_unispeech(labels: int = 4):
    from transformers import UniSpeechConfig, UniSpeechForSequenceClassification

    config = UniSpeechConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_labels=labels,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        classifier_proj_size=16,
        vocab_size=8,
    )
    return UniSpeechForSequenceClassification(config)


def hf_vitmae():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # blank 8x8 patches embed to constant tokens: the default eps 1e-12 turns them into
        # gradients of 1e5 at step 0; PyTorch's default keeps the start ordinary
        layer_norm_eps=1e-5,
    )
    return ViTMAEForPreTraining(config)


# -- generated data -------------------------------------------------------------------------------


def tone_batches(gen: torch.Generator, batch: int = 16, length: int = 800, classes: int = 4):
    """Noisy sine tones at one of ``classes`` frequencies (random phase and loudness)."""
    t = torch.arange(length, dtype=torch.float32) / 8000.0
    freqs = torch.tensor([400.0, 460.0, 520.0, 580.0])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freqs[y][:, None] * t + phase)
        yield x + 0.8 * torch.randn(batch, length, generator=gen), y


def copy_batches(gen: torch.Generator, batch: int = 16, length: int = 12, vocab: int = 64):
    """Sequence reversal: source tokens 3.. vocab-1, target the source reversed."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        yield x, x.flip(1)


def point_sets(gen: torch.Generator, batch: int = 16, points: int = 8):
    """3-D point clouds and their (rotation-invariant) mean pairwise distance."""
    while True:
        scale = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        x = scale * torch.randn(batch, points, 3, generator=gen)
        d = torch.cdist(x, x).mean((1, 2))
        yield x, d


def wave_series(gen: torch.Generator, batch: int = 32, length: int = 32, classes: int = 3):
    """Paths (t, signal) whose signal oscillates at one of ``classes`` rates (random phase)."""
    t = torch.linspace(0, 1, length)
    rates = torch.tensor([2.0, 4.0, 7.0])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        s = torch.sin(2 * math.pi * rates[y][:, None] * t + phase)
        s = s + 0.05 * torch.randn(batch, length, generator=gen)
        yield torch.stack([t.expand(batch, length), s], -1), y


def cancer_batches(gen: torch.Generator, batch: int = 32):
    """scikit-learn's bundled breast-cancer table: raw (non-negative) features and labels."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


# -- GLM causal LM: attention logits grow -----------------------------------------------------------


def _attention_entropy(model: nn.Module, x: torch.Tensor, layer: int) -> float:
    with torch.no_grad():
        att = model(x, output_attentions=True).attentions[layer]
    return float(-(att * att.clamp_min(1e-30).log()).sum(-1).mean())


@scenario(
    "hf_glm",
    "adamw",
    "attention_logit_growth",
    where="model.layers.1.self_attn",
    diverges=None,
    onset=60,
)
def h21_glm_qk_rescaled_every_step(ctx: Context) -> None:
    """A "temperature anneal" meant to multiply a scalar once per epoch multiplies layer 1's
    q_proj and k_proj weights in place every step from step 60: its attention logits grow
    geometrically while the rest of the model trains normally."""
    gen = seeded(2101)
    model = hf_glm()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    attn = model.model.layers[1].self_attn
    probe, _ = next(text_batches(torch.Generator().manual_seed(7)))
    entropy_before = _attention_entropy(model, probe, 1)
    q_norm = float(attn.q_proj.weight.detach().norm())

    def anneal(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                attn.q_proj.weight.mul_(1.015)
                attn.k_proj.weight.mul_(1.015)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        before=anneal,
        forward=lambda m, x: m(x).logits,
        classifier=False,
    )
    entropy_after = _attention_entropy(model, probe, 1)
    ctx.check("layer 1 attention sharpened", entropy_after < 0.3 * entropy_before)
    ctx.check("q_proj grew over 5x", float(attn.q_proj.weight.detach().norm()) > 5 * q_norm)


# -- MBart: output logits driven up by a z-loss with the wrong sign ---------------------------------


@scenario(
    "hf_mbart",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    onset=0,
)
def h21_mbart_zloss_sign(ctx: Context) -> None:
    """The auxiliary z-loss (meant to keep log Z near 0) is subtracted instead of added: the
    optimizer raises every logit's log-normaliser step after step through the tied head."""
    gen = seeded(2102)
    model = hf_mbart()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = torch.full((16, 1), 2)
    ctx.attach(model, opt)
    peaks = []
    for _step in range(240):
        x, y = next(copy_batches(gen))
        dec_in = torch.cat([start, y[:, :-1]], 1)
        logits = model(input_ids=x, decoder_input_ids=dec_in).logits
        loss = lm_loss(logits, y)
        z = torch.logsumexp(logits.float(), -1).pow(2).mean()
        (loss - 1e-3 * z).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(logits.detach().abs().max()))
    ctx.check("logits grew over 10x", peaks[-1] > 10 * peaks[5])


# -- RemBERT classifier: a layer frozen by a layer-wise LR decay bug --------------------------------


@scenario(
    "hf_rembert",
    "adamw",
    "update_ratio_out_of_range",
    where="rembert.encoder.layer.0",
    diverges=None,
)
def h21_rembert_layer_decay_int_division(ctx: Context) -> None:
    """Layer-wise LR factors computed as ``(i + 1) // layers`` (integer division): layer 0 gets
    factor 0 and never moves; the rest of the model trains."""
    gen = seeded(2103)
    model = hf_rembert()
    layers = model.rembert.encoder.layer
    in_layers = {id(p) for p in layers.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in in_layers]}]
    for i, layer in enumerate(layers):
        groups.append({"params": list(layer.parameters()), "lr": 5e-4 * ((i + 1) // len(layers))})
    opt = torch.optim.AdamW(groups, lr=5e-4, weight_decay=0.01)
    before = layers[0].attention.self.query.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        bert_batches(gen),
        200,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("layer 0 unchanged", torch.equal(before, layers[0].attention.self.query.weight))
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.9 * sum(ctx.losses[:20]))


# -- UniSpeech on tones: the learning rate raised mid-run ------------------------------------------


@scenario(
    "hf_unispeech",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=120,
    note="resumed at step 120 with lr 100x",
)
def h21_unispeech_resume_lr_raised(ctx: Context) -> None:
    """The run is resumed at step 120 from a config whose learning rate was written for a
    summed (not averaged) loss: 100 times the one it trained with, far past 2/sharpness."""
    gen = seeded(2104)
    model = hf_unispeech()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def resume(step: int) -> None:
        if step == 120:
            opt.param_groups[0]["lr"] = 2.0

    fit(
        ctx,
        model,
        opt,
        tone_batches(gen),
        200,
        before=resume,
        forward=lambda m, x: m(x).logits,
    )
    finite = [v for v in ctx.losses[:120] if math.isfinite(v)]
    ctx.check("trained before 120", len(finite) == 120 and finite[-1] < finite[0])
    after = ctx.losses[120:]
    ctx.check(
        "broke after 120",
        any(not math.isfinite(v) or v > 3 * max(ctx.losses[100:120]) for v in after),
    )


# -- ViTMAE pre-training: one corrupt batch --------------------------------------------------------


@scenario("hf_vitmae", "adamax", "data_outlier", diverges=150, onset=150)
def h21_vitmae_corrupt_batch(ctx: Context) -> None:
    """At step 150 four images of the batch come from a mis-decoded file: values in the
    hundreds instead of [0, 1]."""
    gen = seeded(2105)
    model = hf_vitmae()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[:4] = 200.0 * torch.rand(x[:4].shape, generator=torch.Generator().manual_seed(5))
        return x, y

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        220,
        alter=alter,
        loss_fn=lambda out, y: out,
        forward=lambda m, x: m(pixel_values=x.reshape(-1, 1, 8, 8)).loss,
        classifier=False,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))


# -- VICReg: a bias "penalty" with the wrong sign kills the expander's units --------------------------


class VICReg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.expander = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expander(self.backbone(x))


def vicreg_loss(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    inv = F.mse_loss(za, zb)
    var = sum(F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean() for z in (za, zb))
    cov = 0.0
    for z in (za, zb):
        c = torch.cov((z - z.mean(0)).T)
        off = c - torch.diag(torch.diag(c))
        cov = cov + off.pow(2).sum() / z.shape[1]
    return 25 * inv + 25 * var + cov


def _views(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    def view() -> torch.Tensor:
        keep = (torch.rand(x.shape, generator=gen) > 0.2).float()
        return x * keep + 0.1 * torch.randn(x.shape, generator=gen)

    return view(), view()


def _vicreg_run(ctx: Context, model: VICReg, opt, steps: int, gen, bug=None) -> None:
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(steps):
        x, _ = next(batches)
        a, b = _views(x, gen)
        loss = vicreg_loss(model(a), model(b))
        total = loss + bug(step) if bug is not None else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario("vicreg", "sgd", "loss_of_plasticity", where="expander.0", diverges=None, onset=60)
def h21_vicreg_bias_penalty_sign(ctx: Context) -> None:
    """From step 60 an "L1 penalty" on the expander's first biases is written ``b.sum()``
    instead of ``b.abs().sum()``: it pushes every bias down at a constant rate, the ReLU units
    after it die one by one and, dead, get no gradient to come back."""
    gen = seeded(2106)
    model = VICReg()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def bug(step: int) -> torch.Tensor:
        if step < 60:
            return torch.zeros(())
        return 2.0 * model.expander[0].bias.sum()

    _vicreg_run(ctx, model, opt, 300, gen, bug)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        h = model.expander[1](model.expander[0](model.backbone(x)))
    ctx.check("over half the expander units dead", dead_fraction(h) > 0.5)


# -- prototypical network: distances scaled for cosine similarity ------------------------------------


class ProtoNet(nn.Module):
    """Embeds support and query digits; logits are negative scaled squared distances of each
    query to the class prototypes (mean support embeddings)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.scale = scale

    def forward(self, support: torch.Tensor, ways: int, query: torch.Tensor) -> torch.Tensor:
        protos = self.embed(support).reshape(ways, -1, 32).mean(1)
        return -self.scale * torch.cdist(self.embed(query), protos).pow(2)


def episodes(gen: torch.Generator, ways: int = 5, shots: int = 5, queries: int = 5):
    x, y = digits()
    by_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    while True:
        classes = torch.randperm(10, generator=gen)[:ways]
        support, query = [], []
        for c in classes:
            idx = by_class[int(c)][torch.randperm(len(by_class[int(c)]), generator=gen)]
            support.append(x[idx[:shots]])
            query.append(x[idx[shots : shots + queries]])
        labels = torch.arange(ways).repeat_interleave(queries)
        yield torch.cat(support), torch.cat(query), labels


def _proto_run(ctx: Context, model: ProtoNet, opt, steps: int, gen) -> list[float]:
    ctx.attach(model, opt)
    batches = episodes(gen)
    collapsed = []
    for _ in range(steps):
        support, query, labels = next(batches)
        ctx.targets(labels)
        logits = model(support, 5, query)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), labels))
    return collapsed


@scenario("protonet", "sgd_nesterov", "softmax_collapse", diverges=None)
def h21_protonet_cosine_temperature_on_euclid(ctx: Context) -> None:
    """The 1/0.01 temperature of a cosine-similarity recipe is put on unnormalised squared
    Euclidean distances: the prototypes separate, the scaled gaps pass float32's resolution and
    the softmax of a sixth of the queries rounds to exactly 1 (no gradient from them)."""
    gen = seeded(2107)
    model = ProtoNet(scale=100.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, nesterov=True)
    collapsed = _proto_run(ctx, model, opt, 200, gen)
    ctx.check("over a tenth of the queries collapsed", sum(collapsed[50:200]) / 150 > 0.1)
    ctx.check("few collapsed at first", collapsed[0] < 0.2)


# -- triplet-loss embedding net under fp16 autocast ------------------------------------------------


def batch_hard_triplet(emb: torch.Tensor, y: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    d = torch.cdist(emb, emb)
    same = y[:, None] == y[None, :]
    hardest_pos = (d * same).max(1).values
    hardest_neg = (d + 1e4 * same).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


@scenario("triplet_net", "adamw", "amp_overflow", diverges=None)
def h21_triplet_fp16_scaler_high(ctx: Context) -> None:
    """float16 autocast with a GradScaler that starts at 2**30 and tries to grow every 20
    steps: it overflows, skips those steps and settles lower; the embedding still trains."""
    gen = seeded(2108)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=20)
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        loss_fn=batch_hard_triplet,
        scaler=scaler,
        amp=True,
        classifier=False,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- E(n)-equivariant GNN: a hand-written weight decay that grows one layer -------------------------


class EGNNLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * dim + 1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.coord_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        self.node_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = h.shape[1]
        diff = x[:, :, None] - x[:, None, :]
        dist = diff.pow(2).sum(-1, keepdim=True)
        hi = h[:, :, None].expand(-1, -1, n, -1)
        hj = h[:, None, :].expand(-1, n, -1, -1)
        m = self.edge_mlp(torch.cat([hi, hj, dist], -1))
        x = x + (diff * torch.tanh(self.coord_mlp(m))).mean(2)
        h = h + self.node_mlp(torch.cat([h, m.sum(2)], -1))
        return h, x


class EGNN(nn.Module):
    def __init__(self, dim: int = 24, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.layers = nn.ModuleList(EGNNLayer(dim) for _ in range(layers))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(torch.ones(*x.shape[:2], 1))
        for layer in self.layers:
            h, x = layer(h, x)
        return self.head(h.mean(1)).squeeze(-1)


@scenario(
    "egnn",
    "rmsprop",
    "exploding_gradients",
    where="layers.1.edge_mlp",
    diverges="auto",
    onset=40,
)
def h21_egnn_manual_decay_sign(ctx: Context) -> None:
    """The optimizer excludes layer 1's edge MLP from weight decay and the user decays it by
    hand, writing ``p.mul_(1 + lr * wd)`` for ``1 - lr * wd``: from step 40 its weights grow by
    a fixed factor each step, the messages and the gradients of everything before it with
    them, until the run breaks."""
    gen = seeded(2109)
    model = EGNN()
    edge = model.layers[1].edge_mlp
    edge_ids = {id(p) for p in edge.parameters()}
    rest = [p for p in model.parameters() if id(p) not in edge_ids]
    opt = torch.optim.RMSprop(
        [{"params": rest}, {"params": list(edge.parameters())}], lr=1e-3, weight_decay=0.0
    )
    norm0 = float(edge[2].weight.detach().norm())

    def decay(step: int) -> None:
        if step >= 40:
            with torch.no_grad():
                for p in edge.parameters():
                    p.mul_(1 + 1e-3 * 15.0)

    fit(ctx, model, opt, point_sets(gen), 400, loss_fn=F.mse_loss, before=decay, classifier=False)
    ctx.check("edge MLP weights grew over 20x", float(edge[2].weight.detach().norm()) > 20 * norm0)
    early = sum(ctx.grad_norms[20:40]) / 20
    late = [g for g in ctx.grad_norms[-60:] if math.isfinite(g)]
    ctx.check("gradients grew over 20x", not late or max(late) > 20 * early)


# -- neural CDE: one giant gradient poisons NAdam's second moment ---------------------------------


class NeuralCDE(nn.Module):
    """z' = f(z) dX, integrated with one Euler step per sample of the (piecewise linear) path."""

    def __init__(self, channels: int = 2, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.channels = channels
        self.initial = nn.Linear(channels, hidden)
        self.vector_field = nn.Sequential(
            nn.Linear(hidden, 32), nn.Softplus(), nn.Linear(32, hidden * channels), nn.Tanh()
        )
        self.readout = nn.Linear(hidden, classes)

    def forward(self, path: torch.Tensor) -> torch.Tensor:
        z = self.initial(path[:, 0])
        for k in range(path.shape[1] - 1):
            f = self.vector_field(z).reshape(-1, self.hidden, self.channels)
            z = z + (f @ (path[:, k + 1] - path[:, k])[..., None]).squeeze(-1)
        return self.readout(z)


@scenario("neural_cde", "nadam", "adam_second_moment_poisoned", diverges=None, onset=120)
def h21_ncde_loss_weight_division_by_zero(ctx: Context) -> None:
    """The loss weight is ``1 / max(warmup_counter, 1e-4)`` and a resume at step 120 resets the
    counter to 0: that one step's gradient is 10^4 times the usual, NAdam's second moment
    (beta2 = 0.999) keeps it for thousands of steps and every later step is tiny: training
    stalls."""
    gen = seeded(2110)
    model = NeuralCDE()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    v_peak: list[float] = []

    def weight(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss / 1e-4 if step == 120 else loss

    def record(step: int) -> None:
        if step in (119, 125):
            v = [s["exp_avg_sq"].max() for s in opt.state.values() if "exp_avg_sq" in s]
            v_peak.append(float(torch.stack(v).max()))

    fit(ctx, model, opt, wave_series(gen), 320, extra_loss=weight, before=record)
    ctx.check("second moment jumped over 1000x", v_peak[1] > 1000 * v_peak[0])
    # the same run without the bad step, unmonitored: how far it would have got
    gen = seeded(2110)
    twin = NeuralCDE()
    twin_opt = torch.optim.NAdam(twin.parameters(), lr=1e-3)
    batches = wave_series(gen)
    next(batches)  # fit's probe batch
    twin_losses = []
    for _ in range(320):
        x, y = next(batches)
        loss = F.cross_entropy(twin(x), y)
        loss.backward()
        twin_opt.step()
        twin_opt.zero_grad(set_to_none=True)
        twin_losses.append(float(loss.detach()))
    stalled = sum(ctx.losses[-30:]) / 30
    clean = sum(twin_losses[-30:]) / 30
    ctx.check("learning stalled after 120: 3x the clean twin's loss", stalled > 3 * clean)
    ctx.check("no divergence", max(ctx.losses[121:]) < 2 * max(ctx.losses[:20]))


# -- AutoInt tabular net: a square-root transform meets a negative sentinel -------------------------


class SqrtFeatures(nn.Module):
    """Square root of raw non-negative measurements (tames their long tails)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class AutoInt(nn.Module):
    """Each feature embedded as value x vector, self-attention between features (interacting
    layers with residuals), then a ReLU head on the flattened embeddings."""

    def __init__(self, features: int = 30, dim: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.root = SqrtFeatures()
        self.norm = nn.BatchNorm1d(features)
        self.embedding = nn.Parameter(torch.randn(features, dim) * 0.3)
        self.interacting = nn.ModuleList(
            nn.MultiheadAttention(dim, 2, batch_first=True) for _ in range(layers)
        )
        self.head = nn.Sequential(nn.Linear(features * dim, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.norm(self.root(x))[..., None] * self.embedding
        for att in self.interacting:
            e = F.relu(e + att(e, e, e, need_weights=False)[0])
        return self.head(e.flatten(1))


@scenario("autoint", "radam", "nonfinite", where="root", diverges=140, onset=140)
def h21_autoint_sqrt_sentinel(ctx: Context) -> None:
    """At step 140 one record carries the logger's missing-value sentinel -1 in one column:
    the square-root transform turns it into NaN, and the NaN reaches every weight."""
    gen = seeded(2111)
    model = AutoInt()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[3, 7] = -1.0
        return x, y

    fit(ctx, model, opt, cancer_batches(gen), 180, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])


# -- SAC-style actor-critic on a continuous bandit -------------------------------------------------


class SAC(nn.Module):
    """A tanh-Gaussian actor and a Q critic for a one-step (bandit) task."""

    def __init__(self, obs: int = 4, act: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.act = act
        self.actor = nn.Sequential(nn.Linear(obs, hidden), nn.ReLU(), nn.Linear(hidden, 2 * act))
        self.critic = nn.Sequential(
            nn.Linear(obs + act, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        self.log_alpha = nn.Parameter(torch.tensor(-1.0))

    def sample(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(s).chunk(2, -1)
        std = log_std.clamp(-5, 2).exp()
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return a, logp - torch.log(1 - a.pow(2) + 1e-6).sum(-1)

    def q(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([s, a], -1)).squeeze(-1)


def _sac_run(ctx: Context, model: SAC, opt, steps: int, gen, reward_scale=None) -> None:
    """One optimizer over critic, actor and temperature; the actor's loss reads the critic
    through detached weights so that it does not train the critic."""
    from torch.func import functional_call

    target = torch.tensor([[0.5, -0.3], [-0.4, 0.2], [0.3, 0.6], [-0.2, -0.5]])
    ctx.attach(model, opt)
    for step in range(steps):
        s = torch.randn(64, 4, generator=gen)
        with torch.no_grad():
            a, _ = model.sample(s)
            r = -(a - torch.tanh(s @ target)).pow(2).sum(-1)
            if reward_scale is not None:
                r = r * reward_scale(step)
        critic_loss = F.mse_loss(model.q(s, a), r)
        a_new, logp = model.sample(s)
        frozen = {k: v.detach() for k, v in model.critic.named_parameters()}
        q_new = functional_call(model.critic, frozen, (torch.cat([s, a_new], -1),)).squeeze(-1)
        alpha = model.log_alpha.exp()
        actor_loss = (alpha.detach() * logp - q_new).mean()
        alpha_loss = -(model.log_alpha * (logp.detach() - model.act).mean())
        loss = critic_loss + actor_loss + alpha_loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(critic_loss)  # what SAC code logs as its loss
        opt.zero_grad(set_to_none=True)


@scenario("sac_bandit", "adagrad", "loss_divergence", diverges="auto", onset=0)
def h21_sac_reward_normaliser_drift(ctx: Context) -> None:
    """The running reward std is updated as ``std = m * std`` (the ``+ (1 - m) * batch_std``
    term lost in a refactor): it shrinks a little every step, the rewards divided by it grow
    and the critic's loss climbs slowly, with nothing in the model going wrong."""
    gen = seeded(2112)
    model = SAC()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    _sac_run(ctx, model, opt, 400, gen, reward_scale=lambda step: 1.0 / 0.99**step)
    best = min(sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 390))
    ctx.check("critic loss climbed over 4x its best", sum(ctx.losses[-10:]) / 10 > 4 * best)


# -- healthy controls -----------------------------------------------------------------------------


@scenario("hf_glm", "sg_lion", "healthy")
def h21_healthy_glm_lion(ctx: Context) -> None:
    gen = seeded(2121)
    model = hf_glm()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, fused=False)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


@scenario("autoint", "adamw", "healthy")
def h21_healthy_autoint_adamw(ctx: Context) -> None:
    gen = seeded(2122)
    model = AutoInt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    fit(ctx, model, opt, cancer_batches(gen), 200)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))


@scenario("protonet", "adam", "healthy", note="distances unscaled")
def h21_healthy_protonet_adam(ctx: Context) -> None:
    gen = seeded(2123)
    model = ProtoNet(scale=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed = _proto_run(ctx, model, opt, 200, gen)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))
    ctx.check("little collapse", sum(collapsed[50:200]) / 150 < 0.02)


@scenario("sac_bandit", "adam", "healthy")
def h21_healthy_sac_adam(ctx: Context) -> None:
    gen = seeded(2124)
    model = SAC()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _sac_run(ctx, model, opt, 300, gen)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]))
