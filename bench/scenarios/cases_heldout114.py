"""Held-out set 114 (``h114_``): induced instabilities and healthy controls on models not used
elsewhere in the collection.

Hugging Face ERNIE 4.5 VL MoE text tower (as a byte LM) and mLUKE entity typing from tiny
configs (no download), each with a fault and a control; hand-written: lidar depth completion (a
fault and a control), two-stage retrieval + ranking recommender (a fault and a control), reaction
yield predictor, speaker-diarisation segment embedder, sentence-boundary ReLU RNN tagger, bearing
fault vibration CNN, credit default scorer, river discharge forecaster, card-fraud transaction
scorer (fp16 autocast with a GradScaler), DNA splice-site tagger.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)

# -- Hugging Face ERNIE 4.5 VL MoE text tower as a byte LM ---------------------------------------


class ErnieVLTextLM(nn.Module):
    """The text tower of ERNIE 4.5 VL MoE (tiny config) with an untied byte head."""

    def __init__(self, vocab: int = 128, dim: int = 32, head_bias: bool = False) -> None:
        super().__init__()
        from transformers import Ernie4_5_VLMoeTextConfig, Ernie4_5_VLMoeTextModel

        config = Ernie4_5_VLMoeTextConfig(
            vocab_size=vocab,
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            moe_intermediate_size=[dim, dim],
            moe_k=2,
            moe_num_experts=4,
            moe_num_shared_experts=1,
            tie_word_embeddings=False,
            use_cache=False,
            rope_parameters={
                "rope_theta": 10000.0,
                "rope_type": "default",
                "mrope_section": [3, 3, 2],
            },
        )
        self.tower = Ernie4_5_VLMoeTextModel(config)
        self.lm_head = nn.Linear(dim, vocab, bias=head_bias)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.tower(input_ids=idx).last_hidden_state)


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h114_hf_ernie45_vl_text_tower_lm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="many epochs over a 1 KB fine-tuning corpus, the untied head at lr 0.1 in its own "
    "group, no z-loss, no decay, no label smoothing: the log-partition climbs",
)
def h114_ernie_vl_text_head_lr_adam(ctx: Context) -> None:
    """A domain fine-tune loops over two batches of text (1 KB) for 240 steps; the head's group
    keeps a learning rate of 0.1 copied from a linear-probe config. Once the corpus is
    memorised, nothing holds the logits: their log-partition climbs far above log(vocab)."""
    gen = seeded(11401)
    model = ErnieVLTextLM()
    head = list(model.lm_head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": head, "lr": 0.1}])
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    corpus = [next(batches) for _ in range(2)]
    lse = []
    for step in range(240):
        x, y = corpus[step % 2]
        logits = model(x)
        loss = _lm_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        lse.append(float(torch.logsumexp(logits.detach().float(), -1).mean()))
    ctx.check("log-partition climbed above 3 log(128)", min(lse[-20:]) > 3 * math.log(128))
    ctx.check("still climbing in the second half", sum(lse[-20:]) / 20 > sum(lse[100:120]) / 20 + 1)


@scenario("h114_hf_ernie45_vl_text_tower_lm", "adamw", "healthy", heldout=True)
def h114_ernie_vl_text_control_adamw(ctx: Context) -> None:
    """Warm-up + cosine AdamW with decay and clipping: the ordinary recipe."""
    gen = seeded(11402)
    model = ErnieVLTextLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    steps = 160
    for step in range(steps):
        warm = min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = 3e-3 * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = sum(ctx.losses[:5]) / 5
    last = sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell", last < first - 1.0)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- Hugging Face mLUKE entity typing ------------------------------------------------------------


def _mluke(labels: int = 4):
    from transformers import LukeConfig, LukeForEntityClassification

    config = LukeConfig(
        vocab_size=128,
        entity_vocab_size=8,
        entity_emb_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_entity_aware_attention=True,
    )
    return LukeForEntityClassification(config)


def _entity_batches(gen: torch.Generator, batch: int = 32, length: int = 16, span: int = 3):
    """Token strings with one marked mention; its type is set by the mention's first token's
    token range (a stand-in for person / place / organisation / other)."""
    while True:
        x = torch.randint(4, 128, (batch, length), generator=gen)
        start = torch.randint(1, length - span, (batch,), generator=gen)
        pos = start[:, None] + torch.arange(span)
        y = torch.randint(0, 4, (batch,), generator=gen)
        mention = 4 + 31 * y[:, None] + torch.randint(0, 31, (batch, span), generator=gen)
        x.scatter_(1, pos, mention)
        ent_pos = torch.full((batch, 1, 30), -1, dtype=torch.long)
        ent_pos[:, 0, :span] = pos
        inputs = {
            "input_ids": x,
            "entity_ids": torch.ones(batch, 1, dtype=torch.long),
            "entity_attention_mask": torch.ones(batch, 1, dtype=torch.long),
            "entity_position_ids": ent_pos,
        }
        yield inputs, y


def _mluke_run(ctx: Context, seed: int, opt_lr, steps: int) -> list[float]:
    gen = seeded(seed)
    model = _mluke()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _entity_batches(gen)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = opt_lr(step)
        inputs, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(**inputs).logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return ctx.losses


@scenario(
    "h114_hf_mluke_entity_typing",
    "adamax",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=140,
    note="lr typed as 2e-1 instead of 1e-2 for two steps by a hand-edited resume, then put back",
)
def h114_mluke_entity_lr_glitch_adamax(ctx: Context) -> None:
    """A resumed run picks up a hand-edited learning rate (2e-1 for 1e-2) for two steps before
    the schedule writes it back: the loss jumps, then trains back down."""
    losses = _mluke_run(ctx, 11403, lambda s: 2e-1 if 140 <= s < 142 else 1e-2, 240)
    before = sum(losses[120:140]) / 20
    peak = max(losses[140:155])
    ctx.check("loss jumped after the glitch", peak > 5.0 * before and peak > before + 0.4)
    ctx.check("trained back to its level", sum(losses[-20:]) / 20 < 2.0 * before)
    ctx.check("all finite", all(math.isfinite(v) for v in losses))


@scenario("h114_hf_mluke_entity_typing", "adamax", "healthy", heldout=True)
def h114_mluke_entity_control_adamax(ctx: Context) -> None:
    """Adamax with a linear decay: the entity typer learns the mention's type."""
    losses = _mluke_run(ctx, 11404, lambda s: 1e-2 * (1 - 0.8 * s / 200), 200)
    ctx.check("loss fell", sum(losses[-20:]) / 20 < 0.3 * sum(losses[:5]) / 5)
    ctx.check("all finite", all(math.isfinite(v) for v in losses))


