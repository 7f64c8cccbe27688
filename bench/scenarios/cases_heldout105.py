"""Held-out set 105 (``h105_``): Hugging Face ESM protein masked LM and Deformable DETR (its
pure-PyTorch multi-scale deformable attention, a ResNet backbone from a config), each a fault and
a control, and Mask2Former (tiny Swin backbone; a control) from tiny configs; hand-written
FT-Transformer on the wine table, differentiable-plasticity (Hebbian plus backprop) recurrent
net, mixture-density network for 2-D trajectories, conditional flow matching on 2-D densities (a
fault and a control), neural radiance cache trained on its own bootstrapped targets, DeepLab-style
ASPP segmenter (fp16 autocast with a GradScaler), MiDaS-style relative depth net with a
scale-and-shift-invariant loss, VQ-diffusion-style absorbing discrete diffusion transformer,
capsule network with dynamic routing, E(n)-equivariant point network.

Written blind: nothing of steadygrad's diagnosis was read to write these.
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
    digit_batches,
    digits,
    scenario,
    seeded,
)


def _gnorm(model: nn.Module) -> float:
    gs = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(gs))) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


# -- Hugging Face ESM protein masked LM -----------------------------------------------------------

ESM_VOCAB, ESM_MASK, ESM_PAD = 33, 32, 1


def _esm():
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(
        vocab_size=ESM_VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
        pad_token_id=ESM_PAD,
        mask_token_id=ESM_MASK,
        position_embedding_type="rotary",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        token_dropout=False,
    )
    return EsmForMaskedLM(config)


def _protein_batches(gen: torch.Generator, batch: int = 16, length: int = 40):
    """Generated 'proteins': a first-order Markov chain over the 20 amino-acid tokens (4..23) with
    a few strongly preferred transitions (motifs); 15% of residues masked, BERT-style."""
    g = torch.Generator().manual_seed(1234)
    trans = torch.rand(20, 20, generator=g) ** 6
    trans[torch.arange(20), torch.randperm(20, generator=g)] += 3.0
    trans = trans / trans.sum(1, keepdim=True)
    while True:
        seq = torch.empty(batch, length, dtype=torch.long)
        seq[:, 0] = torch.randint(0, 20, (batch,), generator=gen)
        for t in range(1, length):
            seq[:, t] = torch.multinomial(trans[seq[:, t - 1]], 1, generator=gen)[:, 0]
        seq = seq + 4
        mask = torch.rand(batch, length, generator=gen) < 0.15
        labels = torch.where(mask, seq, torch.full_like(seq, -100))
        yield torch.where(mask, torch.full_like(seq, ESM_MASK), seq), labels


@scenario(
    "h105_hf_esm_protein_motifs",
    "adam",
    "adam_second_moment_poisoned",
    where=("lm_head.decoder", "lm_head.dense", "esm.embeddings.word_embeddings"),
    diverges=None,
    heldout=True,
    note="one step backpropagated under a leftover manual loss scale of 2**24; Adam's v never recovers",
    onset=70,
)
def h105_esm_poisoned_second_moment(ctx: Context) -> None:
    """A tiny ESM masked LM on generated motif proteins. At step 70 a debugging branch (a manual
    fp16-style loss scale of 2**24 applied before backward and never unscaled) runs for one batch.
    Adam's first moment carries the giant gradient's direction for some tens of steps (the
    loss climbs), while the second moment holds its square: once the first moment has decayed,
    every update is ~2**24 times too small (beta2 = 0.999 needs tens of thousands of steps to
    forget it), and the masked-LM loss freezes where the kick left it."""
    gen = seeded(10501)
    torch.set_num_threads(1)
    model = _esm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _protein_batches(gen)
    ctx.attach(model, opt)
    head_w = model.lm_head.decoder.weight
    v_before = v_after = 0.0
    upd_before: list[float] = []
    upd_after: list[float] = []
    for step in range(190):
        x, y = next(batches)
        loss = model(input_ids=x, labels=y).loss
        scale = 2.0**24 if step == 70 else 1.0
        (loss * scale).backward()
        old = head_w.detach().clone()
        opt.step()
        delta = float((head_w.detach() - old).norm())
        if step == 69:
            v_before = float(opt.state[head_w]["exp_avg_sq"].max())
        if step == 71:
            v_after = float(opt.state[head_w]["exp_avg_sq"].max())
        (upd_before if 40 <= step < 70 else upd_after if step >= 170 else []).append(delta)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("the loss fell before the poisoned step", _mean(ls[60:70]) < ls[0] - 0.2)
    ctx.check("Adam's second moment jumped by 1e10", v_after > 1e10 * v_before)
    ctx.check("later updates 1000x smaller", _mean(upd_after) * 1e3 < _mean(upd_before))
    ctx.check("the loss never came back down", min(ls[75:]) > _mean(ls[60:70]) - 0.1)


@scenario(
    "h105_hf_esm_protein_motifs",
    "adamw",
    "healthy",
    heldout=True,
    note="control: the same ESM masked LM, AdamW with warmup and cosine decay",
)
def h105_esm_healthy(ctx: Context) -> None:
    gen = seeded(10502)
    torch.set_num_threads(1)
    model = _esm()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * min(s, 150) / 150))
    )
    batches = _protein_batches(gen)
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the masked-LM loss fell", _mean(ls[-20:]) < _mean(ls[:10]) - 0.3)


# -- Hugging Face Deformable DETR -----------------------------------------------------------------


def _ddetr():
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )
    config = DeformableDetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=6,
        num_labels=3,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        dropout=0.0,
    )
    return DeformableDetrForObjectDetection(config)


def _box_batches(gen: torch.Generator, batch: int = 8, size: int = 32):
    """Generated images with one or two coloured rectangles (class = colour) on a noisy ground."""
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]])
    while True:
        img = 0.1 * torch.rand(batch, 3, size, size, generator=gen)
        labels = []
        for b in range(batch):
            n = 1 + int(torch.rand((), generator=gen) < 0.4)
            cls, boxes = [], []
            for _ in range(n):
                c = int(torch.randint(0, 3, (), generator=gen))
                w, h = (torch.randint(6, 14, (2,), generator=gen)).tolist()
                x0 = int(torch.randint(0, size - w, (), generator=gen))
                y0 = int(torch.randint(0, size - h, (), generator=gen))
                img[b, :, y0 : y0 + h, x0 : x0 + w] = colours[c][:, None, None]
                cls.append(c)
                boxes.append([(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size])
            labels.append({"class_labels": torch.tensor(cls), "boxes": torch.tensor(boxes)})
        yield img, labels


def _ddetr_run(ctx: Context, seed: int, backbone_lr: float, steps: int) -> tuple[float, float]:
    gen = seeded(seed)
    torch.set_num_threads(1)
    model = _ddetr()
    for p in model.model.backbone.parameters():  # HF builds the backbone frozen: train it
        p.requires_grad_(True)
    bb = [p for n, p in model.named_parameters() if n.startswith("model.backbone")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.backbone")]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": bb, "lr": backbone_lr}], weight_decay=1e-4
    )
    batches = _box_batches(gen)
    ctx.attach(model, opt)
    w0 = torch.cat([p.detach().flatten() for p in bb]).norm()
    ratios = []
    for _ in range(steps):
        x, labels = next(batches)
        loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        before = torch.cat([p.detach().flatten() for p in bb])
        opt.step()
        after = torch.cat([p.detach().flatten() for p in bb])
        ratios.append(float((after - before).norm() / before.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = torch.cat([p.detach().flatten() for p in bb]).norm()
    return float(torch.tensor(ratios).median()), float(w1 / w0)


@scenario(
    "h105_hf_deformable_detr_boxes",
    "adamw",
    "update_ratio_out_of_range",
    where=("model.backbone", "model.backbone.model"),
    diverges=None,
    heldout=True,
    note="backbone group's lr typed 1e-1 instead of 1e-4: its updates are >1% of its weights every step",
)
def h105_ddetr_backbone_lr_typo(ctx: Context) -> None:
    """Deformable DETR trains its backbone at a tenth of the transformer's rate. Here the backbone
    group's learning rate was typed 1e-1 (instead of 1e-4): AdamW moves the ResNet's weights by over
    one per cent of their norm every step (ten times a healthy ratio) and more than doubles them,
    rewriting the features under the deformable encoder/decoder."""
    ratio, growth = _ddetr_run(ctx, 10503, 1e-1, 110)
    ls = ctx.losses
    ctx.check("backbone updates are >1% of its weights per step", ratio > 1e-2)
    ctx.check("backbone weights grew 2x", growth > 2.0)
    ctx.check("finite", _finite(ls))


@scenario(
    "h105_hf_deformable_detr_boxes",
    "adamw",
    "healthy",
    heldout=True,
    note="control: the same detector, backbone at a tenth of the transformer's rate, grad clip 0.1",
)
def h105_ddetr_healthy(ctx: Context) -> None:
    ratio, growth = _ddetr_run(ctx, 10504, 1e-4, 110)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the detection loss fell", _mean(ls[-15:]) < 0.9 * _mean(ls[:10]))
    ctx.check("backbone updates stay small", ratio < 5e-3)


# -- FT-Transformer on the wine table -------------------------------------------------------------


def _wine() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_wine

    d = load_wine()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x, torch.tensor(d.target)


class FTLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class FTTransformer(nn.Module):
    """Feature tokenizer (a weight and bias per numeric feature) + [CLS] + pre-LN layers."""

    def __init__(
        self, features: int, classes: int, dim: int = 16, layers: int = 2, scale: float = 0.0
    ) -> None:
        super().__init__()
        self.tok_w = nn.Parameter(torch.randn(features, dim) / math.sqrt(dim))
        self.tok_b = nn.Parameter(torch.zeros(features, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.layers = nn.ModuleList(FTLayer(dim, 2) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = CosineHead(dim, classes, scale) if scale else nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x[:, :, None] * self.tok_w + self.tok_b
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1)
        for layer in self.layers:
            t = layer(t)
        return self.head(F.relu(self.norm(t[:, 0])))


class CosineHead(nn.Module):
    """NormFace/CosFace-style head: scale * cos(feature, class weight)."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T


