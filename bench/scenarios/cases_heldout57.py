"""Held-out scenarios, set 57 (``h57_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face CLIPSeg vision tower, OWLv2 vision tower (behind a hand-written sensor
stem, fp16 autocast), BridgeTower (image + text), Donut-Swin and Jina-Embeddings-v3 from configs,
and in plain PyTorch a graph-network particle simulator trained on rollouts, a Deep Ritz solver
of a Poisson problem on the disc, a symplectic (leapfrog) Hamiltonian ODE net, a learned
optimiser (a coordinate-wise LSTM meta-trained through unrolled inner loops), a differentiable
renderer fitting Gaussian blobs to an image, a neural signed-distance field with an eikonal loss
and a Fourier-feature MLP fitting an image.

Optimizers: AdamW, Adam (one run with a GradScaler), NAdam, momentum SGD, RMSprop, Nesterov
SGD, Adamax, plain SGD, Adagrad, and steadygrad.optim's AdaBelief and Lion in the faults;
steadygrad.optim's Grams and AdEMAMix (fp16 autocast with a GradScaler), Adadelta and ASGD in
the controls.
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
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _first_divergence(losses: list[float]) -> int | None:
    """First step where the running median of 5 exceeds max(2 x best, best + 1) (or non-finite)."""
    best = float("inf")
    for i, v in enumerate(losses):
        if not _finite(v):
            return i
        best = min(best, v)
        window = sorted(losses[max(0, i - 4) : i + 1])
        if i >= 4 and window[2] > max(2 * best, best + 1):
            return i
    return None


def _images(x: torch.Tensor, size: int = 16, channels: int = 3) -> torch.Tensor:
    """8x8 digits (B, 64) in [0, 1] -> (B, channels, size, size)."""
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear")
    return img.expand(-1, channels, -1, -1).contiguous()


# == Hugging Face models from configs ===========================================================


def _clipseg_vision():
    from transformers import CLIPSegVisionConfig, CLIPSegVisionModel

    config = CLIPSegVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        attention_dropout=0.0,
    )
    config._attn_implementation = "eager"
    return CLIPSegVisionModel(config)


class ClipSegDigits(nn.Module):
    """CLIPSeg's vision tower (a CLIP ViT) with a linear head on its pooled output."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = _clipseg_vision()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(pixel_values=_images(x)).pooler_output)