# -- lidar depth completion ----------------------------------------------------------------------


class DepthCompletion(nn.Module):
    """Two-branch depth completion: an image encoder and a sparse-depth encoder, fused and
    refined into a dense 16x16 depth map."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.rgb_enc = nn.Conv2d(3, width, 3, padding=1)
        self.depth_enc = nn.Conv2d(2, width, 3, padding=1)
        self.fuse = nn.Conv2d(2 * width, width, 3, padding=1)
        self.refine = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, rgb: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.rgb_enc(rgb))
        b = F.relu(self.depth_enc(torch.cat([sparse, mask], 1)))
        return self.refine(F.relu(self.fuse(torch.cat([a, b], 1))))


def _depth_scene(gen: torch.Generator, batch: int, keep: float):
    """A ground plane tilted at random plus a box in front of it; the image is shading and an
    object mask with texture noise; the lidar keeps a share ``keep`` of the pixels."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    a, b, c = (
        torch.rand(3, batch, 1, 1, generator=gen)
        * torch.tensor([2.0, 1.0, 1.0])[:, None, None, None]
    ).unbind(0)
    depth = 2.0 + a + b * xx + c * yy
    x0, y0 = torch.randint(0, 10, (2, batch), generator=gen)
    box = torch.zeros(batch, 1, 16, 16)
    for i in range(batch):
        box[i, 0, y0[i] : y0[i] + 6, x0[i] : x0[i] + 6] = 1.0
    depth = depth[:, None] * (1 - box) + 1.5 * box
    noise = 0.1 * torch.randn(batch, 1, 16, 16, generator=gen)
    rgb = torch.cat([1.0 / depth + noise, box, 0.5 * xx.expand(batch, 1, 16, 16) + noise], 1)
    mask = (torch.rand(batch, 1, 16, 16, generator=gen) < keep).float()
    return rgb, depth * mask, mask, depth