@scenario(
    "h105_ft_transformer_wine",
    "adam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine head with the face-recognition scale s=64 on a separable 3-class table: target probabilities hit exactly 1.0",
)
def h105_ft_wine_softmax_collapse(ctx: Context) -> None:
    """FT-Transformer on the (separable) wine table with a cosine-softmax head whose scale was
    copied from a face-recognition recipe (s = 64) and no label smoothing: once the classes'
    embeddings separate, the margins (64 times a cosine gap) pass ~17 and float32 softmax gives
    a growing share of training rows a target probability of exactly 1.0; their gradients are exactly zero
    (softmax collapse)."""
    gen = seeded(10505)
    torch.set_num_threads(1)
    x, y = _wine()
    model = FTTransformer(13, 3, scale=64.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    for _ in range(560):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        ctx.targets(y[idx])
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("15% of rows' target probability is exactly 1.0 in float32", frac > 0.15)
    ctx.check("the loss is nearly zero", _mean(ctx.losses[-20:]) < 1e-3)


# -- differentiable plasticity (Hebbian + backprop) -----------------------------------------------


class PlasticRNN(nn.Module):
    """Miconi-style differentiable plasticity: h_t = tanh(W_in x_t + (W + alpha * Hebb) h_{t-1}),
    Hebb <- (1 - eta) Hebb + eta h_{t-1} h_t^T per sample; reads the digit row by row."""

    def __init__(self, hidden: int = 48, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(8, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.rec.weight, std=0.5 / math.sqrt(hidden))
        self.alpha = nn.Parameter(0.01 * torch.randn(hidden, hidden))
        self.eta = nn.Parameter(torch.tensor(0.1))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8, 8)
        b = rows.shape[0]
        hidden = self.rec.weight.shape[0]
        h = torch.zeros(b, hidden)
        hebb = torch.zeros(b, hidden, hidden)
        for t in range(8):
            w = self.rec.weight + self.alpha * hebb
            h_new = torch.tanh(self.inp(rows[:, t]) + torch.einsum("bij,bj->bi", w, h))
            hebb = (1 - self.eta) * hebb + self.eta * h_new[:, :, None] * h[:, None, :]
            h = h_new
        return self.head(h)


@scenario(
    "h105_hebbian_plastic_rnn",
    "nadam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="3 batches from a shard written with a different label map; the loss spikes, then recovers",
    onset=150,
)
def h105_plastic_label_map_spike(ctx: Context) -> None:
    """A plastic RNN trained on digits with NAdam. For three steps the loader serves a shard that
    was written with a shifted label map (y -> y + 3 mod 10): inputs are ordinary digits, but the
    loss jumps to several times its level; the next clean batches pull it back down."""
    gen = seeded(10507)
    torch.set_num_threads(1)
    model = PlasticRNN()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    for step in range(230):
        x, y = next(batches)
        if 150 <= step < 153:
            y = (y + 3) % 10
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    base = sorted(ls[130:150])[10]
    ctx.check("the loss spiked 3x at the shard", max(ls[150:153]) > 3 * base)
    ctx.check("it recovered", _mean(ls[-20:]) < 1.5 * base)
    ctx.check("it had learnt before", base < 0.6 * ls[0])


# -- mixture density network for 2-D trajectories ------------------------------------------------


def _trajectory_batches(gen: torch.Generator, batch: int = 64):
    """Past 4 positions of an agent (constant speed, heading); the next displacement turns left,
    goes straight or turns right (a three-way mode), plus noise. Units: metres."""
    while True:
        heading = torch.rand(batch, generator=gen) * 2 * math.pi
        speed = 0.5 + torch.rand(batch, generator=gen)
        steps = torch.arange(-3, 1, dtype=torch.float32)
        d = torch.stack([torch.cos(heading), torch.sin(heading)], 1)
        past = steps[None, :, None] * speed[:, None, None] * d[:, None, :]
        mode = torch.randint(0, 3, (batch,), generator=gen).float() - 1.0
        turn = heading + 0.6 * mode
        nxt = speed[:, None] * torch.stack([torch.cos(turn), torch.sin(turn)], 1)
        nxt = nxt + 0.05 * torch.randn(batch, 2, generator=gen)
        yield past.reshape(batch, 8), nxt


class TrajMDN(nn.Module):
    def __init__(self, k: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.k = k
        self.body = nn.Sequential(
            nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pi = nn.Linear(hidden, k)
        self.mu = nn.Linear(hidden, 2 * k)
        self.log_sigma = nn.Linear(hidden, 2 * k)

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        logpi = F.log_softmax(self.pi(h), -1)
        mu = self.mu(h).reshape(-1, self.k, 2)
        ls = self.log_sigma(h).reshape(-1, self.k, 2).clamp(-6, 6)
        z = (y[:, None, :] - mu) / ls.exp()
        comp = -0.5 * (z**2).sum(-1) - ls.sum(-1) - math.log(2 * math.pi)
        return -torch.logsumexp(logpi + comp, -1).mean()


@scenario(
    "h105_mdn_trajectories",
    "sgd_nesterov",
    "data_outlier",
    where=(),
    diverges="auto",
    heldout=True,
    note="one batch logged in millimetres (inputs and targets x1000)",
    onset=120,
)
def h105_mdn_millimetre_batch(ctx: Context) -> None:
    """A mixture-density network predicting an agent's next displacement from its past track,
    SGD with Nesterov momentum. At step 120 one batch comes from a sensor that logs millimetres:
    positions and targets are 1000x their usual scale, its NLL is orders of magnitude above the
    rest and its gradient throws the weights so far off that the run never comes back."""
    gen = seeded(10508)
    torch.set_num_threads(1)
    model = TrajMDN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    batches = _trajectory_batches(gen)
    ctx.attach(model, opt)
    scale_seen = []
    for step in range(220):
        x, y = next(batches)
        if step == 120:
            x, y = 1000 * x, 1000 * y
        scale_seen.append(float(x.abs().max()))
        loss = model.nll(x, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    med = sorted(ls[100:120])[10]
    ctx.check("the outlier batch is 100x larger in scale", scale_seen[120] > 100 * scale_seen[119])
    ctx.check("its loss is far above the others", ls[120] > med + 50)
    ctx.check("it had learnt before", med < ls[0] - 0.5)
    ctx.check("the run broke after it", not math.isfinite(ls[-1]) and _finite(ls[:120]))


# -- conditional flow matching on 2-D densities ---------------------------------------------------


def _eight_gaussians(gen: torch.Generator, n: int) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=gen).float()
    centre = 2.0 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return centre + 0.15 * torch.randn(n, 2, generator=gen)


class VelocityNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], 1))