def _attention_logits(model: ClipSegDigits, x: torch.Tensor) -> tuple[float, float]:
    """Largest |q.k * scale| over both layers and the mean max attention probability."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.vit.encoder.layers):
        attn = layer.self_attn
        hooks.append(
            attn.q_proj.register_forward_hook(lambda m, a, o, i=i: seen.update({f"q{i}": o}))
        )
        hooks.append(
            attn.k_proj.register_forward_hook(lambda m, a, o, i=i: seen.update({f"k{i}": o}))
        )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    top, pmax = 0.0, []
    for i, layer in enumerate(model.vit.encoder.layers):
        attn = layer.self_attn
        b, t, _ = seen[f"q{i}"].shape
        q = seen[f"q{i}"].reshape(b, t, attn.num_heads, -1).transpose(1, 2)
        k = seen[f"k{i}"].reshape(b, t, attn.num_heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * attn.scale
        top = max(top, float(logits.abs().max()))
        pmax.append(float(logits.softmax(-1).amax(-1).mean()))
    return top, sum(pmax) / len(pmax)


_CLIPSEG_ATTN = (
    "vit.encoder.layers.0.self_attn",
    "vit.encoder.layers.1.self_attn",
)


@scenario(
    "h57_hf_clipseg_vision",
    "adamw",
    "attention_logit_growth",
    where=_CLIPSEG_ATTN,
    diverges=None,
    heldout=True,
    note="attention scale head_dim**+0.5 instead of **-0.5 (16x), AdamW without QK-norm",
)
def h57_hf_clipseg_scale_exponent_sign(ctx: Context) -> None:
    """A port of the attention to a fused kernel wrote ``scale = head_dim ** 0.5`` (the
    exponent's sign lost): the pre-softmax logits q.k are multiplied by 4 instead of divided by
    4. The model still learns at first, but q and k grow under AdamW with nothing (no QK-norm,
    no weight decay on them) holding them, and the 16x-too-hot logits run away until attention
    is one-hot on one patch; the classifier stalls well above where a correct model gets (it
    does not blow up)."""
    gen = seeded(5701)
    model = ClipSegDigits()
    for layer in model.vit.encoder.layers:
        layer.self_attn.scale = layer.self_attn.head_dim**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = digits()[0][:256]
    start = _attention_logits(model, probe)
    fit(ctx, model, opt, digit_batches(gen), 300)
    end = _attention_logits(model, probe)
    ctx.check("attention logits grew 10x", end[0] > 10 * start[0])
    ctx.check("attention saturated (mean max prob > 0.95)", end[1] > 0.95)
    ctx.check("the loss did not diverge", _first_divergence(ctx.losses) is None)


@scenario("h57_hf_clipseg_vision", "grams", "healthy", heldout=True)
def h57_hf_clipseg_healthy_grams(ctx: Context) -> None:
    """The same CLIPSeg vision tower with its correct 1/sqrt(d) scale, trained with Grams."""
    gen = seeded(5702)
    model = ClipSegDigits()
    opt = sgo.Grams(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, digit_batches(gen), 250)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:10]) / 10)


# -- OWLv2 vision tower behind a sensor stem, fp16 autocast --------------------------------------


def _owlv2_vision():
    from transformers import Owlv2VisionConfig, Owlv2VisionModel

    config = Owlv2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
    )
    return Owlv2VisionModel(config)


class OwlSensor(nn.Module):
    """A one-channel sensor image -> a learnt 3x3 'stem' to three channels -> OWLv2's vision
    tower -> a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.vit = _owlv2_vision()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = self.stem(_images(x, channels=1))
        return self.head(self.vit(pixel_values=img).pooler_output)


@scenario(
    "h57_hf_owlv2_sensor",
    "adam",
    "amp_overflow",
    where="stem",
    diverges=120,
    heldout=True,
    onset=120,
    note="raw 16-bit counts from step 120 overflow the fp16 stem conv",
)
def h57_hf_owlv2_raw_counts_fp16(ctx: Context) -> None:
    """Training runs under fp16 autocast with a GradScaler. From step 120 the loader reads a
    new shard written by another camera as raw 16-bit counts (0..65535) that nobody rescaled to
    [0, 1]. In fp32 the tower's pre-LayerNorm would absorb the scale; in fp16 the stem
    convolution's output exceeds 65504 and becomes inf, the LayerNorm turns it into NaN, and
    every later step's loss is NaN (the scaler skips the steps and keeps halving its scale)."""
    gen = seeded(5703)
    model = OwlSensor()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    overflow: dict[int, bool] = {}
    step_now = [0]

    def watch(m, a, out):
        overflow[step_now[0]] = bool(torch.isinf(out).any())

    model.stem.register_forward_hook(watch)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        step_now[0] = step
        return (x * 65535.0 if step >= 120 else x), y

    fit(ctx, model, opt, digit_batches(gen), 170, alter=alter, amp=True, scaler=scaler)
    ctx.check("stem finite in fp16 before 120", not any(overflow[s] for s in range(120)))
    ctx.check("stem overflowed to inf at 120", overflow[120])
    ctx.check(
        "loss finite before 120, NaN from 120",
        all(_finite(v) for v in ctx.losses[:120]) and not _finite(ctx.losses[120]),
    )
    x, _ = next(digit_batches(gen))
    with torch.no_grad():
        fp32 = model.stem(_images(x * 65535.0, channels=1))
    ctx.check("the same batch is finite in fp32", bool(torch.isfinite(fp32).all()))


@scenario("h57_hf_owlv2_sensor", "ademamix", "healthy", heldout=True)
def h57_hf_owlv2_healthy_fp16(ctx: Context) -> None:
    """The OWLv2 sensor model under fp16 autocast with a GradScaler on correctly scaled
    images, trained with AdEMAMix."""
    gen = seeded(5704)
    model = OwlSensor()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, digit_batches(gen), 220, amp=True, scaler=scaler)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:10]) / 10)


# -- BridgeTower: image + text -> digit class ----------------------------------------------------


def _bridgetower():
    from transformers import BridgeTowerConfig, BridgeTowerModel

    config = BridgeTowerConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        vision_config=dict(hidden_size=64, num_hidden_layers=1, image_size=16, patch_size=4),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        share_cross_modal_transformer_layers=True,
    )
    return BridgeTowerModel(config)


class BridgeTowerDigits(nn.Module):
    def __init__(self, logit_temperature: float = 1.0) -> None:
        super().__init__()
        self.bt = _bridgetower()
        self.head = nn.Linear(64, 10)
        self.logit_temperature = logit_temperature

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, ids = batch
        out = self.bt(input_ids=ids, pixel_values=_images(x))
        return self.head(out.pooler_output) / self.logit_temperature


def _bt_batches(gen: torch.Generator, n: int = 96, batch: int = 32):
    """A small fixed image+caption set (the caption is a noisy class token), cycled."""
    x, y = digits()
    idx = torch.randperm(len(y), generator=gen)[:n]
    x, y = x[idx], y[idx]
    ids = torch.randint(12, 64, (n, 8), generator=gen)
    ids[:, 0] = 2 + y
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            j = order[i : i + batch]
            yield (x[j], ids[j]), y[j]


