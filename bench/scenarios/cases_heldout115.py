"""Held-out set 115 (``h115_``): Hugging Face Kimi K2.5 text tower, Step3p7 text tower and a
HerBERT-style clause classifier from tiny configs, and hand-written models of fields not yet
covered (sea-ice concentration, protein secondary structure, satellite cloud masks, traffic
signs, legal-clause retrieval, exoplanet light curves, galaxy morphology, air quality, music
genre). Every scenario is held out."""

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
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _med(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# -- Hugging Face text towers ---------------------------------------------------------------------


def kimi_k25_text(layers: int = 2):
    """The text tower of Kimi K2.5 (a DeepSeek-V3 MLA + MoE decoder) from a tiny config."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return DeepseekV3ForCausalLM(config)


class Step3p7LM(nn.Module):
    """Step3p7's text tower (dense layers) from a tiny config, with an untied LM head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig
        from transformers.models.step3p7.modeling_step3p7 import Step3p7TextModel

        config = Step3p7TextConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            mlp_layer_types=["dense", "dense"],
            layer_types=["full_attention", "full_attention"],
            sliding_window=16,
            max_position_embeddings=64,
        )
        self.model = Step3p7TextModel(config)
        self.lm_head = nn.Linear(32, 128, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def kimi_attention_entropy(model: nn.Module, idx: torch.Tensor) -> float:
    """Mean entropy (nats) of the causal attention rows of all layers, from eager attention."""
    with torch.no_grad():
        att = model(input_ids=idx, output_attentions=True).attentions
    ents = [float(-(a.clamp_min(1e-12).log() * a).sum(-1)[..., 8:].mean()) for a in att]
    return sum(ents) / len(ents)


@scenario(
    "hf_kimi_k25_text_lm",
    "adam",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="MLA query/key up-projections (q_b_proj, kv_b_proj) given a 30x learning rate and no "
    "QK-norm: the attention logits grow until the rows go one-hot",
    onset=0,
)
def h115_hf_kimi_k25_text_attn_growth(ctx: Context) -> None:
    gen = seeded(11501)
    model = kimi_k25_text()
    fast = [p for n, p in model.named_parameters() if "q_b_proj" in n or "kv_b_proj" in n]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": fast, "lr": 1e-1}])
    batches = text_batches(gen, batch=16, length=32)
    probe = next(text_batches(seeded(7), batch=8, length=32))[0]
    before = kimi_attention_entropy(model, probe)
    fit(
        ctx,
        model,
        opt,
        batches,
        150,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    after = kimi_attention_entropy(model, probe)
    ctx.check("attention entropy collapsed (rows near one-hot)", after < 0.35 * before)
    ctx.check("q/kv up-projections grew", max(float(p.detach().norm()) for p in fast) > 10.0)


@scenario(
    "hf_step3p7_text_lm",
    "nadam",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="warmup schedule bug: the cubic warmup is never capped, the learning rate keeps "
    "climbing past its peak and the loss slowly climbs away",
    onset=30,
)
def h115_hf_step3p7_lr_creep(ctx: Context) -> None:
    gen = seeded(11502)
    model = Step3p7LM()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 3e-3 * ((step + 1) / 30) ** 3  # meant: min(1, ...)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        220,
        loss_fn=lm_loss,
        before=before,
        classifier=False,
    )
    ls = ctx.losses
    best = min(ls)
    ctx.check("loss first fell", best < ls[0] - 0.5)
    ctx.check("loss then climbed well above its best", _med(ls[-10:]) > max(2 * best, best + 1))


@scenario(
    "hf_step3p7_text_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="byte LM with warmup + cosine decay and weight decay",
)
def h115_hf_step3p7_healthy(ctx: Context) -> None:
    gen = seeded(11503)
    model = Step3p7LM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 180

    def before(step: int) -> None:
        w = min(1.0, (step + 1) / 20)
        c = 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = 3e-3 * w * max(c, 0.1)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        loss_fn=lm_loss,
        before=before,
        classifier=False,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _med(ctx.losses[-10:]) < 0.75 * ctx.losses[0])