def _cfm_step(model, gen, t: torch.Tensor) -> torch.Tensor:
    n = len(t)
    x0 = torch.randn(n, 2, generator=gen)
    x1 = _eight_gaussians(gen, n)
    tf = t.float()
    xt = (1 - tf[:, None]) * x0 + tf[:, None] * x1
    # the conditional field written as (x1 - x_t) / (1 - t), as in some samplers' code
    u = (x1 - xt) / (1 - tf[:, None])
    return ((model(xt, tf) - u) ** 2).sum(1).mean()


@scenario(
    "h105_cond_flow_matching_2d",
    "radam",
    "nonfinite",
    where=(),
    diverges="auto",
    heldout=True,
    note="t stored in fp16 rounds to exactly 1.0; (x1 - x_t) / (1 - t) is 0/0 and the run goes NaN",
    onset=118,  # the latent bug's first t == 1.0 (the first batch to draw one)
)
def h105_cfm_fp16_time_nan(ctx: Context) -> None:
    """Conditional flow matching from a Gaussian to eight Gaussians, RAdam. The data pipeline
    stores the sampled times in float16 to save memory; any t above 0.99976 rounds to exactly 1.0,
    where the target field (x1 - x_t)/(1 - t) is 0/0 = NaN. The first batch that draws one
    poisons the loss, the gradients, and through RAdam every weight."""
    gen = seeded(10516)
    torch.set_num_threads(1)
    model = VelocityNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    hit = -1
    for step in range(200):
        t = torch.rand(128, generator=gen).half()
        if hit < 0 and bool((t == 1.0).any()):
            hit = step
        loss = _cfm_step(model, gen, t)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("the first batch to draw t == 1.0 is step 118", hit == 118)
    ctx.check("finite before it", _finite(ls[:hit]))
    ctx.check("NaN from it on", not math.isfinite(ls[hit]) and not math.isfinite(ls[-1]))
    ctx.check("weights are NaN", not all(bool(p.isfinite().all()) for p in model.parameters()))