@scenario(
    "h57_hf_bridgetower",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="logits divided by an inverse temperature of 0.01 (meant to multiply): 100x hotter",
)
def h57_hf_bridgetower_temperature_inverted(ctx: Context) -> None:
    """The classifier's config stores an inverse temperature ``0.01`` meant to multiply the
    logits (a heavy softening for noisy captions); the code divides by it, making the logits
    100x hotter instead of 100x colder. On a small
    image+caption set the model is pushed far past zero training loss: the float32 softmax of
    the head gives the target probability exactly 1.0 on most samples (collapsed to one-hot)."""
    gen = seeded(5705)
    model = BridgeTowerDigits(logit_temperature=0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _bt_batches(gen)
    fit(ctx, model, opt, batches, 250)
    (x, ids), y = next(batches)
    with torch.no_grad():
        logits = model((x, ids))
    ctx.check(
        "softmax collapsed to one-hot on > half the batch", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check("training loss ~0", sum(ctx.losses[-10:]) / 10 < 1e-3)


# -- Donut-Swin classifier with layer-wise LR decay ---------------------------------------------


def _donut():
    from transformers import DonutSwinConfig, DonutSwinModel

    config = DonutSwinConfig(
        image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
    )
    return DonutSwinModel(config)


class DonutDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.donut = _donut()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Donut's image processor normalises with mean 0.5, std 0.5
        return self.head(self.donut(pixel_values=_images(x) * 2 - 1).pooler_output)


@scenario(
    "h57_hf_donut_swin",
    "sgd_mom",
    "update_ratio_out_of_range",
    where=("donut.embeddings.patch_embeddings.projection", "donut.embeddings"),
    diverges=None,
    heldout=True,
    note="embeddings' LR multiplier typed 1e3 instead of 1e-3 (meant nearly frozen)",
)
def h57_hf_donut_embedding_lr_multiplier_typo(ctx: Context) -> None:
    """The fine-tuning recipe keeps the patch embeddings nearly frozen with an LR multiplier
    of ``1e-3``; the config says ``1e3`` (the exponent's sign lost), so the embeddings train at
    1000x the base rate of everything else. The patch projection's update/weight ratio sits
    orders of magnitude above the rest of the model; the LayerNorm right behind it hides the
    damage from the loss, which still falls (slowly)."""
    gen = seeded(5706)
    model = DonutDigits()
    base = 0.05
    emb = list(model.donut.embeddings.parameters())
    ids = {id(p) for p in emb}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD(
        [{"params": emb, "lr": base * 1e3}, {"params": rest, "lr": base}], momentum=0.9
    )
    watched = {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2}
    ratios: dict[str, list[float]] = {n: [] for n in watched}
    prev = {n: p.detach().clone() for n, p in watched.items()}

    def before(step: int) -> None:
        for n, p in watched.items():
            ratios[n].append(float((p.detach() - prev[n]).norm() / (prev[n].norm() + 1e-12)))
            prev[n] = p.detach().clone()

    fit(ctx, model, opt, digit_batches(gen), 200, before=before)
    mean = {n: sum(r[1:]) / max(len(r) - 1, 1) for n, r in ratios.items()}
    proj = mean["donut.embeddings.patch_embeddings.projection.weight"]
    others = sorted(v for n, v in mean.items() if "embeddings" not in n)
    ctx.check(
        "patch projection update/weight ratio > 20x the median layer",
        proj > 20 * others[len(others) // 2],
    )
    ctx.check("loss still finite", all(_finite(v) for v in ctx.losses))
    ctx.check("and falling", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:10]) / 10 - 0.2)


# -- Jina-Embeddings-v3 encoder with a cosine head ----------------------------------------------


def _jina():
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    config = JinaEmbeddingsV3Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return JinaEmbeddingsV3Model(config)


class JinaCls(nn.Module):
    """Jina-Embeddings-v3 encoder, first-token pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _jina()
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=ids).last_hidden_state[:, 0])


@scenario(
    "h57_hf_jina_embeddings_v3",
    "rmsprop",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="z-loss added with the wrong sign: log Z is rewarded instead of penalised",
)
def h57_hf_jina_z_loss_wrong_sign(ctx: Context) -> None:
    """A z-loss (``1e-2 * logsumexp(logits)^2``, to keep log Z near 0) is written
    ``loss = ce - z`` because its helper was believed to return the penalty already negated.
    Cross-entropy does not care about a common shift of the logits, so nothing resists: the
    head's weights and bias move steadily along the direction that raises every logit and log Z
    runs away, tens of times its starting size. The two classes' logits do not move exactly
    together, so once they are huge the cross-entropy of the misclassified samples climbs with
    them and the run diverges."""
    gen = seeded(5707)
    model = JinaCls()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    log_z: list[float] = []
    last_logits: list[torch.Tensor] = [torch.zeros(1)]

    def wrong_sign_z_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        z = torch.logsumexp(last_logits[0], dim=-1)
        log_z.append(float(z.detach().abs().mean()))
        return loss - 1e-2 * (z**2).mean()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last_logits[0] = m(x)
        return last_logits[0]

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, batch=32, length=16),
        300,
        extra_loss=wrong_sign_z_loss,
        forward=forward,
    )
    ctx.check(
        "|log Z| grew > 10x from its start", sum(log_z[-10:]) / 10 > 10 * sum(log_z[:10]) / 10
    )
    ctx.check("|log Z| above 20 at the end", sum(log_z[-10:]) / 10 > 20)
    ctx.check(
        "then the cross-entropy diverged (> 5x its start)",
        sum(ctx.losses[-20:]) / 20 > 5 * sum(ctx.losses[:10]) / 10,
    )


# == scientific ML and optimisation-heavy models in plain PyTorch ===============================


# -- a graph-network particle simulator trained on rollouts --------------------------------------


def _spring_chain(n: int = 6, batch: int = 16, gen: torch.Generator | None = None):
    """Initial states of a damped chain of springs in 2-D (positions, velocities)."""
    base = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], -1)
    pos = base + 0.15 * torch.randn(batch, n, 2, generator=gen)
    vel = 0.2 * torch.randn(batch, n, 2, generator=gen)
    return pos, vel


_EDGES = torch.tensor([[i, i + 1] for i in range(5)] + [[i + 1, i] for i in range(5)]).T


def _true_accel(pos: torch.Tensor, vel: torch.Tensor) -> torch.Tensor:
    src, dst = _EDGES
    d = pos[:, dst] - pos[:, src]
    length = d.norm(dim=-1, keepdim=True)
    force = 4.0 * (length - 1.0) * d / length
    acc = torch.zeros_like(pos).index_add_(1, src, force)
    return acc - 0.3 * vel


def _simulate(pos, vel, steps: int, dt: float = 0.1):
    out = []
    for _ in range(steps):
        vel = vel + dt * _true_accel(pos, vel)
        pos = pos + dt * vel
        out.append(pos)
    return torch.stack(out, 1)


def _mlp(a: int, h: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, h), nn.SiLU(), nn.Linear(h, b))


class GNS(nn.Module):
    """Encode-process-decode graph network predicting accelerations (Sanchez-Gonzalez et al.)."""

    def __init__(self, hidden: int = 32, rounds: int = 2) -> None:
        super().__init__()
        self.node_enc = _mlp(2, hidden, hidden)
        self.edge_enc = _mlp(3, hidden, hidden)
        self.edge_fns = nn.ModuleList(_mlp(3 * hidden, hidden, hidden) for _ in range(rounds))
        self.node_fns = nn.ModuleList(_mlp(2 * hidden, hidden, hidden) for _ in range(rounds))
        self.decoder = _mlp(hidden, hidden, 2)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor) -> torch.Tensor:
        src, dst = _EDGES
        d = pos[:, dst] - pos[:, src]
        e = self.edge_enc(torch.cat([d, d.norm(dim=-1, keepdim=True)], -1))
        h = self.node_enc(vel)
        for edge_fn, node_fn in zip(self.edge_fns, self.node_fns, strict=True):
            e = e + edge_fn(torch.cat([e, h[:, src], h[:, dst]], -1))
            agg = torch.zeros_like(h).index_add_(1, src, e)
            h = h + node_fn(torch.cat([h, agg], -1))
        return self.decoder(h)

    def rollout(self, pos, vel, steps: int, dt: float = 0.1):
        out = []
        for _ in range(steps):
            vel = vel + dt * self(pos, vel)
            pos = pos + dt * vel
            out.append(pos)
        return torch.stack(out, 1)


def _gns_train(ctx: Context, model: GNS, opt, steps: int, horizon, gen) -> None:
    """``horizon(step)`` > 0: MSE of a rollout of that many steps against the simulator;
    0: one-step teacher-forced MSE of the predicted accelerations (the usual GNS target)."""
    ctx.attach(model, opt)
    for step in range(steps):
        pos, vel = _spring_chain(gen=gen)
        t = horizon(step)
        if t:
            with torch.no_grad():
                target = _simulate(pos, vel, t)
            loss = F.mse_loss(model.rollout(pos, vel, t), target)
        else:
            loss = F.mse_loss(model(pos, vel), _true_accel(pos, vel))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)


_GNS_WHERE = ("edge_fns.0", "edge_fns.1", "node_fns.0", "node_fns.1", "decoder")


@scenario(
    "h57_gns_particles",
    "nesterov",
    "exploding_gradients",
    where=_GNS_WHERE,
    diverges="auto",
    heldout=True,
    onset=50,
    note="rollout-length curriculum doubles with no gradient clipping",
)
def h57_gns_rollout_curriculum_unclipped(ctx: Context) -> None:
    """The simulator is trained on its own rollouts; a curriculum doubles the horizon every
    50 steps (4 -> 8 -> 16 -> 32 ...) and the config's gradient-clipping value was left at
    None. Backpropagating through longer and longer rollouts multiplies ever more Jacobians of
    the learned step: the gradient norm climbs step after step, the Nesterov updates grow with
    it, the learned dynamics become expansive and the gradients explode until the run breaks."""
    gen = seeded(5708)
    model = GNS()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    _gns_train(ctx, model, opt, 260, lambda s: min(4 * 2 ** (s // 50), 128), gen)
    g = ctx.grad_norms
    early = sum(g[10:50]) / 40
    finite = [v for v in g if _finite(v)]
    ctx.check("gradient norm grew > 100x over its early level", max(finite) > 100 * early)
    ctx.check(
        "the run broke (loss non-finite or 1e3x its best)",
        not all(_finite(v) for v in ctx.losses) or max(ctx.losses) > 1e3 * min(ctx.losses),
    )


@scenario("h57_gns_particles", "adadelta", "healthy", heldout=True)
def h57_gns_healthy_adadelta(ctx: Context) -> None:
    """The particle simulator trained on one-step accelerations (teacher forcing), with
    Adadelta."""
    gen = seeded(5709)
    model = GNS()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _gns_train(ctx, model, opt, 250, lambda s: 0, gen)
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * sum(ctx.losses[:10]) / 10)


# -- Deep Ritz: -Δu = 1 on the unit disc, u = 0 on its boundary ----------------------------------


class DiscBoundary(nn.Module):
    """A distance-like factor that vanishes on the unit circle: sqrt(1 - |x|^2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - (x * x).sum(-1, keepdim=True))


class DeepRitz(nn.Module):
    """u(x) = boundary(x) * net(x): the Dirichlet condition holds by construction."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.boundary = DiscBoundary()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.boundary(x) * self.net(x)


def _disc_points(gen: torch.Generator, n: int) -> torch.Tensor:
    r = torch.rand(n, generator=gen).sqrt() * 0.999
    th = 2 * math.pi * torch.rand(n, generator=gen)
    return torch.stack([r * th.cos(), r * th.sin()], -1)


def _ritz_energy(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.requires_grad_(True)
    u = model(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    return math.pi * (0.5 * (du * du).sum(-1) - u.squeeze(-1)).mean()


def _ritz_error(model: nn.Module, gen: torch.Generator) -> float:
    x = _disc_points(gen, 512)
    with torch.no_grad():
        exact = (1 - (x * x).sum(-1)) / 4
        return float((model(x).squeeze(-1) - exact).abs().mean())


def _ritz_train(ctx: Context, model, opt, steps: int, gen, alter=None) -> None:
    ctx.attach(model, opt)
    for step in range(steps):
        x = _disc_points(gen, 256)
        if alter is not None:
            x = alter(step, x)
        loss = _ritz_energy(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)


@scenario(
    "h57_deep_ritz_disc",
    "adamax",
    "nonfinite",
    where="boundary",
    diverges=160,
    heldout=True,
    onset=160,
    note="jittered boundary points land outside the disc: sqrt of a negative",
)
def h57_deep_ritz_sqrt_outside_disc(ctx: Context) -> None:
    """At step 160 the sampler mixes in its "near-boundary refinement" batch: points on the
    circle with a little Gaussian jitter, meant to be pulled inside but not clipped. A few land
    at |x| > 1, where the boundary factor sqrt(1 - |x|^2) is the square root of a negative:
    NaN there, NaN energy, NaN gradients in every weight, and the run is dead."""
    gen = seeded(5710)
    model = DeepRitz()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    first_nan: list[tuple[int, str]] = []
    step_now = [0]

    def record(name: str):
        def hook(m, a, out):
            if not first_nan and torch.isnan(out).any():
                first_nan.append((step_now[0], name))

        return hook

    model.boundary.register_forward_hook(record("boundary"))
    model.net.register_forward_hook(record("net"))

    def alter(step: int, x: torch.Tensor) -> torch.Tensor:
        step_now[0] = step
        if step == 160:
            th = 2 * math.pi * torch.rand(32, generator=gen)
            ring = torch.stack([th.cos(), th.sin()], -1) * 0.995
            x = torch.cat([x[:-32], ring + 0.01 * torch.randn(32, 2, generator=gen)])
        return x

    _ritz_train(ctx, model, opt, 200, gen, alter)
    ctx.check(
        "finite until 160, NaN at 160",
        all(_finite(v) for v in ctx.losses[:160]) and not _finite(ctx.losses[160]),
    )
    ctx.check(
        "the first NaN came out of the boundary factor at 160", first_nan[:1] == [(160, "boundary")]
    )
    ctx.check("the energy had fallen before", ctx.losses[159] < ctx.losses[0] - 0.05)


@scenario("h57_deep_ritz_disc", "asgd", "healthy", heldout=True)
def h57_deep_ritz_healthy_asgd(ctx: Context) -> None:
    """The Deep Ritz solver with its sampler kept inside the disc, trained with ASGD."""
    gen = seeded(5711)
    model = DeepRitz()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    err0 = _ritz_error(model, gen)
    _ritz_train(ctx, model, opt, 250, gen)
    ctx.check("energy fell", sum(ctx.losses[-20:]) / 20 < sum(ctx.losses[:10]) / 10 - 0.05)
    ctx.check("solution error fell", _ritz_error(model, gen) < err0)


# -- a symplectic (leapfrog) Hamiltonian ODE net --------------------------------------------------


class SeparableHamiltonian(nn.Module):
    """H(q, p) = T(p) + V(q), two MLPs; the step is a leapfrog (symplectic) integrator."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.kinetic = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))
        self.potential = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))

    def _grad(self, f: nn.Module, z: torch.Tensor) -> torch.Tensor:
        if not z.requires_grad:
            z = z.requires_grad_(True)
        (g,) = torch.autograd.grad(f(z).sum(), z, create_graph=True)
        return g

    def forward(self, q: torch.Tensor, p: torch.Tensor, dt: float = 0.2, steps: int = 4):
        for _ in range(steps):
            p = p - 0.5 * dt * self._grad(self.potential, q)
            q = q + dt * self._grad(self.kinetic, p)
            p = p - 0.5 * dt * self._grad(self.potential, q)
        return q, p