@scenario(
    "h114_lidar_depth_completion",
    "sgd_nesterov",
    "gradient_spike",
    where=("refine", "fuse", "depth_enc", "rgb_enc"),
    diverges=None,
    heldout=True,
    onset=150,
    note="the L1 is normalised by the lidar return count (not the pixel count): a frame where "
    "the lidar dropped out multiplies the backpropagated gradient ~10x for one step",
)
def h114_depth_completion_dropout_spike_nesterov(ctx: Context) -> None:
    """The loss sums the dense L1 and divides by the number of lidar returns times a constant
    fitted for the usual 8% density. At step 150 a frame comes from a scan where the lidar
    dropped out (0.5% of pixels): the loss logged (the per-pixel L1) is ordinary, but the
    gradient backpropagated is ~10x its usual size for that one step."""
    gen = seeded(11405)
    model = DepthCompletion()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    norms = []
    for step in range(260):
        keep = 0.005 if step == 150 else 0.08
        rgb, sparse, mask, depth = _depth_scene(gen, 16, keep)
        err = (model(rgb, sparse, mask) - depth).abs()
        loss = err.mean()
        pixels_per_return = 12.5
        buggy = err.sum() / (mask.sum().clamp(min=1.0) * pixels_per_return)
        buggy.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(norms[130:150])[10]
    ctx.check("gradient at the dropout frame >5x the median before", norms[150] > 5 * before)
    ctx.check("and >2x the largest of the 20 before", norms[150] > 2 * max(norms[130:150]))
    level = sum(ctx.losses[130:150]) / 20
    ctx.check("loss back at its level by step 200", sum(ctx.losses[190:200]) / 10 < 1.3 * level)
    ctx.check("logged loss finite throughout", all(math.isfinite(v) for v in ctx.losses))


@scenario("h114_lidar_depth_completion", "sgd_nesterov", "healthy", heldout=True)
def h114_depth_completion_control_nesterov(ctx: Context) -> None:
    """Correct per-pixel L1, Nesterov SGD with a step decay; some frames are lidar dropouts
    (sparser input, a worse prediction), as real drives have."""
    gen = seeded(11406)
    model = DepthCompletion()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    for step in range(260):
        for g in opt.param_groups:
            g["lr"] = 0.02 if step < 180 else 0.006
        keep = 0.01 if step % 37 == 36 else 0.08
        rgb, sparse, mask, depth = _depth_scene(gen, 16, keep)
        loss = (model(rgb, sparse, mask) - depth).abs().mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.4 * sum(ctx.losses[:5]) / 5)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- two-stage retrieval + ranking recommender ---------------------------------------------------