def herbert_cls():
    """A HerBERT-style (BERT architecture) sequence classifier from a tiny config."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
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
    return BertForSequenceClassification(config)


@scenario(
    "hf_herbert_clause_cls",
    "adamw",
    "output_logit_divergence",
    where=("classifier",),
    diverges=None,
    heldout=True,
    note="clause-type classifier whose head sits in a param group with a 50x learning rate and "
    "no weight decay: once the task is fit the logits grow without bound",
    onset=0,
)
def h115_hf_herbert_clause_logits(ctx: Context) -> None:
    gen = seeded(11504)
    model = herbert_cls()
    head = list(model.classifier.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1e-3, "weight_decay": 0.01},
            {"params": head, "lr": 5e-2, "weight_decay": 0.0},
        ]
    )
    probe = next(bert_batches(seeded(3)))[0]

    def logit_scale() -> float:
        with torch.no_grad():
            return float(model(input_ids=probe).logits.abs().mean())

    start = logit_scale()
    fit(ctx, model, opt, bert_batches(gen), 200, forward=lambda m, x: m(input_ids=x).logits)
    end = logit_scale()
    ctx.check("output logits grew > 20x", end > 20 * max(start, 1e-3))
    ctx.check("finite", _finite(ctx.losses))


# -- sea-ice concentration from passive-microwave channels ----------------------------------------


def sea_ice_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Smooth ice-concentration fields and three noisy brightness-temperature-like channels."""
    mix = torch.tensor([[-1.2, 0.4], [0.9, -0.3], [0.5, 0.8]])
    while True:
        z = torch.randn(batch, 1, size // 4, size // 4, generator=gen)
        z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
        c = torch.sigmoid(2.5 * z)
        feats = torch.cat([c, c * c], 1)
        x = torch.einsum("kc,bchw->bkhw", mix, feats)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        yield x, c


class IceSegmenter(nn.Module):
    """A plain dilated conv stack (no U-Net) that predicts per-pixel ice concentration."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.ctx1 = nn.Conv2d(width, width, 3, padding=2, dilation=2)
        self.ctx2 = nn.Conv2d(width, width, 3, padding=4, dilation=4)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(self.ctx1(h)) + h
        h = F.relu(self.ctx2(h)) + h
        return self.head(h)


def ice_loss(out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, c)


@scenario(
    "sea_ice_concentration_segmenter",
    "adagrad",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one swath arrives with its missing-data fill value (9999 K) unmasked",
    onset=70,
)
def h115_sea_ice_fill_value_swath(ctx: Context) -> None:
    gen = seeded(11505)
    model = IceSegmenter()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, c):
        if step == 70:
            x = x.clone()
            x[:, :, 4:12, :] = 9999.0
        return x, c

    fit(ctx, model, opt, sea_ice_batches(gen), 140, loss_fn=ice_loss, alter=alter, classifier=False)
    ls = ctx.losses
    ctx.check("loss at the bad swath > 5x the steps before", ls[70] > 5 * _med(ls[60:70]))
    ctx.check("finite", _finite(ls))


@scenario(
    "sea_ice_concentration_segmenter",
    "rmsprop",
    "healthy",
    heldout=True,
    note="same segmenter, clean swaths, step-decay schedule",
)
def h115_sea_ice_healthy(ctx: Context) -> None:
    gen = seeded(11506)
    model = IceSegmenter()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 60, 0.5)
    fit(
        ctx,
        model,
        opt,
        sea_ice_batches(gen),
        150,
        loss_fn=ice_loss,
        before=lambda s: sched.step() if s else None,
        classifier=False,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _med(ctx.losses[-10:]) < 0.9 * ctx.losses[0])


# -- protein secondary structure ------------------------------------------------------------------


def protein_batches(gen: torch.Generator, batch: int = 16, length: int = 24):
    """Residue profiles (21 amino-acid frequencies) and H/E/C labels from a hydrophobic-periodicity
    rule: helices where the 3-4 residue periodicity is strong, strands where it alternates."""
    hydro = torch.linspace(-1.0, 1.0, 21)
    while True:
        aa = torch.randint(0, 21, (batch, length), generator=gen)
        prof = F.one_hot(aa, 21).float() * 0.7 + 0.3 * torch.rand(batch, length, 21, generator=gen)
        prof = prof / prof.sum(-1, keepdim=True)
        h = hydro[aa]
        pad = F.pad(h, (4, 4))
        helix = (pad[:, 4:-4] + pad[:, 7:-1] + pad[:, 8:]) / 3
        strand = (pad[:, 4:-4] - pad[:, 5:-3] + pad[:, 6:-2]) / 3
        y = torch.full((batch, length), 2)
        y = torch.where(helix > 0.25, 0, y)
        y = torch.where((strand > 0.3) & (y == 2), 1, y)
        yield prof, y


class SSBiGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(21, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(F.relu(self.embed(x)))
        return self.head(out)


def residue_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, 3), y.reshape(-1))


@scenario(
    "protein_ss_bigru",
    "adam",
    "adam_second_moment_poisoned",
    where=("embed", "gru", "head"),
    diverges=None,
    heldout=True,
    note="a class-balance loss weight divides by a near-zero count for one batch (weight 1e7): "
    "the single giant gradient fills Adam's second moment (beta2 0.9999), updates then stall",
    onset=40,
)
def h115_protein_ss_balance_weight(ctx: Context) -> None:
    gen = seeded(11507)
    model = SSBiGRU()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))

    def flat() -> torch.Tensor:
        return torch.cat([q.detach().reshape(-1) for q in model.parameters()])

    prev = [flat()]
    moves: list[float] = []
    v40: list[float] = []

    def before(step: int) -> None:
        now = flat()
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now
        if step == 40:
            v40.append(float(opt.state[model.embed.weight]["exp_avg_sq"].max()))

    def weighted(step: int, loss: torch.Tensor) -> torch.Tensor:
        # class-balance weight = 1 / (count of the batch's rarest class + eps): a batch with no
        # strand residue gets weight ~1e7 at step 40
        return loss * (1e7 if step == 40 else 1.0)

    fit(
        ctx,
        model,
        opt,
        protein_batches(gen),
        200,
        loss_fn=residue_loss,
        before=before,
        extra_loss=weighted,
        classifier=False,
    )
    v = float(opt.state[model.embed.weight]["exp_avg_sq"].max())
    ctx.check("second moment jumped > 1e4x", v > 1e4 * v40[0])
    ctx.check(
        "updates stalled (> 5x smaller per step)", _med(moves[70:110]) < _med(moves[21:41]) / 5
    )
    ctx.check("loss stopped improving", _med(ctx.losses[-30:]) > _med(ctx.losses[25:40]))
    ctx.check("finite", _finite(ctx.losses))


# -- satellite cloud masks ------------------------------------------------------------------------


def cloud_batches(gen: torch.Generator, batch: int = 32):
    """8-band 8x8 patches: clouds are bright in the visible bands and cold in the thermal band."""
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        base = 0.3 * torch.rand(batch, 8, 1, 1, generator=gen)
        cloud = torch.tensor([0.6, 0.6, 0.5, 0.4, 0.2, 0.1, 0.0, -0.5]).view(1, 8, 1, 1)
        blob = torch.rand(batch, 1, 8, 8, generator=gen)
        x = base + y.view(-1, 1, 1, 1) * cloud * blob * 0.4
        x = x + 0.6 * torch.randn(batch, 8, 8, 8, generator=gen)
        yield x, y


class CloudNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(8, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@scenario(
    "cloud_mask_classifier",
    "sgd_mom",
    "loss_of_plasticity",
    where=("features.0", "features.2"),
    diverges=None,
    heldout=True,
    note="a warm restart to 40x the learning rate for a few steps drives the conv ReLUs dead; the "
    "net never learns again",
    onset=60,
)
def h115_cloud_mask_dead_relus(ctx: Context) -> None:
    gen = seeded(11508)
    model = CloudNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = next(cloud_batches(seeded(5), 256))[0]

    def dead() -> float:
        with torch.no_grad():
            return dead_fraction(model.features(probe))

    seen: list[float] = []

    def before(step: int) -> None:
        if step == 60:
            seen.append(dead())
        for g in opt.param_groups:
            g["lr"] = 2.0 if 60 <= step < 66 else 0.05

    fit(ctx, model, opt, cloud_batches(gen), 160, before=before)
    ctx.check("few dead units before", seen[0] < 0.2)
    ctx.check("most units dead after", dead() > 0.6)
    ctx.check("loss stuck near chance after", _med(ctx.losses[-20:]) > 0.55)


@scenario(
    "cloud_mask_classifier",
    "adadelta",
    "healthy",
    heldout=True,
    note="same cloud-mask net, Adadelta at its default lr, noisy patches",
)
def h115_cloud_mask_healthy(ctx: Context) -> None:
    gen = seeded(11509)
    model = CloudNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, cloud_batches(gen), 150)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _med(ctx.losses[-10:]) < 0.6 * ctx.losses[0])


# -- traffic signs --------------------------------------------------------------------------------


def sign_batches(gen: torch.Generator, batch: int = 32, size: int = 12):
    """Generated 3x12x12 signs: shape (disc, triangle, square) x rim colour (red, blue)."""
    r = torch.arange(size).float() - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    disc = (xx**2 + yy**2 <= 25).float()
    tri = ((yy <= 4.5) & (yy >= -4.5) & (xx.abs() <= (yy + 4.5) / 1.8)).float()
    square = ((xx.abs() <= 4) & (yy.abs() <= 4)).float()
    shapes = torch.stack([disc, tri, square])
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]])
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        m = shapes[y % 3][:, None]
        c = colours[y // 3][:, :, None, None]
        bright = 0.5 + torch.rand(batch, 1, 1, 1, generator=gen)
        x = m * c * bright + 0.4 * torch.rand(batch, 3, 1, 1, generator=gen) * (1 - m)
        x = x + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        yield x, y


class SignCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.fc = nn.Linear(24 * 9, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        h = F.max_pool2d(torch.tanh(self.conv2(h)), 2)
        return self.fc(h.flatten(1))


@scenario(
    "traffic_sign_cnn",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a schedule milestone multiplies the lr by 25 instead of 0.25: the step size passes "
    "2 / sharpness and the loss oscillates upward",
    onset=80,
)
def h115_traffic_sign_lr_above_edge(ctx: Context) -> None:
    gen = seeded(11510)
    model = SignCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.1 * (25.0 if step >= 80 else 1.0)

    fit(ctx, model, opt, sign_batches(gen), 140, before=before)
    ls = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    ctx.check("trained before the milestone", _med(ls[70:80]) < 0.6 * ls[0])
    ctx.check("loss blew up after", max(ls[80:]) > 5 * _med(ls[70:80]))


# -- legal-clause retrieval -----------------------------------------------------------------------


def clause_batches(gen: torch.Generator, batch: int = 32, vocab: int = 200, terms: int = 12):
    """Clauses are bags of legal terms; a query paraphrases its clause (half its terms kept,
    the rest replaced by common words). Labels: query i matches clause i of the batch."""
    while True:
        clause = torch.randint(20, vocab, (batch, terms), generator=gen)
        keep = torch.rand(batch, terms, generator=gen) < 0.9
        filler = torch.randint(0, 20, (batch, terms), generator=gen)
        query = torch.where(keep, clause, filler)
        yield (query, clause), torch.arange(batch)


class LogitScale(nn.Module):
    """CLIP's learned inverse temperature, exp(s), optionally clamped at ``limit``."""

    def __init__(self, limit: float | None) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.limit = limit

    def forward(self, sims: torch.Tensor) -> torch.Tensor:
        s = self.s if self.limit is None else self.s.clamp(max=math.log(self.limit))
        return sims * s.exp()


class BiEncoder(nn.Module):
    def __init__(self, vocab: int = 200, dim: int = 32, limit: float | None = 100.0) -> None:
        super().__init__()
        self.scale = LogitScale(limit)
        self.query_enc = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.query_proj = nn.Linear(dim, dim)
        self.doc_enc = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.doc_proj = nn.Linear(dim, dim)

    def forward(self, pair) -> torch.Tensor:
        q = F.normalize(self.query_proj(self.query_enc(pair[0])), dim=-1)
        d = F.normalize(self.doc_proj(self.doc_enc(pair[1])), dim=-1)
        return self.scale(q @ d.T)


@scenario(
    "legal_clause_biencoder",
    "radam",
    "softmax_collapse",
    where=("scale",),
    diverges=None,
    heldout=True,
    note="resumed from a checkpoint whose logit scale is overridden by a sweep config "
    "(inverse temperature 1000, clamp dropped): the in-batch float32 softmax of the now "
    "well-separated clauses gives the matching clause exactly 1.0",
    onset=150,
)
def h115_legal_biencoder_hot_scale(ctx: Context) -> None:
    gen = seeded(11511)
    model = BiEncoder(limit=100.0)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-2)
    probe = next(clause_batches(seeded(9)))
    seen: list[float] = []

    def before(step: int) -> None:
        if step == 150:
            with torch.no_grad():
                seen.append(collapsed_fraction(model(probe[0]), probe[1]))
                model.scale.s.fill_(math.log(1000.0))
            model.scale.limit = None

    fit(ctx, model, opt, clause_batches(gen), 250, before=before)
    with torch.no_grad():
        logits = model(probe[0])
    ctx.check("no collapse before the override", seen[0] < 0.2)
    ctx.check("softmax collapsed on > half the rows", collapsed_fraction(logits, probe[1]) > 0.5)