def _pendulum(gen: torch.Generator, n: int = 128, horizon: float = 0.8):
    q = (torch.rand(n, 1, generator=gen) * 2 - 1) * 2.0
    p = (torch.rand(n, 1, generator=gen) * 2 - 1) * 1.5
    q1, p1 = q.clone(), p.clone()
    h = horizon / 80
    for _ in range(80):  # fine leapfrog of the true pendulum H = p^2/2 - cos q
        p1 = p1 - 0.5 * h * torch.sin(q1)
        q1 = q1 + h * p1
        p1 = p1 - 0.5 * h * torch.sin(q1)
    return q, p, q1, p1


@scenario(
    "h57_symplectic_hnn",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="exponential LR decay typed gamma=1.02 instead of 0.98 from step 60",
)
def h57_symplectic_lr_gamma_typo(ctx: Context) -> None:
    """Plain SGD at 0.02 for 60 steps, then an exponential decay whose gamma was typed 1.02
    instead of 0.98: the rate grows 2% a step. The leapfrog net fits the pendulum well until the
    rate passes the stability limit 2/curvature of its loss (around 0.3, reached near step
    200); from there the iterates oscillate out of the valley and the loss blows up."""
    gen = seeded(5712)
    model = SeparableHamiltonian()
    base = 0.02
    opt = torch.optim.SGD(model.parameters(), lr=base)
    lrs: list[float] = []
    ctx.attach(model, opt)
    for step in range(320):
        opt.param_groups[0]["lr"] = base * 1.02 ** max(step - 60, 0)
        lrs.append(opt.param_groups[0]["lr"])
        q, p, q1, p1 = _pendulum(gen)
        qh, ph = model(q, p)
        loss = F.mse_loss(qh, q1) + F.mse_loss(ph, p1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not _finite(float(loss.detach())):
            break
    at = _first_divergence(ctx.losses)
    ctx.check(
        "the loss fell first (below 0.1 of its start)", min(ctx.losses[:60]) < 0.1 * ctx.losses[0]
    )
    ctx.check("then diverged after the onset", at is not None and at > 60)
    ctx.check("with the LR > 5x its base when it did", at is not None and lrs[at] > 5 * base)


# -- a learned optimiser: a coordinate-wise LSTM meta-trained through unrolled inner loops -------


class LSTMOptimiser(nn.Module):
    """Andrychowicz et al.: per coordinate, (log|g|, sign g) -> LSTM -> an update."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2, hidden)
        self.out = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, g: torch.Tensor, state):
        feats = torch.stack([torch.log(g.abs() + 1e-8) / 8.0, torch.sign(g)], -1)
        h, c = self.cell(feats.reshape(-1, 2), state)
        return 0.1 * self.out(h).reshape(g.shape), (h, c)


def _quadratic_task(gen: torch.Generator, n: int = 8, dim: int = 10):
    a = torch.randn(n, 20, dim, generator=gen)
    w = torch.randn(n, dim, 1, generator=gen)
    b = a @ w + 0.1 * torch.randn(n, 20, 1, generator=gen)
    return a, b


def _unrolled(opt_net: LSTMOptimiser, a, b, inner: int = 10) -> torch.Tensor:
    w = torch.zeros(a.shape[0], a.shape[2], 1, requires_grad=True)
    state = None
    total = 0.0
    for _ in range(inner):
        loss = ((a @ w - b) ** 2).mean(dim=(1, 2))
        (g,) = torch.autograd.grad(loss.sum(), w, create_graph=True)
        upd, state = opt_net(g, state)
        w = w + upd
        total = total + loss.mean()
    return total / inner


@scenario(
    "h57_learned_optimiser_lstm",
    "adabelief",
    "data_outlier",
    diverges=120,
    heldout=True,
    onset=120,
    note="one meta-batch of tasks with an unnormalised feature column (x30)",
)
def h57_learned_optimiser_unnormalised_task(ctx: Context) -> None:
    """The meta-training distribution is standardised least-squares problems. At step 120 one
    meta-batch comes from a task generator whose feature 3 is in raw units (30x the others'
    scale): the inner losses start ~1000x higher and the LSTM optimiser, which never saw such
    curvature, cannot bring them down in its 10 unrolled steps; the meta-loss spikes two orders
    of magnitude for that one step and the next batches are normal again."""
    gen = seeded(5713)
    model = LSTMOptimiser()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    for step in range(200):
        a, b = _quadratic_task(gen)
        if step == 120:
            a = a.clone()
            a[:, :, 3] *= 30.0
            b = a @ torch.randn(a.shape[0], a.shape[2], 1, generator=gen)
        loss = _unrolled(model, a, b, inner=10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    before = sorted(ctx.losses[100:120])[10]
    ctx.check("meta-loss spiked > 20x at 120", ctx.losses[120] > 20 * before)
    ctx.check("and was back to normal after", sum(ctx.losses[-20:]) / 20 < 1.5 * before)


# -- a differentiable renderer fitting Gaussian blobs to an image --------------------------------


class BlobRenderer(nn.Module):
    """K isotropic Gaussian blobs (position, log-size, colour) splatted onto a grid."""

    def __init__(self, k: int = 24, gen: torch.Generator | None = None) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.rand(k, 2, generator=gen) * 2 - 1)
        self.log_size = nn.Parameter(torch.full((k,), math.log(0.2)))
        self.colour = nn.Parameter(0.1 * torch.randn(k, generator=gen))

    def forward(self, res: int = 24) -> torch.Tensor:
        g = torch.linspace(-1, 1, res)
        grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
        d2 = ((grid - self.pos) ** 2).sum(-1)
        w = torch.exp(-d2 / (2 * self.log_size.exp() ** 2))
        return (w * self.colour).sum(-1).reshape(res, res)


def _target_image(res: int) -> torch.Tensor:
    img = digits()[0][0].reshape(1, 1, 8, 8)
    return F.interpolate(img, size=(res, res), mode="bilinear").reshape(res, res)


@scenario(
    "h57_blob_renderer",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=40,
    note="one step's loss taken at 256x256 with reduction='sum' (a debug render) is backpropagated",
)
def h57_blob_renderer_debug_render_summed(ctx: Context) -> None:
    """At step 40 the logging code renders a full-resolution 256x256 preview and, through a
    shared helper, the summed (not averaged) squared error of that preview is what gets
    backpropagated for that one step: a gradient ~1e5x the usual on every blob tensor. Adam's
    update for that step is bounded, but its second moment absorbs the square of the giant
    gradient and with beta2 = 0.999 it decays for thousands of steps: the updates afterwards
    are tens of times smaller and the fit stalls (the one bounded step, carried on by the
    momentum, also pushed it off its track)."""
    gen = seeded(5714)
    model = BlobRenderer(gen=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = _target_image(24)
    preview = _target_image(256)
    update: list[float] = []
    ctx.attach(model, opt)
    for step in range(240):
        if step == 40:
            loss = ((model(256) - preview) ** 2).sum()
        else:
            loss = F.mse_loss(model(24), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        prev = [p.detach().clone() for p in model.parameters()]
        opt.step()
        update.append(
            float(
                sum(
                    (p.detach() - q).norm() ** 2
                    for p, q in zip(model.parameters(), prev, strict=True)
                )
                ** 0.5
            )
        )
        ctx.step(F.mse_loss(model(24), target).detach() if step == 40 else loss)
    g = ctx.grad_norms
    v_pos = opt.state[model.pos]["exp_avg_sq"]
    ctx.check("the step-40 gradient was > 1e3x the usual", g[40] > 1e3 * sorted(g[20:40])[10])
    ctx.check(
        "Adam's second moment still > 1e4x the squared usual gradient at the end",
        float(v_pos.max()) > 1e4 * sorted(g[20:40])[10] ** 2,
    )
    ctx.check(
        "updates over the next 150 steps shrank > 10x",
        sum(update[50:200]) / 150 < 0.1 * sum(update[20:40]) / 20,
    )
    ctx.check("the fit stalled above its pre-fault loss", min(ctx.losses[50:]) > ctx.losses[39])


# -- a neural signed-distance field with an eikonal loss -----------------------------------------


def _shape_sdf(x: torch.Tensor) -> torch.Tensor:
    """Union of a circle and a box, as a 2-D signed distance."""
    circle = (x - torch.tensor([-0.3, 0.0])).norm(dim=-1) - 0.4
    q = (x - torch.tensor([0.35, 0.1])).abs() - torch.tensor([0.25, 0.35])
    box = q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0)
    return torch.minimum(circle, box)


class SDFNet(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x)).squeeze(-1)


@scenario(
    "h57_sdf_eikonal",
    "lion",
    "loss_of_plasticity",
    where=("fc2", "fc3"),
    diverges=None,
    heldout=True,
    onset=100,
    note="a warm restart's peak LR typed 1e-1 for Lion (meant 3e-4), for ten steps",
)
def h57_sdf_lion_restart_typo(ctx: Context) -> None:
    """A cosine schedule with warm restarts restarts at step 100 with its peak typed ``1e-1``
    instead of ``3e-4`` and holds it for ten steps until the next schedule call. Lion's sign updates move
    every weight and bias by the full rate each step (1.0 in all, weights are ~0.1): the second
    hidden ReLU layer is pushed to all-negative pre-activations and nearly all its units die.
    When the rate comes back the network cannot recover (dead units get no gradient) and the SDF
    fit stays stuck several times above where it was."""
    gen = seeded(5715)
    model = SDFNet()
    opt = sgo.Lion(model.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    for step in range(200):
        opt.param_groups[0]["lr"] = 1e-1 if 100 <= step < 110 else 3e-4
        x = (torch.rand(256, 2, generator=gen) * 2 - 1).requires_grad_(True)
        f = model(x)
        (grad,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        loss = (f - _shape_sdf(x.detach())).abs().mean() + 0.1 * (
            (grad.norm(dim=-1) - 1) ** 2
        ).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    x = torch.rand(1024, 2, generator=gen) * 2 - 1
    with torch.no_grad():
        h2 = F.relu(model.fc2(F.relu(model.fc1(x))))
        h3 = model.features(x)
    ctx.check("fc2's units > 85% dead", dead_fraction(h2) > 0.85)
    ctx.check("fc3 mostly dead too (> 60%)", dead_fraction(h3) > 0.6)
    ctx.check(
        "fit stuck > 2x its pre-restart level", min(ctx.losses[-20:]) > 2 * max(ctx.losses[95:100])
    )


# -- a Fourier-feature MLP fitting an image -----------------------------------------------------


class FourierMLP(nn.Module):
    def __init__(self, gen: torch.Generator, features: int = 64, scale: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("B", scale * torch.randn(2, features, generator=gen))
        self.mlp = nn.Sequential(
            nn.Linear(2 * features, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 2 * math.pi * x @ self.B
        return self.mlp(torch.cat([z.sin(), z.cos()], -1)).squeeze(-1)


def _pixel_batches(gen: torch.Generator, res: int = 32, batch: int = 256):
    img = _target_image(res)
    g = torch.linspace(0, 1, res)
    coords = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    vals = img.reshape(-1)
    while True:
        idx = torch.randint(0, len(vals), (batch,), generator=gen)
        yield coords[idx], vals[idx]


@scenario(
    "h57_fourier_feature_mlp",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="hand-written decoupled weight decay with the wrong sign (weights grow 0.5% a step)",
)
def h57_fourier_mlp_negative_decay(ctx: Context) -> None:
    """A hand-written decoupled weight decay ``p *= 1 - lr * wd`` was given ``wd = -0.1``
    (the author thought the minus was already in the formula): every step all weights grow by
    0.5%. Adagrad's shrinking step cannot keep up, the fit improves at first and then the loss
    climbs slowly and steadily; no layer or batch is at fault, the whole model inflates."""
    gen = seeded(5716)
    model = FourierMLP(gen)
    lr, wd = 0.05, -0.1
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)

    def decay(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - lr * wd)

    fit(
        ctx,
        model,
        opt,
        _pixel_batches(gen),
        450,
        loss_fn=F.mse_loss,
        before=decay,
        classifier=False,
    )
    finite = [v for v in ctx.losses if _finite(v)]
    best = min(finite)
    at = ctx.losses.index(best)
    ctx.check("the loss fell first", best < 0.5 * ctx.losses[0])
    ctx.check(
        "then climbed > 10x its best",
        max(ctx.losses[at:]) > 10 * best or len(finite) < len(ctx.losses),
    )
    blocks = [sum(ctx.losses[i : i + 25]) / 25 for i in range(0, len(ctx.losses) - 24, 25)]
    above2 = next((i for i, v in enumerate(blocks) if i * 25 > at and v > 2 * best), None)
    above10 = next((i for i, v in enumerate(blocks) if i * 25 > at and v > 10 * best), None)
    ctx.check(
        "slowly: 25-step means took > 75 steps from 2x to 10x the best",
        above2 is not None and above10 is not None and above10 - above2 >= 3,
    )