class TwoStageRecommender(nn.Module):
    """A two-tower retriever (in-batch softmax) and a ranker MLP that scores retrieved items."""

    def __init__(self, users: int = 200, items: int = 300, dim: int = 16) -> None:
        super().__init__()
        self.user_tower = nn.Sequential(nn.Embedding(users, dim), nn.Linear(dim, dim))
        self.item_tower = nn.Sequential(nn.Embedding(items, dim), nn.Linear(dim, dim))
        self.ranker = nn.Sequential(nn.Linear(3 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, u: torch.Tensor, i: torch.Tensor, neg: torch.Tensor):
        eu, ei, en = self.user_tower(u), self.item_tower(i), self.item_tower(neg)
        retrieval = F.cross_entropy(eu @ ei.T, torch.arange(len(u)))
        d_pos, d_neg = eu.detach(), ei.detach()
        pos = self.ranker(torch.cat([d_pos, d_neg, d_pos * d_neg], 1))[:, 0]
        e_neg = en.detach()
        negs = self.ranker(torch.cat([d_pos, e_neg, d_pos * e_neg], 1))[:, 0]
        ranking = F.binary_cross_entropy_with_logits(
            torch.cat([pos, negs]), torch.cat([torch.ones_like(pos), torch.zeros_like(negs)])
        )
        return retrieval + ranking, ranking


def _interactions(gen: torch.Generator, batch: int = 64, users: int = 200, items: int = 300):
    """Users and items with 4 latent tastes; a user clicks items of its taste."""
    utaste = torch.randint(0, 4, (users,), generator=gen)
    itaste = torch.randint(0, 4, (items,), generator=gen)
    by_taste = [torch.nonzero(itaste == t)[:, 0] for t in range(4)]
    while True:
        u = torch.randint(0, users, (batch,), generator=gen)
        i = torch.stack(
            [
                by_taste[int(t)][torch.randint(0, len(by_taste[int(t)]), (1,), generator=gen)][0]
                for t in utaste[u]
            ]
        )
        neg = torch.randint(0, items, (batch,), generator=gen)
        yield u, i, neg


@scenario(
    "h114_two_stage_retrieval_ranker",
    "adamw",
    "update_ratio_out_of_range",
    where="ranker",
    diverges=None,
    heldout=True,
    note="the ranker's parameter group got lr 1.0, the value meant for the embedding tables' "
    "sparse optimizer: each AdamW step moves its weights by about their own size",
)
def h114_two_stage_ranker_group_lr_adamw(ctx: Context) -> None:
    """Per-module learning rates come from a dict written for a sparse-embedding setup; the
    ranker MLP picks up lr 1.0 under AdamW: each step changes its weights by a large fraction
    of their norm, while the towers train at 3e-3."""
    gen = seeded(11407)
    model = TwoStageRecommender()
    towers = [p for n, p in model.named_parameters() if not n.startswith("ranker")]
    opt = torch.optim.AdamW(
        [{"params": towers, "lr": 3e-3}, {"params": model.ranker.parameters(), "lr": 1.0}],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    data = _interactions(gen)
    ratios, tower_ratios, ranking = [], [], []
    w, t = model.ranker[0].weight, model.user_tower[1].weight
    for _ in range(200):
        u, i, neg = next(data)
        loss, rank = model(u, i, neg)
        loss.backward()
        w0, t0 = w.detach().clone(), t.detach().clone()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ratios.append(float((w.detach() - w0).norm() / w0.norm()))
        tower_ratios.append(float((t.detach() - t0).norm() / t0.norm()))
        ranking.append(float(rank))
    ctx.check("ranker update/weight ratio > 0.05 on average", sum(ratios) / len(ratios) > 0.05)
    ctx.check("tower ratio ordinary (< 0.01)", sum(tower_ratios) / len(tower_ratios) < 0.01)
    ctx.check("ranking loss stays at chance", sum(ranking[-50:]) / 50 > 0.6)


@scenario("h114_two_stage_retrieval_ranker", "adagrad", "healthy", heldout=True)
def h114_two_stage_ranker_control_adagrad(ctx: Context) -> None:
    """Adagrad at 0.3 for towers and ranker, the usual recommender recipe."""
    gen = seeded(11408)
    model = TwoStageRecommender()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.3)
    ctx.attach(model, opt)
    data = _interactions(gen)
    for _ in range(300):
        u, i, neg = next(data)
        loss, _ = model(u, i, neg)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.75 * sum(ctx.losses[:5]) / 5)
    ctx.check("all finite", all(math.isfinite(v) for v in ctx.losses))


# -- reaction yield predictor --------------------------------------------------------------------


def _reactions(gen: torch.Generator, batch: int = 64):
    """Reaction fingerprints (48 bits) and four standardised conditions (temperature, time,
    equivalents, catalyst loading); the yield in [0, 1] follows a fixed hidden rule."""
    w_fp = torch.randn(48, generator=gen) * 0.4
    w_cond = torch.tensor([0.8, 0.3, -0.5, 0.6])
    while True:
        fp = (torch.rand(batch, 48, generator=gen) < 0.2).float()
        cond = torch.randn(batch, 4, generator=gen)
        logit = fp @ w_fp + cond @ w_cond - 0.3 * cond[:, 0] ** 2
        yield torch.cat([fp, cond], 1), torch.sigmoid(logit)


class YieldNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(52, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.out = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.body(x)))[:, 0]