@scenario(
    "legal_clause_biencoder",
    "adamax",
    "healthy",
    heldout=True,
    note="same bi-encoder, logit scale clamped at 100, Adamax with a cosine schedule",
)
def h115_legal_biencoder_healthy(ctx: Context) -> None:
    gen = seeded(11512)
    model = BiEncoder(limit=100.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 180, eta_min=2e-3)
    probe = next(clause_batches(seeded(9)))
    fit(ctx, model, opt, clause_batches(gen), 180, before=lambda s: sched.step() if s else None)
    with torch.no_grad():
        logits = model(probe[0])
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _med(ctx.losses[-10:]) < 0.6 * ctx.losses[0])
    ctx.check("no softmax collapse", collapsed_fraction(logits, probe[1]) < 0.1)


# -- exoplanet transit light curves ---------------------------------------------------------------


def lightcurve_batches(gen: torch.Generator, batch: int = 32, length: int = 96):
    """Normalised flux with stellar variability and noise; half the curves carry periodic box
    transits. Label: transit or not."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        period = torch.randint(15, 30, (batch, 1), generator=gen).float()
        phase = torch.rand(batch, 1, generator=gen) * period
        dip = (((t - phase) % period) < 3).float() * 0.5
        var = 0.3 * torch.sin(t / (8 + 8 * torch.rand(batch, 1, generator=gen)))
        x = var - y[:, None] * dip + 0.15 * torch.randn(batch, length, generator=gen)
        yield x[..., None], y


class TransitIRNN(nn.Module):
    """An IRNN (ReLU RNN, identity recurrent init: Le et al. 2015) over the light curve."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True, nonlinearity="relu")
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "exoplanet_lightcurve_irnn",
    "asgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="IRNN over 96-step light curves trained without the gradient clipping it needs: the "
    "identity recurrence lets the backward signal accumulate over the sequence, the gradient "
    "is in the hundreds and the first steps throw the run to NaN",
    onset=0,
)
def h115_exoplanet_irnn_explode(ctx: Context) -> None:
    gen = seeded(11513)
    model = TransitIRNN()
    opt = torch.optim.ASGD(model.parameters(), lr=3e-2)
    fit(ctx, model, opt, lightcurve_batches(gen), 60)
    ctx.check("gradient norm > 100 at the start", ctx.grad_norms[0] > 100)
    ctx.check("run went non-finite within 5 steps", not _finite(ctx.losses[:5]))