@scenario(
    "h105_cond_flow_matching_2d",
    "adadelta",
    "healthy",
    heldout=True,
    note="control: the same flow matching, t in float32 and clamped below 1, Adadelta",
)
def h105_cfm_healthy(ctx: Context) -> None:
    gen = seeded(10530)
    torch.set_num_threads(1)
    model = VelocityNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    for _ in range(220):
        t = torch.rand(128, generator=gen).clamp(max=0.98)
        loss = _cfm_step(model, gen, t)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the flow-matching loss fell", _mean(ls[-20:]) < 0.85 * _mean(ls[:10]))


# -- neural radiance cache trained on its own bootstrapped targets --------------------------------

NRC_FREQ = torch.tensor([1.0, 2.0, 4.0, 8.0])


class RadianceCache(nn.Module):
    """An NRC-style cache: frequency-encoded vertex features -> outgoing radiance."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4 * 2 * len(NRC_FREQ), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        a = 2 * math.pi * p[:, :, None] * NRC_FREQ
        return self.mlp(torch.cat([a.sin(), a.cos()], -1).flatten(1))[:, 0]


def _path_vertices(gen: torch.Generator, n: int = 256):
    """A vertex's features, its emitted radiance, its (diffuse) albedo and the next vertex the
    path tracer hits from it, for a generated scene."""
    p = torch.rand(n, 4, generator=gen)
    emitted = 0.5 + 0.5 * torch.sin(2 * math.pi * p[:, 0]) * torch.cos(2 * math.pi * p[:, 1])
    albedo = 0.7 * (0.6 + 0.4 * p[:, 2])
    nxt = torch.frac(p * torch.tensor([1.7, 2.3, 1.3, 3.1]) + 0.37)
    return p, emitted, albedo, nxt


@scenario(
    "h105_neural_radiance_cache",
    "adamax",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="a new BRDF path drops Lambert's 1/pi: throughput > 1, the self-trained targets climb without end",
    onset=150,
)
def h105_nrc_missing_inv_pi(ctx: Context) -> None:
    """A neural radiance cache trained, as NRC is, on targets that read the cache itself one bounce
    further on (L = Le + throughput * cache(next)). From step 150 a new material path multiplies
    the diffuse albedo by pi where it should have divided the cosine-weighted pdf's pi out: the
    throughput is above 1 on average, the bootstrapped fixed point no longer exists, and the
    radiance the cache predicts -- and the loss against its own ever larger targets -- climbs step
    after step."""
    gen = seeded(10511)
    torch.set_num_threads(1)
    model = RadianceCache()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    means = []
    for step in range(400):
        p, emitted, albedo, nxt = _path_vertices(gen)
        throughput = albedo * math.pi if step >= 150 else albedo
        with torch.no_grad():
            target = emitted + throughput * model(nxt)
        pred = model(p)
        loss = F.mse_loss(pred, target)
        loss.backward()
        opt.step()
        means.append(float(pred.detach().mean()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained normally before the bug", _mean(ls[130:150]) < 0.5 * _mean(ls[:10]))
    ctx.check("throughput above 1 on average", 0.7 * 0.8 * math.pi > 1.0)
    ctx.check("predicted radiance grew 5x", means[-1] > 5 * means[149])
    ctx.check(
        "the loss kept climbing, 10x past its first jump", _mean(ls[-10:]) > 10 * _mean(ls[150:160])
    )


# -- DeepLab-style ASPP segmenter under fp16 autocast ---------------------------------------------


def _shape_scenes(gen: torch.Generator, batch: int = 16, size: int = 32):
    """Generated grey images with a bright disc (class 1) and a darker square (class 2)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        img = 0.2 * torch.rand(batch, 1, size, size, generator=gen)
        lab = torch.zeros(batch, size, size, dtype=torch.long)
        for b in range(batch):
            cx, cy = torch.randint(size // 5, size - size // 5, (2,), generator=gen).tolist()
            r = int(torch.randint(size // 10 + 1, size // 5 + 1, (), generator=gen))
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            w = size // 4
            sx, sy = torch.randint(0, size - w, (2,), generator=gen).tolist()
            sq = torch.zeros(size, size, dtype=torch.bool)
            sq[sy : sy + w, sx : sx + w] = True
            sq &= ~disc
            img[b, 0][sq] = 0.5
            img[b, 0][disc] = 0.9
            lab[b][sq] = 2
            lab[b][disc] = 1
        yield img, lab


class ASPPSegmenter(nn.Module):
    def __init__(self, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.stem_norm = nn.GroupNorm(4, width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.down_norm = nn.GroupNorm(4, 2 * width)
        self.aspp = nn.ModuleList(
            [nn.Conv2d(2 * width, width, 1)]
            + [nn.Conv2d(2 * width, width, 3, padding=d, dilation=d) for d in (2, 4)]
        )
        self.image_pool = nn.Conv2d(2 * width, width, 1)
        self.project = nn.Conv2d(4 * width, 2 * width, 1)
        self.project_norm = nn.GroupNorm(4, 2 * width)
        self.classifier = nn.Conv2d(2 * width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem_norm(self.stem(x)))
        h = F.relu(self.down_norm(self.down(h)))
        pooled = self.image_pool(h.mean((2, 3), keepdim=True)).expand(-1, -1, *h.shape[2:])
        h = torch.cat([b(h) for b in self.aspp] + [pooled], 1)
        h = F.relu(self.project_norm(self.project(h)))
        return F.interpolate(self.classifier(h), scale_factor=2, mode="bilinear")


@scenario(
    "h105_deeplab_aspp_shapes",
    "sgd_momentum",
    "amp_overflow",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler; a second camera's raw 16-bit frames overflow the stem in fp16",
    onset=60,
)
def h105_aspp_raw16_fp16_overflow(ctx: Context) -> None:
    """A DeepLab-style ASPP segmenter trained under fp16 autocast with a GradScaler. From step 60
    every other batch comes from a second camera whose frames arrive as raw 16-bit counts: in
    float32 the GroupNorm after the stem would absorb the scale, but in fp16 the stem convolution
    itself overflows (over 65504) to inf, the loss is NaN, the scaler skips the step and halves its
    scale -- every other step, so the scale collapses toward zero and the clean steps' scaled
    gradients underflow."""
    gen = seeded(10512)
    torch.set_num_threads(1)
    model = ASPPSegmenter(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scenes = _shape_scenes(gen, batch=8, size=16)
    ctx.attach(model, opt, scaler=scaler)
    skipped_before = skipped_after = 0
    raw = None
    for step in range(120):
        x, y = next(scenes)
        if step >= 60 and step % 2 == 0:
            x = (x * 65535.0).round()
            raw = x
        before = scaler.get_scale()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        if scaler.get_scale() < before:
            if step < 60:
                skipped_before += 1
            else:
                skipped_after += 1
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        fp32_ok = bool(model.stem_norm(model.stem(raw)).isfinite().all())
        with torch.autocast("cpu", dtype=torch.float16):
            fp16_inf = bool(torch.isinf(model.stem(raw)).any())
    ls = ctx.losses
    ctx.check("trained before", _mean(ls[50:60]) < 0.7 * _mean(ls[:5]))
    ctx.check("few skips before", skipped_before <= 3)
    ctx.check("25+ steps skipped after", skipped_after >= 25)
    ctx.check("scale collapsed", ctx.scales[-1] < 1e-6 * ctx.scales[59])
    ctx.check("fp32 stem finite, fp16 stem overflows", fp32_ok and fp16_inf)


def _mask2former():
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        use_pretrained_backbone=False,
        use_timm_backbone=False,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=6,
        num_labels=2,
        train_num_points=256,
        common_stride=4,
        dropout=0.0,
    )
    return Mask2FormerForUniversalSegmentation(config)


@scenario(
    "h105_hf_mask2former_shapes",
    "adamw",
    "healthy",
    heldout=True,
    note="control: Mask2Former (tiny Swin backbone) on generated shapes, AdamW, warmup, clip 0.01",
)
def h105_mask2former_healthy(ctx: Context) -> None:
    """Mask2Former's universal segmentation (masked-attention decoder, Hungarian-matched mask and
    class losses on sampled points) from a tiny config, on the same generated disc-and-square
    scenes as the ASPP segmenter, with its recipe's AdamW, linear warmup and gradient clipping at
    0.01: a control."""
    gen = seeded(10518)
    torch.set_num_threads(1)
    model = _mask2former()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    scenes = _shape_scenes(gen, batch=4, size=32)
    ctx.attach(model, opt)
    for _ in range(120):
        x, y = next(scenes)
        masks, classes = [], []
        for lab in y:
            present = [c for c in (1, 2) if bool((lab == c).any())]
            masks.append(torch.stack([(lab == c).float() for c in present]))
            classes.append(torch.tensor([c - 1 for c in present]))
        loss = model(
            pixel_values=x.expand(-1, 3, -1, -1), mask_labels=masks, class_labels=classes
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the segmentation loss fell", _mean(ls[-15:]) < 0.8 * _mean(ls[:10]))


# -- MiDaS-style relative depth with a scale-and-shift-invariant loss -----------------------------


def _depth_scenes(gen: torch.Generator, batch: int = 8, size: int = 16):
    """Generated scenes: a slanted ground plane and one or two boxes in front of it; the image is
    a shaded, textured rendering (brightness falls with depth); the target is disparity."""
    v, u = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    while True:
        a = 2 + 2 * torch.rand(batch, 1, 1, generator=gen)
        slope = 2 * torch.rand(batch, 1, 1, generator=gen)
        depth = a + slope * (1 - v)
        for b in range(batch):
            for _ in range(1 + int(torch.rand((), generator=gen) < 0.5)):
                x0, y0 = torch.randint(0, size - 5, (2,), generator=gen).tolist()
                w = int(torch.randint(3, 6, (), generator=gen))
                depth[b, y0 : y0 + w, x0 : x0 + w] = 1 + torch.rand((), generator=gen)
        disp = 1 / depth
        tex = 0.8 + 0.2 * torch.rand(batch, size, size, generator=gen)
        img = (tex * disp * 2).unsqueeze(1)
        yield img, disp


class DepthNet(nn.Module):
    def __init__(self, w: int = 12) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, w, 3, padding=1)
        self.enc2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.dec = nn.Conv2d(3 * w, w, 3, padding=1)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.mid(F.relu(self.enc2(e1))))
        up = F.interpolate(e2, scale_factor=2, mode="nearest")
        return self.out(F.relu(self.dec(torch.cat([up, e1], 1))))[:, 0]


def ssi_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MiDaS's scale-and-shift-invariant loss: align the prediction to the target per image by
    least squares (closed form), then the mean squared residual."""
    p, t = pred.flatten(1), target.flatten(1)
    pm, tm = p.mean(1, keepdim=True), t.mean(1, keepdim=True)
    s = ((p - pm) * (t - tm)).sum(1, keepdim=True) / ((p - pm) ** 2).sum(1, keepdim=True).clamp(
        min=1e-6
    )
    return (((s * (p - pm) + tm) - t) ** 2).mean() * 100


def _top_hessian_eigenvalue(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "h105_midas_relative_depth",
    "sgd",
    "loss_of_plasticity",
    where=("mid", "dec"),
    diverges=None,
    heldout=True,
    note="a warm restart's peak lr entered 400x too high for 4 steps: ReLU units die, the loss never gets back",
    onset=80,
)
def h105_midas_restart_kills_units(ctx: Context) -> None:
    """A small encoder-decoder regressing relative disparity with MiDaS's scale-and-shift-
    invariant loss, plain SGD. At step 80 an SGDR-style warm restart was configured with its peak
    in the wrong units (2.0 instead of 5e-3) for four steps: the decoder's and the bottleneck's
    ReLU units are knocked into the dead zone, and with a third of them silent the net cannot get
    back to the error it had -- it learns on, but from a smaller, crippled network."""
    gen = seeded(10513)
    torch.set_num_threads(1)
    model = DepthNet()
    scenes = _depth_scenes(gen)
    probe = next(scenes)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3)
    ctx.attach(model, opt, probe=(lambda m, b: ssi_loss(m(b[0]), b[1]), probe))

    def dead() -> float:
        with torch.no_grad():
            e1 = F.relu(model.enc1(probe[0]))
            mid = F.relu(model.mid(F.relu(model.enc2(e1))))
            up = F.interpolate(mid, scale_factor=2, mode="nearest")
            dec = F.relu(model.dec(torch.cat([up, e1], 1)))
        return dead_fraction(mid) + dead_fraction(dec)

    dead_before = 0.0
    for step in range(200):
        for g in opt.param_groups:
            g["lr"] = 2.0 if 80 <= step < 84 else 5e-3
        if step == 80:
            dead_before = dead()
        x, d = next(scenes)
        loss = ssi_loss(model(x), d)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("trained before", _mean(ls[60:80]) < 0.2 * ls[0])
    ctx.check("dead units grew by 0.3 (mid + dec)", dead() > dead_before + 0.3)
    ctx.check(
        "the loss stays 3x above its pre-restart level", _mean(ls[-40:]) > 3 * _mean(ls[60:80])
    )


# -- VQ-diffusion-style absorbing discrete diffusion -----------------------------------------------

VQ_CODES, VQ_MASK = 8, 8


def _digit_codes(x: torch.Tensor) -> torch.Tensor:
    """Digits quantised into 16 tokens: each 2x2 patch's mean ink, in 8 levels (a fixed
    scalar 'codebook')."""
    p = x.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)
    return (p * (VQ_CODES - 1)).round().long().clamp(0, VQ_CODES - 1)


class BiAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, _ = self.qkv(x).split(d, -1)
        q, k = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k))
        return q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        v = self.qkv(x)[..., 2 * d :].reshape(b, t, self.heads, -1).transpose(1, 2)
        y = torch.softmax(self.logits(x), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DenoiseBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BiAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenDenoiser(nn.Module):
    def __init__(self, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VQ_CODES + 1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.time = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(DenoiseBlock(dim, 2) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VQ_CODES)

    def embed(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.tok(z) + self.pos + self.time(t[:, None])[:, None]

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.embed(z, t)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))

    def max_attention_logit(self, z: torch.Tensor, t: torch.Tensor) -> float:
        with torch.no_grad():
            h, top = self.embed(z, t), 0.0
            for block in self.blocks:
                top = max(top, float(block.attn.logits(block.ln1(h)).abs().max()))
                h = block(h)
        return top


@scenario(
    "h105_vq_diffusion_digit_tokens",
    "rmsprop",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="a muP attention multiplier applied as a 30x lr on qkv; no QK-norm: attention logits grow ~30x",
)
def h105_vqdiff_qkv_lr(ctx: Context) -> None:
    """An absorbing-state discrete diffusion model (VQ-diffusion style) over quantised digit
    tokens: tokens are masked with probability t and the transformer restores them. The qkv
    projections' parameter group was given a 30x learning-rate multiplier (meant for a different
    width) under RMSprop, with no QK-norm and no weight decay: the query/key weights grow and the
    attention logits with them, until attention is near one-hot."""
    gen = seeded(10514)
    torch.set_num_threads(1)
    model = TokenDenoiser()
    qkv = [p for n, p in model.named_parameters() if "attn.qkv" in n]
    rest = [p for n, p in model.named_parameters() if "attn.qkv" not in n]
    opt = torch.optim.RMSprop([{"params": rest, "lr": 5e-4}, {"params": qkv, "lr": 1.5e-2}])
    batches = digit_batches(gen, 64)
    px, _ = digits()
    pz, pt = _digit_codes(px[:64]), torch.full((64,), 0.5)
    start = model.max_attention_logit(pz, pt)
    ctx.attach(model, opt)
    for _ in range(200):
        x, _ = next(batches)
        z = _digit_codes(x)
        t = torch.rand(len(z), generator=gen).clamp(min=0.05)
        masked = torch.rand(z.shape, generator=gen) < t[:, None]
        logits = model(torch.where(masked, VQ_MASK, z), t)
        loss = F.cross_entropy(logits[masked], z[masked])
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = model.max_attention_logit(pz, pt)
    ctx.check("attention logits grew 20x", end > 20 * start)
    ctx.check("finite", _finite(ctx.losses))


# -- capsule network with dynamic routing ---------------------------------------------------------


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class CapsNet(nn.Module):
    """Sabour et al.'s capsule net, shrunk for 8x8 digits: conv -> primary capsules -> digit
    capsules by three iterations of routing-by-agreement, plus a reconstruction decoder."""

    def __init__(self, prim_types: int = 8, prim_dim: int = 4, out_dim: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.primary = nn.Conv2d(32, prim_types * prim_dim, 3)
        self.prim_dim = prim_dim
        n = prim_types * 16
        self.digit_caps = nn.Parameter(0.3 * torch.randn(n, 10, out_dim, prim_dim))
        self.decoder = nn.Sequential(
            nn.Linear(10 * out_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        u = self.primary(h)  # (b, types*dim, 4, 4)
        b = u.shape[0]
        u = u.reshape(b, -1, self.prim_dim, 16).transpose(2, 3).reshape(b, -1, self.prim_dim)
        u = squash(u)
        u_hat = torch.einsum("nkdp,bnp->bnkd", self.digit_caps, u)
        logits = torch.zeros(b, u_hat.shape[1], 10)
        for i in range(3):
            c = torch.softmax(logits, -1)
            v = squash((c[..., None] * u_hat).sum(1))
            if i < 2:
                logits = logits + (u_hat * v[:, None]).sum(-1)
        lengths = v.norm(dim=-1)
        masked = (v * F.one_hot(y, 10)[..., None]).flatten(1)
        return lengths, self.decoder(masked)


def margin_loss(lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = F.one_hot(y, 10).float()
    pos = t * F.relu(0.9 - lengths) ** 2
    neg = 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return (pos + neg).sum(1).mean()


@scenario(
    "h105_capsnet_agreement_routing",
    "asgd",
    "gradient_spike",
    where=("decoder.0", "decoder.2"),
    diverges=None,
    heldout=True,
    note="one batch's reconstruction target left in raw 0..16 ink counts: the decoder's gradient spikes",
    onset=110,
)
def h105_capsnet_raw_recon_target(ctx: Context) -> None:
    """A capsule network with dynamic routing on digits (margin loss plus the usual small
    reconstruction loss), averaged SGD. At step 110 one batch's reconstruction target comes from a
    cache that kept scikit-learn's raw 0..16 ink counts instead of the 0..1 images: the
    reconstruction residuals are ~16x larger, and the decoder's gradient spikes by well over an
    order of magnitude for that step while the inputs and the labels are ordinary."""
    gen = seeded(10515)
    torch.set_num_threads(1)
    model = CapsNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1, t0=50)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    dec_norms = []
    for step in range(170):
        x, y = next(batches)
        target = x * 16 if step == 110 else x
        lengths, recon = model(x, y)
        loss = margin_loss(lengths, y) + 0.05 * ((recon - target) ** 2).sum(1).mean() / 8
        loss.backward()
        dec_norms.append(
            float(torch.stack([p.grad.norm() for p in model.decoder.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    base = sorted(dec_norms[90:110])[10]
    ls = ctx.losses
    ctx.check("the decoder's gradient spiked 10x", dec_norms[110] > 10 * base)
    ctx.check("trained before", _mean(ls[100:110]) < 0.8 * _mean(ls[:5]))
    ctx.check("finite", _finite(ls))


# -- E(n)-equivariant point network ---------------------------------------------------------------


COORD_GAIN = 0.001


class EGNNLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * dim + 1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.coord_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        self.node_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.xavier_uniform_(self.coord_mlp[2].weight, gain=COORD_GAIN)
        nn.init.zeros_(self.coord_mlp[2].bias)

    def forward(self, h: torch.Tensor, x: torch.Tensor):
        n = h.shape[1]
        diff = x[:, :, None] - x[:, None]  # (b, n, n, 3)
        d2 = (diff**2).sum(-1, keepdim=True)
        hi = h[:, :, None].expand(-1, -1, n, -1)
        hj = h[:, None].expand(-1, n, -1, -1)
        m = self.edge_mlp(torch.cat([hi, hj, d2], -1))
        # Satorras et al.'s coordinate update (tanh-bounded weights), without the 1/(n-1) mean
        x = x + (diff * torch.tanh(self.coord_mlp(m))).sum(2)
        h = h + self.node_mlp(torch.cat([h, m.sum(2)], -1))
        return h, x


class EGNN(nn.Module):
    def __init__(self, dim: int = 32, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.layers = nn.ModuleList(EGNNLayer(dim) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, kind: torch.Tensor, x: torch.Tensor):
        h = self.embed(kind[..., None])
        for layer in self.layers:
            h, x = layer(h, x)
        return self.readout(h).sum((1, 2)), x


def _spring_clusters(gen: torch.Generator, batch: int = 32, n: int = 8):
    """Clusters of n points of two kinds; target: the spring energy to rest length 1.5."""
    while True:
        x = torch.randn(batch, n, 3, generator=gen)
        kind = (torch.rand(batch, n, generator=gen) < 0.5).float()
        d = (x[:, :, None] - x[:, None]).norm(dim=-1)
        k = 1 + kind[:, :, None] * kind[:, None]
        e = (k * (d - 1.5) ** 2).triu(1).sum((1, 2)) / (4 * n)
        yield kind, x, e


@scenario(
    "h105_egnn_spring_energy",
    "sgd_momentum",
    "exploding_gradients",
    where=("layers.0.coord_mlp", "layers.1.coord_mlp", "layers.2.coord_mlp", "layers.3.coord_mlp"),
    diverges="auto",
    heldout=True,
    note="EGNN coordinate updates summed over neighbours with no 1/(n-1) mean: coordinates and gradients compound",
)
def h105_egnn_unbounded_coords(ctx: Context) -> None:
    """An E(n)-equivariant graph network regressing a spring energy of generated point clusters,
    SGD with momentum. Its coordinate update sums (x_i - x_j) * phi_x(m_ij) over neighbours with
    no 1/(n-1) mean (only a tanh on each pair's weight): each layer can multiply the
    coordinates' spread by up to n + 1, the squared distances fed to the next layer's edge MLP
    compound across the four layers, and once training pushes phi_x up the gradients burst, ever
    larger, until the run blows up."""
    gen = seeded(10517)
    torch.set_num_threads(1)
    model = EGNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _spring_clusters(gen)
    ctx.attach(model, opt)
    norms, spreads = [], []
    for _ in range(150):
        kind, x, e = next(batches)
        pred, xo = model(kind, x)
        loss = F.mse_loss(pred, e)
        loss.backward()
        norms.append(_gnorm(model))
        spreads.append(float(xo.detach().std() / x.std()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    typical = sorted(norms[30:50])[10]
    fin = [v for v in norms if math.isfinite(v)]
    bursts = [i for i, v in enumerate(norms) if i >= 50 and v > 20 * typical]
    ctx.check("gradient norm grew 1000x", max(fin) > 1000 * typical)
    ctx.check("growing bursts before the break", len(bursts) >= 3)
    ctx.check(
        "the outgoing coordinates' spread blew up", max(spreads) > 50 * sorted(spreads[:20])[10]
    )
    ctx.check("the run broke", not math.isfinite(ls[-1]) and _finite(ls[:50]))