@scenario(
    "h114_reaction_yield_predictor",
    "sgd_mom",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=180,
    note="one batch from a partner lab's export has temperatures in kelvin, unstandardised",
)
def h114_reaction_yield_kelvin_batch_sgdmom(ctx: Context) -> None:
    """The yield predictor trains on standardised conditions; at step 180 one batch comes from a
    partner lab's export whose temperature column is raw kelvin (~300-400) instead of a
    z-score."""
    gen = seeded(11409)
    model = YieldNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.attach(model, opt)
    data = _reactions(gen)
    peak_x = []
    for step in range(300):
        x, y = next(data)
        if step == 180:
            x = x.clone()
            x[:, 48] = 298.0 + 60.0 * torch.rand(len(x), generator=gen)
        peak_x.append(float(x.abs().max()))
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sum(ctx.losses[160:180]) / 20
    ctx.check("the kelvin batch has inputs >50x the others", peak_x[180] > 50 * max(peak_x[:180]))
    ctx.check("loss jumped on that batch", ctx.losses[180] > 5 * before)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- speaker-diarisation segment embedder --------------------------------------------------------


class SegmentEmbedder(nn.Module):
    """Frame-level dilated 1-d convolutions, statistics pooling, a segment embedding and a
    speaker classifier (trained as the embedding extractor of a diarisation pipeline)."""

    def __init__(self, feats: int = 20, speakers: int = 8) -> None:
        super().__init__()
        self.frame1 = nn.Conv1d(feats, 32, 3)
        self.frame2 = nn.Conv1d(32, 32, 3, dilation=2)
        self.embed = nn.Linear(64, 32)
        self.cls = nn.Linear(32, speakers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.frame2(F.relu(self.frame1(x))))
        stats = torch.cat([h.mean(-1), torch.sqrt(h.var(-1) + 1e-5)], 1)
        return self.cls(F.relu(self.embed(stats)))


def _speech_segments(gen: torch.Generator, batch: int = 32, speakers: int = 8, frames: int = 24):
    """Cepstral-like frames: each speaker a mean and a spread, each segment a channel offset."""
    means = torch.randn(speakers, 20, 1, generator=gen)
    while True:
        s = torch.randint(0, speakers, (batch,), generator=gen)
        offset = 0.3 * torch.randn(batch, 20, 1, generator=gen)
        x = means[s] + offset + 0.8 * torch.randn(batch, 20, frames, generator=gen)
        yield x, s


def _top_hessian_eig(model: nn.Module, loss: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "h114_speaker_diarisation_embedder",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD at lr 1.0, a recipe's value for a loss summed differently; the loss "
    "surface's top curvature rises past 2/lr within a few steps",
)
def h114_diarisation_embedder_lr_sgd(ctx: Context) -> None:
    """Plain SGD at 1.0 (copied from a recipe whose loss was scaled differently): the top
    Hessian eigenvalue of the segment loss, measured on a fixed batch every other step, rises
    above the stability limit 2/lr and the loss blows up a few steps later."""
    gen = seeded(11410)
    model = SegmentEmbedder()
    data = _speech_segments(gen)
    xp, yp = next(data)
    lr = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    eigs = []
    for step in range(60):
        if step <= 8 and step % 2 == 0:
            eigs.append(_top_hessian_eig(model, F.cross_entropy(model(xp), yp), 30))
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ctx.check("top Hessian eigenvalue above 2/lr within 8 steps", max(eigs) > 2.0 / lr)
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blew up (>10x its start or non-finite)", worst > 10 * ctx.losses[0])


# -- sentence-boundary ReLU RNN tagger -----------------------------------------------------------


class BoundaryTagger(nn.Module):
    """Reads bytes with a ReLU RNN and tags each as followed by a line/sentence break or not."""

    def __init__(self, hidden: int = 64, gain: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(128, 16)
        self.rnn = nn.RNN(16, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


@scenario(
    "h114_sentence_boundary_relu_rnn",
    "asgd",
    "exploding_gradients",
    where="rnn",
    diverges="auto",
    heldout=True,
    onset=100,
    note="IRNN (identity recurrent init), no clipping; a sequence-length curriculum jumps from "
    "32- to 256-byte windows at step 100",
)
def h114_sentence_boundary_irnn_curriculum_asgd(ctx: Context) -> None:
    """An IRNN boundary tagger trains well on 32-byte windows; at step 100 the length curriculum
    switches to 256-byte windows with no gradient clipping: through 256 steps of a near-identity
    ReLU recurrence the back-propagated gradient explodes and the run breaks."""
    gen = seeded(11411)
    model = BoundaryTagger(gain=1.0)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    data = text_bytes() % 128
    norms = []
    for step in range(200):
        length = 32 if step < 100 else 256
        start = torch.randint(0, len(data) - length - 2, (16,), generator=gen)
        win = data[start[:, None] + torch.arange(length + 1)]
        x, y = win[:, :-1], (win[:, 1:] == 10).long()
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1))
        loss.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    before = max(norms[80:100])
    after = max((n if math.isfinite(n) else float("inf")) for n in norms[100:])
    ctx.check("gradient norm grew >100x after the switch", after > 100 * before)
    ctx.check("trained normally before the switch", sum(ctx.losses[90:100]) / 10 < ctx.losses[0])
    ctx.check("the run broke", not all(math.isfinite(v) for v in ctx.losses))