# -- galaxy morphology ----------------------------------------------------------------------------


def galaxy_batches(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Generated galaxy cutouts: elliptical (smooth Sersic-like blob), spiral (two arms) and
    edge-on (thin disc), random orientation, sky noise."""
    r = torch.arange(size).float() - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        ang = torch.rand(batch, 1, 1, generator=gen) * math.pi
        xr = xx * torch.cos(ang) + yy * torch.sin(ang)
        yr = -xx * torch.sin(ang) + yy * torch.cos(ang)
        rad = (xr**2 + yr**2).sqrt()
        ell = torch.exp(-rad / 2.5)
        arms = torch.exp(-rad / 5) * (1 + torch.cos(2 * torch.atan2(yr, xr) - rad / 1.5)) / 2
        edge = torch.exp(-(yr**2) / 1.0 - xr.abs() / 4)
        img = torch.stack([ell, arms, edge], 1)[torch.arange(batch), y]
        img = img + 0.08 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


class GalaxyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


@scenario(
    "galaxy_morphology_cnn",
    "nesterov",
    "gradient_spike",
    where=("conv1", "conv2", "fc"),
    diverges=None,
    heldout=True,
    note="the last (epoch-boundary) batch goes through a helper whose cross-entropy uses "
    "reduction='sum': the backpropagated gradient is 32x for that one step while the logged "
    "mean loss looks normal; training then carries on",
    onset=90,
)
def h115_galaxy_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(11514)
    model = GalaxyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def summed(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 32 if step == 90 else loss  # == F.cross_entropy(..., reduction="sum")

    fit(ctx, model, opt, galaxy_batches(gen), 160, extra_loss=summed)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient norm spiked > 10x for one step", g[90] > 10 * _med(g[80:90]))
    ctx.check("the logged loss did not spike", ls[90] < 2 * _med(ls[80:90]))
    ctx.check("training carried on", _finite(ls) and _med(ls[-10:]) < 1.2 * _med(ls[80:90]))


# -- air quality ----------------------------------------------------------------------------------


def air_batches(gen: torch.Generator, batch: int = 64, pascal_from: int | None = None):
    """Hourly station features (temperature C, humidity %, wind m/s, pressure hPa, traffic
    index, hour sin/cos) standardised by the station's scaler, and PM2.5 (ug/m3, /50).
    From ``pascal_from`` on, an upstream change reports pressure in Pa and bypasses the scaler."""
    step = 0
    while True:
        temp = 15 + 8 * torch.randn(batch, generator=gen)
        hum = 60 + 15 * torch.randn(batch, generator=gen)
        wind = 3 * torch.rand(batch, generator=gen) * 2
        press = 1013 + 8 * torch.randn(batch, generator=gen)
        traffic = torch.rand(batch, generator=gen)
        hour = torch.rand(batch, generator=gen) * 2 * math.pi
        pm = 20 + 25 * traffic + 0.2 * (hum - 60) - 4 * wind + 0.6 * (press - 1013)
        pm = pm.clamp_min(2) + 3 * torch.randn(batch, generator=gen)
        p = (press - 1013) / 8
        if pascal_from is not None and step >= pascal_from:
            p = press * 100.0
        x = torch.stack(
            [
                (temp - 15) / 8,
                (hum - 60) / 15,
                wind - 3,
                p,
                traffic * 2 - 1,
                hour.sin(),
                hour.cos(),
            ],
            1,
        )
        step += 1
        yield x, (pm / 50)[:, None]


class PM25Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(7, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@scenario(
    "air_quality_pm25_regressor",
    "rmsprop",
    "amp_overflow",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 60 the pressure feature arrives in Pa "
    "(~1e5) unscaled: the first layers' fp16 activations overflow, every step is skipped and "
    "the loss scale collapses",
    onset=60,
)
def h115_air_quality_pascal_overflow(ctx: Context) -> None:
    gen = seeded(11516)
    model = PM25Net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    # the stream's first batch is fit's probe batch: its 62nd reaches training step 60
    fit(
        ctx,
        model,
        opt,
        air_batches(gen, pascal_from=61),
        120,
        loss_fn=F.mse_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    ls = ctx.losses
    ctx.check("trained before", _finite(ls[:60]) and _med(ls[50:60]) < 0.5 * ls[0])
    ctx.check("fp16 overflow after the change", not any(math.isfinite(v) for v in ls[60:]))
    ctx.check("loss scale collapsed", ctx.scales[-1] < ctx.scales[59] / 1e6)


# -- music genre from spectrograms ----------------------------------------------------------------


def genre_batches(
    gen: torch.Generator,
    batch: int = 16,
    frames: int = 24,
    bins: int = 16,
    silent_at: int | None = None,
):
    """Power spectrograms of generated clips: each of 4 genres has its own band energies and
    onset rhythm. At ``silent_at`` one clip is digital silence (all-zero power)."""
    band = torch.rand(4, bins, generator=seeded(404)) * 2
    period = torch.tensor([2, 3, 4, 6])
    t = torch.arange(frames)
    step = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        beat = ((t[None] % period[y][:, None]) == 0).float()[:, :, None]
        power = (
            band[y][:, None, :]
            * (0.5 + beat)
            * torch.rand(batch, frames, bins, generator=gen).add(0.5)
        )
        if silent_at is not None and step == silent_at:
            power[0] = 0.0
        step += 1
        yield power, y


class GenreTransformer(nn.Module):
    """log-power frontend, linear patch embedding, 2 transformer layers, mean-pool head."""

    def __init__(self, bins: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(bins, dim)
        self.pos = nn.Parameter(torch.zeros(24, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 4)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        logmel = torch.log(power)  # the bug: no epsilon
        h = self.encoder(self.embed(logmel) + self.pos)
        return self.head(h.mean(1))


@scenario(
    "music_genre_spectrogram_transformer",
    "adagrad",
    "nonfinite",
    where=(),
    diverges=70,
    heldout=True,
    note="log-power frontend without an epsilon: a digitally silent clip gives log(0) = -inf, "
    "the loss and every gradient turn NaN and the weights are poisoned",
    onset=70,
)
def h115_music_genre_silent_clip(ctx: Context) -> None:
    gen = seeded(11517)
    model = GenreTransformer()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    # the stream's first batch is fit's probe batch: its 72nd reaches training step 70
    fit(ctx, model, opt, genre_batches(gen, silent_at=71), 100)
    ls = ctx.losses
    ctx.check("trained before the silent clip", _finite(ls[:70]) and _med(ls[60:70]) < 0.8 * ls[0])
    ctx.check("loss non-finite from the silent clip on", not any(math.isfinite(v) for v in ls[70:]))