# -- bearing fault vibration CNN -----------------------------------------------------------------


class VibrationCNN(nn.Module):
    """1-d CNN over a 256-sample accelerometer window: healthy, inner race, outer race, ball."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, stride=2)
        self.conv2 = nn.Conv1d(16, 32, 9, stride=2)
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x[:, None]))))
        return F.relu(self.fc(h.mean(-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _vibration(gen: torch.Generator, batch: int = 32):
    """Shaft rotation plus periodic impacts at a fault-specific rate, plus sensor noise."""
    t = torch.arange(256).float()
    period = torch.tensor([0.0, 11.0, 17.0, 23.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        x = 0.5 * torch.sin(2 * math.pi * t / 64 + phase)
        p = period[y][:, None]
        hits = torch.where(p > 0, torch.cos(2 * math.pi * t / p.clamp(min=1.0)) > 0.95, False)
        x = x + 1.5 * hits.float() + 0.3 * torch.randn(batch, 256, generator=gen)
        yield x, y


@scenario(
    "h114_bearing_vibration_cnn",
    "adagrad",
    "loss_of_plasticity",
    where=("fc", "conv2"),
    diverges=None,
    heldout=True,
    onset=0,
    note="Adagrad at lr 1.0 (the sparse-feature default of another team's config): the first "
    "steps drive most ReLU units' pre-activations negative for good",
)
def h114_bearing_cnn_dead_units_adagrad(ctx: Context) -> None:
    """Adagrad's first steps are its largest; at lr 1.0 they push the fully connected and
    second conv layers' units below zero on every input. Dead units get no gradient, so the
    classifier stops learning while most of its capacity is gone."""
    losses, model = _bearing_run(ctx, 1.0)
    x, _ = next(_vibration(seeded(11499)))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    reference, _ = _bearing_run(None, 0.05)
    ctx.check("over half the fc units dead", dead > 0.5)
    ctx.check(
        "final loss >5x that of the same run at lr 0.05",
        sum(losses[-20:]) / 20 > 5 * sum(reference[-20:]) / 20,
    )


def _bearing_run(ctx: Context | None, lr: float) -> tuple[list[float], VibrationCNN]:
    """The training run; with ``ctx`` None, an unmonitored reference run."""
    gen = seeded(11412)
    model = VibrationCNN()
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    if ctx is not None:
        ctx.attach(model, opt)
    data = _vibration(gen)
    losses = []
    for _ in range(200):
        x, y = next(data)
        if ctx is not None:
            ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    return losses, model


# -- credit default scorer -----------------------------------------------------------------------


class CreditScorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 32)
        self.hidden = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(F.relu(self.inp(x)))))[:, 0]


def _applications(gen: torch.Generator, batch: int = 64):
    """Eleven standardised features plus log-income; default odds follow a hidden rule."""
    w = torch.randn(12, generator=gen)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        logit = x @ w + 0.8 * x[:, 0] * x[:, 1] - 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield x, y


@scenario(
    "h114_credit_default_scorer",
    "nadam",
    "adam_second_moment_poisoned",
    where="inp",
    diverges=None,
    heldout=True,
    onset=60,
    note="one application's income skipped the log transform (2.4e6): one giant gradient in the "
    "input layer inflates NAdam's second moment (beta2 0.999), the layer stalls for hundreds of "
    "steps",
)
def h114_credit_scorer_raw_income_nadam(ctx: Context) -> None:
    """At step 60 a single record's income arrives raw instead of log-scaled. Its gradient in
    the input layer is ~1e5x the usual; NAdam's second moment for those weights jumps by
    (1-beta2) g^2 and with beta2 = 0.999 takes thousands of steps to decay: the input layer's
    updates shrink to almost nothing while the rest keeps training."""
    gen = seeded(11413)
    model = CreditScorer()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    data = _applications(gen)
    moves, vmax, v_before = [], [], None
    for step in range(260):
        x, y = next(data)
        if step == 60:
            x = x.clone()
            x[7, 11] = 2.4e6
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        w0 = model.inp.weight.detach().clone()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append((model.inp.weight - w0).detach().abs())
        v = opt.state[model.inp.weight]["exp_avg_sq"].detach().clone()
        vmax.append(float(v.max()))
        if step == 59:
            v_before = v
        if step == 60:
            poisoned = v > 1e6 * (v_before + 1e-12)
    ctx.check("inp second moment jumped >1e6x at the record", vmax[60] > 1e6 * vmax[59])
    after = torch.stack(moves[100:260]).mean(0)[poisoned].mean()
    before = torch.stack(moves[40:60]).mean(0)[poisoned].mean()
    ctx.check(
        "poisoned inp weights' updates after <5% of before", float(after) < 0.05 * float(before)
    )
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- river discharge forecaster ------------------------------------------------------------------


class DischargeForecaster(nn.Module):
    """GRU over 24 h of rainfall and discharge; Gaussian head for the next hour's discharge."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 32, batch_first=True)
        self.mu_head = nn.Linear(32, 1)
        self.var_head = nn.Linear(32, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x: torch.Tensor):
        h = self.gru(x)[0][:, -1]
        return self.mu_head(h)[:, 0], self.var_head(h)[:, 0]


def _hydrographs(gen: torch.Generator, batch: int = 32):
    """A linear-reservoir catchment: storms fill the store, discharge drains it."""
    while True:
        rain = (
            (torch.rand(batch, 25, generator=gen) < 0.15).float()
            * torch.rand(batch, 25, generator=gen)
            * 3
        )
        q = torch.zeros(batch, 25)
        store = torch.rand(batch, generator=gen)
        for t in range(25):
            store = store + rain[:, t]
            q[:, t] = 0.2 * store
            store = store - q[:, t]
        q = q + 0.01 * torch.randn(batch, 25, generator=gen)
        yield torch.stack([rain[:, :24], q[:, :24]], -1), q[:, 24]


@scenario(
    "h114_river_discharge_forecaster",
    "adadelta",
    "nonfinite",
    where="var_head",
    diverges="auto",
    heldout=True,
    note="the variance head's softplus was dropped in a refactor: log(var) of a negative "
    "variance once the fit sharpens",
)
def h114_discharge_nll_raw_variance_adadelta(ctx: Context) -> None:
    """The Gaussian NLL takes the variance head's raw output; starting at 1.0 it shrinks as the
    forecaster fits, until for some hour it crosses zero: log of a negative number, NaN."""
    gen = seeded(11414)
    model = DischargeForecaster()
    opt = torch.optim.Adadelta(model.parameters(), lr=0.1)
    ctx.attach(model, opt)
    data = _hydrographs(gen)
    min_var = []
    for _ in range(300):
        x, y = next(data)
        mu, var = model(x)
        min_var.append(float(var.min()))
        loss = (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    bad = [i for i, v in enumerate(ctx.losses) if not math.isfinite(v)]
    ctx.check("loss went non-finite", bool(bad))
    ctx.check("a variance <= 0 at that step", bool(bad) and min_var[bad[0]] <= 0)
    ctx.check("trained before it broke", bool(bad) and bad[0] > 20)


# -- card-fraud transaction scorer (fp16 autocast, GradScaler) -----------------------------------


class FraudScorer(nn.Module):
    """Per-transaction encoder summed over a card's 64 most recent transactions (sum pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.txn = nn.Linear(4, 32)
        self.history = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.txn(x)).sum(1)
        return self.head(F.relu(self.history(pooled)))[:, 0]


def _card_histories(gen: torch.Generator, batch: int = 32, raw_from: int = 10**9):
    step = 0
    while True:
        cents = torch.exp(torch.randn(batch, 64, generator=gen) * 1.2 + 8.0)
        hour = torch.rand(batch, 64, generator=gen)
        foreign = (torch.rand(batch, 64, generator=gen) < 0.1).float()
        cat = torch.rand(batch, 64, generator=gen)
        risk = foreign.mean(1) + 0.5 * (hour < 0.15).float().mean(1)
        y = (risk > risk.median()).float()
        amount = cents if step >= raw_from else cents.log() / 10
        yield torch.stack([amount, hour, foreign, cat], -1), y
        step += 1


@scenario(
    "h114_card_fraud_scorer",
    "radam",
    "amp_overflow",
    where="txn",
    diverges=120,
    heldout=True,
    onset=120,
    note="fp16 autocast with a GradScaler; from step 120 the feature store serves amounts in raw "
    "cents (up to ~1e6): the transaction encoder's fp16 output overflows every step",
)
def h114_fraud_scorer_raw_cents_fp16_radam(ctx: Context) -> None:
    """Mixed precision (fp16 autocast) with a GradScaler. At step 120 a feature-store change
    ships transaction amounts as raw cents instead of log(cents)/10: the encoder's outputs
    exceed fp16's 65504 and become inf on every batch, the scaler skips each step and halves
    its scale, and training stops. The same batches are finite in fp32."""
    gen = seeded(11415)
    model = FraudScorer()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _card_histories(gen, raw_from=120)
    fp32_ok, fp16_bad = [], []
    for step in range(180):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
            enc = model.txn(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        ctx.scales.append(float(scaler.get_scale()))
        opt.zero_grad(set_to_none=True)
        if step >= 120:
            fp16_bad.append(not bool(torch.isfinite(enc).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model.txn(x).float()).all()))
    before = ctx.losses[:120]
    ctx.check("finite before the change", all(math.isfinite(v) for v in before))
    ctx.check("trained before the change", sum(before[100:]) / 20 < sum(before[:10]) / 10)
    ctx.check("txn fp16 output overflows on every batch after", all(fp16_bad))
    ctx.check("the same batches are finite in fp32", all(fp32_ok))
    ctx.check("scaler kept halving (scale < 1e-6)", ctx.scales[-1] < 1e-6)


# -- DNA splice-site tagger ----------------------------------------------------------------------


class ScaledHead(nn.Module):
    """Linear head whose logits are divided by a temperature."""

    def __init__(self, dim: int, classes: int, temperature: float) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) / self.temperature


class SpliceTagger(nn.Module):
    """Per-base tagger: donor (GT), acceptor (AG) or neither."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 16)
        self.conv = nn.Conv1d(16, 32, 5, padding=2)
        self.head = ScaledHead(32, 3, temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(self.embed(x).transpose(1, 2))).transpose(1, 2)
        return self.head(h)


def _dna(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Random A/C/G/T (0..3); a base is tagged donor where 'GT' starts, acceptor where 'AG'."""
    while True:
        x = torch.randint(0, 4, (batch, length), generator=gen)
        nxt = torch.cat([x[:, 1:], torch.zeros(batch, 1, dtype=torch.long)], 1)
        y = torch.zeros_like(x)
        y[(x == 2) & (nxt == 3)] = 1
        y[(x == 0) & (nxt == 2)] = 2
        y[:, -1] = 0
        yield x, y


@scenario(
    "h114_dna_splice_site_tagger",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a contrastive temperature of 0.05 copied into the classifier head; the task is "
    "separable, so margins grow until float32 softmax rounds the target's probability to 1",
)
def h114_splice_tagger_copied_temperature_rmsprop(ctx: Context) -> None:
    """The tagger's head divides its logits by 0.05, a temperature copied from the contrastive
    pre-training config. The motifs separate the classes exactly and the scaled margins grow
    fast: most rows' target probabilities become exactly 1.0 in float32 and give no gradient."""
    gen = seeded(11416)
    model = SpliceTagger(temperature=0.05)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    data = _dna(gen)
    for _ in range(250):
        x, y = next(data)
        ctx.targets(y.reshape(-1))
        logits = model(x).reshape(-1, 3)
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(data)
    with torch.no_grad():
        collapsed = collapsed_fraction(model(x).reshape(-1, 3), y.reshape(-1))
    ctx.check("over half the rows collapsed to p=1.0 in float32", collapsed > 0.5)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))
