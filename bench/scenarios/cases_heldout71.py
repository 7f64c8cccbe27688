"""Held-out scenarios, set 71 (``h71_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face vision towers built from configs, each behind a hand-written head and
fed scikit-learn's digits upsampled to 16x16: BLIP-2, InstructBLIP, SAM (its neck mean-pooled),
OWL-ViT, and Chinese-CLIP with a CLIP-style cosine head (a fault and a control, both under fp16
autocast with a GradScaler); in plain PyTorch, a maxout network, a top-1 mixture-of-experts MLP
with a router and the Switch load-balancing loss, a mixture-of-softmaxes GRU language model on
byte text, a DropConnect MLP, a low-rank factorised ReLU recurrence reading digits pixel by
pixel, a ShuffleNet-style CNN (grouped 1x1 convolutions, channel shuffle, depthwise 3x3), a
self-normalising SELU regressor (diabetes), and three controls of their own: a binarised
network with clipped straight-through estimators, a spectrally normalised hinge critic, and
RigL-style dynamic sparse training.

Optimizers: AdamW, NAdam, Adam, RAdam, RMSprop, Adagrad, Adadelta, ASGD, plain SGD, SGD with
momentum and with Nesterov momentum, and steadygrad.optim's Grams, AdaBelief, Lion, SPAM and
AdEMAMix.
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
    digit_batches,
    digits,
    fit,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _images(x: torch.Tensor, channels: int = 1, size: int = 16) -> torch.Tensor:
    """Flat 8x8 digits as (B, channels, size, size) images (nearest upsampling)."""
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="nearest")
    return img.repeat(1, channels, 1, 1)


def _vision_cfg(cls, **kw):
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        num_channels=1,
        attention_dropout=0.0,
        initializer_range=0.02,
    )
    base.update(kw)
    return cls(**base)


class TowerClassifier(nn.Module):
    """A Hugging Face vision tower, its pooled output, a linear head (digits, 10 classes)."""

    def __init__(self, tower: nn.Module, dim: int, channels: int = 1, pool: str = "pooler"):
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(dim, 10)
        self.channels = channels
        self.pool = pool

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=_images(x, self.channels))
        if self.pool == "pooler":
            return out.pooler_output
        return out.last_hidden_state.mean(dim=(2, 3))  # SAM's neck: (B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _full_batch(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


def _diabetes_batches(gen: torch.Generator, batch: int = 32):
    """Shuffled batches of scikit-learn's diabetes regression set, standardised."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)[:, None]
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- attention logit growth: BLIP-2 vision tower, the 1/sqrt(d) scale's exponent typo ----------------


def _blip2_tower():
    from transformers import Blip2VisionConfig, Blip2VisionModel

    return Blip2VisionModel(_vision_cfg(Blip2VisionConfig, num_channels=3))


def _qk_logits(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The scaled q.k logits a BLIP-style fused-qkv attention computes on ``hidden``."""
    b, t, d = hidden.shape
    qkv = attn.qkv(hidden).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    return (q @ k.transpose(-1, -2)) * attn.scale


@scenario(
    "h71_hf_blip2_vision",
    "adamw",
    "attention_logit_growth",
    where=("tower.encoder.layers.0.self_attn", "tower.encoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention scale head_dim**0.5 instead of head_dim**-0.5, AdamW 3e-3, no QK-norm",
)
def h71_blip2_attn_scale_exponent_adamw(ctx: Context) -> None:
    """A hand port of the BLIP-2 vision tower "restores" each attention's scale as
    ``head_dim ** 0.5`` (the minus of the exponent lost): the q.k logits are 16x too large from
    the start, and AdamW at 3e-3 with no QK-norm keeps growing q and k, so the logits run up
    until every attention row is a one-hot argmax."""
    gen = seeded(7101)
    model = TowerClassifier(_blip2_tower(), 32, channels=3)
    attns = [layer.self_attn for layer in model.tower.encoder.layers]
    for attn in attns:
        attn.scale = attn.head_dim**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    probe, _ = next(digit_batches(torch.Generator().manual_seed(71), 64))
    seen: list[tuple[float, float]] = []

    def logits_now() -> tuple[float, float]:
        with torch.no_grad():
            h = model.tower.embeddings(_images(probe, 3))
            layer = model.tower.encoder.layers[0]
            z = _qk_logits(layer.self_attn, layer.layer_norm1(h))
            return float(z.abs().max()), float(torch.softmax(z, -1).amax(-1).mean())

    def track(step: int) -> None:
        if step % 20 == 0:
            seen.append(logits_now())

    fit(ctx, model, opt, digit_batches(gen, 32), 300, before=track)
    seen.append(logits_now())
    ctx.check("layer 0's largest attention logit grew 10x", seen[-1][0] > 10 * seen[0][0])
    ctx.check(
        "attention rows near one-hot (mean max probability from < 0.1 to > 0.85)",
        seen[0][1] < 0.1 and seen[-1][1] > 0.85,
    )


# -- Adam's second moment poisoned: InstructBLIP vision tower, one unscaled fp16-era loss -------


def _instructblip_tower():
    from transformers import InstructBlipVisionConfig, InstructBlipVisionModel

    return InstructBlipVisionModel(_vision_cfg(InstructBlipVisionConfig, num_channels=3))


@scenario(
    "h71_hf_instructblip_vision",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="one step's loss multiplied by a stale loss scale of 65536",
)
def h71_instructblip_stale_loss_scale_nadam(ctx: Context) -> None:
    """The training loop was ported from an fp16 recipe: on the step the run switches its
    data loader (step 80) the old code path multiplies the loss by the stale static loss scale
    (65536) with nothing to unscale it. NAdam's first moment carries that gradient for a few
    dozen steps (a kick of ~30 learning rates along one batch's direction, which knocks the
    loss back up to about where it started), while its second moment (beta2 = 0.999) keeps the
    squared spike for hundreds of steps: every tensor's steps are then ~2000x smaller than
    before the spike, and the loss never comes back down."""
    gen = seeded(7102)
    model = TowerClassifier(_instructblip_tower(), 32, channels=3)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 80 else loss

    snaps: dict[int, torch.Tensor] = {}

    def track(step: int) -> None:
        if step in (40, 70, 150, 180):
            snaps[step] = _flat(model)

    fit(ctx, model, opt, digit_batches(gen, 32), 220, extra_loss=bug, before=track)
    before = (snaps[70] - snaps[40]).norm()
    after = (snaps[180] - snaps[150]).norm()
    ctx.check("parameter movement over 30 steps shrank 3x after the spike", after < before / 3)
    ctx.check(
        "the spike step's gradient was 1000x the run's median",
        ctx.grad_norms[80] > 1000 * sorted(ctx.grad_norms)[len(ctx.grad_norms) // 2],
    )
    ctx.check("loss stayed finite", all(_finite(v) for v in ctx.losses))
    pre = sum(ctx.losses[60:80]) / 20
    ctx.check(
        "the loss 60-140 steps after the spike stayed above its pre-spike level",
        min(ctx.losses[140:220]) > pre,
    )


# -- a loss spike: SAM vision encoder resumed without its optimizer state -------------------------


def _sam_tower():
    from transformers import SamVisionConfig, SamVisionModel

    cfg = _vision_cfg(
        SamVisionConfig,
        output_channels=16,
        window_size=2,
        global_attn_indexes=[1],
        mlp_dim=64,
        num_pos_feats=8,
    )
    return SamVisionModel(cfg)


def _subset_batches(gen: torch.Generator, n: int, batch: int = 32):
    """Shuffled batches of the first ``n`` digits only (a small labelled fine-tuning set)."""
    x, y = digits()
    x, y = x[:n], y[:n]
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


@scenario(
    "h71_hf_sam_vision",
    "adam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=300,
    note="resumed at step 300 from a checkpoint that held the weights but not Adam's state",
)
def h71_sam_resume_without_optimizer_state_adam(ctx: Context) -> None:
    """Fine-tuning a SAM vision encoder on 256 labelled digits; the preempted job resumes at
    step 300 from a checkpoint that saved the model's weights but not the optimizer's (the
    fresh Adam starts from zero moments). With bias correction the first step after the resume
    moves every coordinate by the full learning rate in the sign of one batch's gradient,
    where the settled run's steps were a fraction of that: the loss, near zero before, jumps
    by an order of magnitude for a step or two, then the moments refill and the run settles
    back. Gradients, data and numerics are all ordinary."""
    gen = seeded(7103)
    model = TowerClassifier(_sam_tower(), 16, pool="mean")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def resume(step: int) -> None:
        if step == 300:
            opt.state.clear()  # what a fresh torch.optim.Adam(model.parameters()) holds

    fit(ctx, model, opt, _subset_batches(gen, 256), 380, before=resume)
    pre = sorted(ctx.losses[280:300])[10]
    ctx.check("loss jumped 10x within 3 steps of the resume", max(ctx.losses[300:303]) > 10 * pre)
    ctx.check(
        "gradients stayed ordinary (none above 5x the 100 steps before's largest)",
        max(ctx.grad_norms[300:310]) < 5 * max(ctx.grad_norms[200:300]),
    )
    ctx.check(
        "the loss settled back (median of the last 20 within 3x the pre-resume median)",
        sorted(ctx.losses[360:380])[10] < 3 * pre,
    )


# -- fp16 overflow: Chinese-CLIP vision tower, a hand-written softmax under autocast -------------


def _chinese_clip_tower():
    from transformers import ChineseCLIPVisionConfig, ChineseCLIPVisionModel

    return ChineseCLIPVisionModel(_vision_cfg(ChineseCLIPVisionConfig))


class CosineHead(nn.Module):
    """A CLIP-style zero-shot head: cosine similarity between the tower's pooled feature and
    learnt class embeddings, times CLIP's fixed logit scale 1 / 0.07. ``by_hand`` returns
    probabilities through a hand-written softmax, ``exp(z) / sum(exp(z))`` without the row
    maximum subtracted (copied from a float32 notebook); otherwise it returns the logits."""

    def __init__(self, dim: int, classes: int = 10, by_hand: bool = False) -> None:
        super().__init__()
        self.classes = nn.Parameter(torch.randn(classes, dim) * dim**-0.5)
        self.scale = 1 / 0.07
        self.by_hand = by_hand

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * (F.normalize(h, dim=-1) @ F.normalize(self.classes, dim=-1).T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.logits(h)
        if not self.by_hand:
            return z
        e = z.exp()  # float16 under autocast: inf once z > ln(65504) = 11.09
        return e / e.sum(-1, keepdim=True)


def _nll_of_probs(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(torch.log(p.float()), y)


@scenario(
    "h71_hf_chinese_clip_vision",
    "sg_grams",
    "amp_overflow",
    where="head",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; exp(logits) without the max subtracted",
)
def h71_chinese_clip_fp16_exp_softmax_grams(ctx: Context) -> None:
    """The tower trains under fp16 autocast with a GradScaler, behind a CLIP-style cosine head
    (logit scale 1 / 0.07, so logits up to 14.3) whose softmax is written by hand as
    exp(z) / sum(exp(z)). Once the classifier grows confident enough that a row's top cosine
    passes 0.78, its logit passes 11.09, the float16 exp overflows to inf in the head and that
    row's probabilities become NaN: the loss is NaN, the scaler skips the step and halves its
    scale, and as the weights no longer move, the same happens on nearly every later batch."""
    gen = seeded(7104)
    tower = _chinese_clip_tower()
    model = TowerClassifier(tower, 32)
    model.head = CosineHead(32, by_hand=True)
    opt = sgo.Grams(model.parameters(), lr=5e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        300,
        loss_fn=_nll_of_probs,
        scaler=scaler,
        amp=True,
    )
    first_nan = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), None)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        z = model.head.logits(model.features(x))
        e = z.exp()
    ctx.check("the loss went NaN after 50 finite steps", first_nan is not None and first_nan > 50)
    ctx.check(
        "the head's float16 logits pass ln(65504) and their exp is inf",
        bool(z.float().max() > 11.09) and bool(torch.isinf(e).any()),
    )
    ctx.check("the same logits are finite in float32", bool(torch.isfinite(z.float()).all()))
    ctx.check(
        "the scaler kept skipping after the overflow",
        ctx.scales[-1] < ctx.scales[first_nan - 1] / 2**8 if first_nan else False,
    )


@scenario(
    "h71_hf_chinese_clip_vision",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="fp16 autocast + GradScaler; the cosine head's logits go to cross_entropy in float32",
)
def h71_chinese_clip_fp16_control_adabelief(ctx: Context) -> None:
    """The same tower and CLIP-style cosine head under fp16 autocast with a GradScaler, with
    the softmax left to ``F.cross_entropy`` on the float32 logits: trains normally."""
    gen = seeded(7105)
    model = TowerClassifier(_chinese_clip_tower(), 32)
    model.head = CosineHead(32)
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(ctx, model, opt, digit_batches(gen, 32), 220, scaler=scaler, amp=True)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-20:]) / 20
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell to a third", last < first / 3)


# -- a layer left out of the optimizer: OWL-ViT vision tower, the stem "unfrozen" too late -------


def _owlvit_tower():
    from transformers import OwlViTVisionConfig, OwlViTVisionModel

    return OwlViTVisionModel(_vision_cfg(OwlViTVisionConfig))


@scenario(
    "h71_hf_owlvit_vision",
    "radam",
    "update_ratio_out_of_range",
    where="tower.vision_model.embeddings.patch_embedding",
    diverges=None,
    heldout=True,
    onset=60,
    note="stem frozen for a 60-step warm-up; the optimizer was built from the trainable params",
)
def h71_owlvit_stem_never_unfrozen_radam(ctx: Context) -> None:
    """The recipe freezes the patch-embedding stem for the first 60 steps and unfreezes it
    after. The optimizer was built from ``[p for p in model.parameters() if p.requires_grad]``
    while the stem was frozen, so when ``requires_grad`` comes back on at step 60 the stem gets
    gradients like every other layer, but no optimizer ever applies them: its update/weight
    ratio stays exactly 0 for the rest of the run, while its gradient, never acted on, grows
    several-fold as the layers above adapt around the stale stem."""
    gen = seeded(7106)
    model = TowerClassifier(_owlvit_tower(), 32)
    stem = model.tower.vision_model.embeddings.patch_embedding
    stem.weight.requires_grad_(False)
    opt = torch.optim.RAdam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    start = stem.weight.detach().clone()
    grads: list[float] = []

    def unfreeze(step: int) -> None:
        if step == 60:
            stem.weight.requires_grad_(True)
            stem.weight.register_hook(lambda g: grads.append(float(g.norm())))

    fit(ctx, model, opt, digit_batches(gen, 32), 240, before=unfreeze)
    ctx.check("stem received gradients after step 60", len(grads) == 180 and min(grads) > 0)
    ctx.check("stem weights never changed", torch.equal(start, stem.weight.detach()))
    ctx.check(
        "the stem's unused gradient grew 3x (first 20 vs last 20 steps after unfreezing)",
        sum(grads[-20:]) > 3 * sum(grads[:20]),
    )
    ctx.check(
        "the rest trained (loss fell by half)", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]) / 2
    )


# -- a binarised network with straight-through estimators (a control) ----------------------------


def _ste_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) forward, the clipped straight-through gradient (1 where |x| <= 1) backward."""
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (torch.sign(x) - clipped).detach()


class SignSTE(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ste_sign(x)


class BinaryLinear(nn.Linear):
    """Binary weights sign(w) in the forward pass, real latent weights updated through the
    straight-through estimator (BinaryConnect / BNN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _ste_sign(self.weight), self.bias)


class BinaryNet(nn.Module):
    def __init__(self, width: int = 256, bn2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, width)
        self.bn1 = nn.BatchNorm1d(width)
        self.act1 = SignSTE()
        self.fc2 = BinaryLinear(width, width)
        self.bn2 = nn.BatchNorm1d(width) if bn2 else nn.Identity()
        self.act2 = SignSTE()
        self.head = nn.Linear(width, 10)

    def pre2(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.act1(self.bn1(self.fc1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.pre2(x)))


@scenario(
    "h71_binary_ste_net",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="binary weights and activations, clipped straight-through estimators, BatchNorm",
)
def h71_bnn_ste_control_momentum(ctx: Context) -> None:
    """A binarised MLP (fc1 -> BN -> sign -> binary fc2 -> BN -> sign -> head) trained
    through clipped straight-through estimators with momentum SGD: trains normally."""
    gen = seeded(7107)
    model = BinaryNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen, 64), 200)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell to a fifth", last < first / 5)


# -- softmax collapse: a maxout network with its temperature applied the wrong way -------------------


class Maxout(nn.Module):
    def __init__(self, d_in: int, d_out: int, pieces: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out * pieces)
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).unflatten(-1, (-1, self.pieces)).amax(-1)


class TemperedLinear(nn.Linear):
    def __init__(self, d_in: int, d_out: int, tau: float, multiply: bool = False) -> None:
        super().__init__(d_in, d_out)
        self.tau, self.multiply = tau, multiply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return z * self.tau if self.multiply else z / self.tau


class MaxoutNet(nn.Module):
    def __init__(self, tau: float = 1.0, multiply: bool = False) -> None:
        super().__init__()
        self.mx1 = Maxout(64, 128)
        self.mx2 = Maxout(128, 128)
        self.head = TemperedLinear(128, 10, tau, multiply)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mx2(self.mx1(x)))


@scenario(
    "h71_maxout_net",
    "sg_lion",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="temperature 20 multiplied into the logits instead of dividing them",
)
def h71_maxout_temperature_inverted_lion(ctx: Context) -> None:
    """A maxout network fine-tuned on 200 labelled digits, its head tempered with T = 20 to
    keep it soft; the head multiplies by T where it should divide. The logits come out 400x
    larger than intended, every training row separates in a few dozen steps, and the float32
    softmax of most rows rounds to exactly one-hot (their gradient exactly zero)."""
    seeded(7108)
    x, y = digits()
    x, y = x[:200], y[:200]
    model = MaxoutNet(tau=20.0, multiply=True)
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)
    fit(ctx, model, opt, _full_batch(x, y), 140)
    with torch.no_grad():
        collapsed = collapsed_fraction(model(x), y)
    ctx.check("over half the training rows' softmax is exactly one-hot", collapsed > 0.5)
    ctx.check("the training loss fell below 1e-4", min(ctx.losses) < 1e-4)


# -- loss of plasticity: a top-1 mixture of experts whose load-balancing loss has the wrong sign ---


class Top1MoE(nn.Module):
    """Switch-style top-1 mixture of expert MLPs with a router and the Switch load-balancing
    loss ``E * sum_i f_i * P_i`` (f_i: share of rows sent to expert i, P_i: mean router
    probability of i), kept in ``self.aux`` after each forward."""

    def __init__(self, dim: int = 64, hidden: int = 128, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )
        self.aux = torch.zeros(())
        self.counts = torch.zeros(experts)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.router(h), -1)
        choice = probs.argmax(-1)
        out = torch.zeros_like(h)
        for i, expert in enumerate(self.experts):
            rows = choice == i
            if rows.any():
                out[rows] = probs[rows, i : i + 1] * expert(h[rows])
        share = F.one_hot(choice, len(self.experts)).float().mean(0)
        self.aux = len(self.experts) * (share * probs.mean(0)).sum()
        self.counts = share.detach() * len(h)
        return h + out


class MoEClassifier(nn.Module):
    def __init__(self, experts: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 64)
        self.moe = Top1MoE(64, 128, experts)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.moe(F.relu(self.stem(x))))


@scenario(
    "h71_moe_router_mlp",
    "rmsprop",
    "loss_of_plasticity",
    where=("moe.experts.0", "moe.experts.1", "moe.experts.2"),
    diverges=None,
    heldout=True,
    onset=100,
    note="load-balancing weight annealed 1 -> 0 by step 100, unclamped: negative after",
)
def h71_moe_balance_weight_unclamped_rmsprop(ctx: Context) -> None:
    """A top-1 mixture-of-experts MLP whose Switch load-balancing weight is annealed linearly
    from 1 to 0 over the first 100 steps, as ``1.0 * (1 - step / 100)`` with the clamp at zero
    forgotten: from step 100 the weight is negative and growing, so the balance loss rewards
    imbalance. The router piles every row onto one expert within ~50 steps; the other three,
    sent no rows, receive no gradient from then on and stop learning for good (the router no
    longer chooses them, so they cannot recover). The surviving expert carries the task."""
    gen = seeded(7109)
    model = MoEClassifier()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    rows = []
    snaps: dict[int, torch.Tensor] = {}

    def track(step: int) -> None:
        if step in (200, 299):
            snaps[step] = torch.cat([_flat(model.moe.experts[i]) for i in range(3)])

    def flipped(step: int, loss: torch.Tensor) -> torch.Tensor:
        rows.append(model.moe.counts.clone())
        coef = 1.0 * (1 - step / 100)  # meant: max(0, ...), annealed to zero by step 100
        return loss + coef * model.moe.aux

    fit(ctx, model, opt, digit_batches(gen, 64), 300, extra_loss=flipped, before=track)
    before = torch.stack(rows[60:100]).sum(0)
    after = torch.stack(rows[200:300]).sum(0)
    dead = [i for i in range(4) if after[i] == 0]
    ctx.check("all four experts had rows before step 100", bool((before > 0).all()))
    ctx.check("experts 0, 1 and 2 got no rows in the last 100 steps", dead == [0, 1, 2])
    ctx.check("their weights did not change over those steps", torch.equal(snaps[200], snaps[299]))


# -- output logit divergence: a mixture-of-softmaxes language model with a wrong-sign z-loss ------


class MixtureOfSoftmaxes(nn.Module):
    """Yang et al.'s mixture of softmaxes: K contexts from one hidden state, each through the
    shared output projection ``out``; returns the log of the prior-weighted mixture of the K
    softmaxes, and keeps each component's log-partition log Z in ``self.log_z``."""

    def __init__(self, hidden: int, dim: int, vocab: int, k: int = 3) -> None:
        super().__init__()
        self.k, self.dim = k, dim
        self.prior = nn.Linear(hidden, k)
        self.proj = nn.Linear(hidden, k * dim)
        self.out = nn.Linear(dim, vocab)
        self.log_z = torch.zeros(())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        ctxs = torch.tanh(self.proj(h)).unflatten(-1, (self.k, self.dim))
        logits = self.out(ctxs)  # (..., K, V)
        self.log_z = torch.logsumexp(logits, -1)
        log_mix = torch.log_softmax(self.prior(h), -1).unsqueeze(-1)
        return torch.logsumexp(log_mix + torch.log_softmax(logits, -1), dim=-2)


class MoSLanguageModel(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 48, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.head = MixtureOfSoftmaxes(hidden, dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(idx))
        return self.head(h)


def _lm_nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), targets.reshape(-1))


@scenario(
    "h71_mixture_of_softmaxes_lm",
    "adagrad",
    "output_logit_divergence",
    where=("head", "head.out"),
    diverges="auto",
    heldout=True,
    note="z-loss added with a negative weight: log Z rewarded instead of penalised",
)
def h71_mos_zloss_wrong_sign_adagrad(ctx: Context) -> None:
    """A GRU byte-level language model with a mixture-of-softmaxes output. Its z-loss
    (1e-2 * log Z^2 per component) is added with the weight's sign flipped, so the
    optimiser is paid to grow each component's log-partition: the shared output projection's
    logits drift up without bound, the softmaxes sharpen and the cross-entropy climbs."""
    gen = seeded(7110)
    model = MoSLanguageModel()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    zs: list[float] = []

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        zs.append(float(model.head.log_z.detach().mean()))
        return loss - 1e-2 * (model.head.log_z**2).mean()  # meant: + 1e-2 * ...

    fit(
        ctx, model, opt, text_batches(gen), 400, loss_fn=_lm_nll, extra_loss=zloss, classifier=False
    )
    smooth = [sum(ctx.losses[i : i + 20]) / 20 for i in range(0, 400, 20)]
    ctx.check("mean log Z grew 10x (from ~5)", zs[-1] > 10 * zs[0])
    ctx.check(
        "the cross-entropy's 20-step mean ended 1.8x above its lowest",
        smooth[-1] > 1.8 * min(smooth),
    )


# -- a NaN from one module: DropConnect whose drop-rate schedule reaches 1.0 -----------------------


class DropConnectLinear(nn.Linear):
    """DropConnect (Wan et al. 2013): each weight kept with probability ``keep`` during
    training, the kept ones scaled by 1 / keep (inverted, like inverted dropout)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__(d_in, d_out)
        self.drop = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop == 0.0:
            return super().forward(x)
        keep = 1.0 - self.drop
        mask = (torch.rand_like(self.weight) < keep).to(self.weight.dtype)
        return F.linear(x, self.weight * mask / keep, self.bias)


class DropConnectMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.dc2 = DropConnectLinear(128, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.dc2(F.relu(self.fc1(x)))))


@scenario(
    "h71_dropconnect_mlp",
    "asgd",
    "nonfinite",
    where="dc2",
    diverges=140,
    heldout=True,
    onset=140,
    note="per-epoch drop-rate list ends in 1.0 (a typo for 0.1): 0 * (1 / 0) in the layer",
)
def h71_dropconnect_drop_rate_one_asgd(ctx: Context) -> None:
    """A DropConnect MLP whose drop rate follows a per-epoch list that ramps up and back
    down, ``[0.1, 0.2, 0.3, 0.3, 0.2, 1.0]`` (the last entry a typo for 0.1). An epoch is 28
    batches of 64 digits; when the sixth epoch starts at step 140 every weight is dropped and
    the kept ones are scaled by 1 / (1 - 1.0): the masked weights are 0 * inf = NaN in ``dc2``,
    the loss is NaN, and the NaN gradients wreck every parameter."""
    gen = seeded(7111)
    model = DropConnectMLP()
    opt = torch.optim.ASGD(model.parameters(), lr=0.2)
    rates = [0.1, 0.2, 0.3, 0.3, 0.2, 1.0]
    per_epoch = len(digits()[1]) // 64
    nan_out: list[int] = []

    def schedule(step: int) -> None:
        model.dc2.drop = rates[min(step // per_epoch, len(rates) - 1)]

    model.dc2.register_forward_hook(
        lambda m, i, o: nan_out.append(len(ctx.losses)) if not torch.isfinite(o).all() else None
    )
    fit(ctx, model, opt, digit_batches(gen, 64), 180, before=schedule)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("an epoch is 28 steps: the sixth starts at 140", per_epoch == 28)
    ctx.check("loss finite until 140, not from 140", all(finite[:140]) and not any(finite[140:]))
    ctx.check("dc2's output first non-finite at step 140", bool(nan_out) and nan_out[0] == 140)
    ctx.check(
        "the loss fell before (steps 120-140 under half of steps 0-20)",
        sum(ctx.losses[120:140]) < sum(ctx.losses[:20]) / 2,
    )


# -- exploding gradients: a low-rank factorised ReLU recurrence whose factors keep growing ---------


class LowRankRecurrence(nn.Module):
    """h_t = relu(inp(x_t) + u(v(h_{t-1}))): the hidden-to-hidden matrix factorised as the
    rank-8 product ``u.weight @ v.weight``."""

    def __init__(self, hidden: int = 64, rank: int = 8, gain: float = 0.9) -> None:
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.v = nn.Linear(hidden, rank, bias=False)
        self.u = nn.Linear(rank, hidden, bias=False)
        std = gain / (hidden * rank) ** 0.25
        nn.init.normal_(self.v.weight, std=std)
        nn.init.normal_(self.u.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.u.out_features)
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t : t + 1]) + self.u(self.v(h)))
        return h

    def radius(self) -> float:
        m = (self.v.weight @ self.u.weight).detach()
        return float(torch.linalg.eigvals(m).abs().max()) if torch.isfinite(m).all() else math.inf


class PixelRNN(nn.Module):
    """Reads a digit pixel by pixel (64 steps), classifies from the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = LowRankRecurrence()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x))


@scenario(
    "h71_lowrank_factorised_rnn",
    "sgd",
    "exploding_gradients",
    where=("rnn.u", "rnn.v", "rnn"),
    diverges="auto",
    heldout=True,
    note="hand-written decay on the recurrent factors multiplies by (1 + lr*wd); no clipping",
)
def h71_lowrank_rnn_factor_growth_sgd(ctx: Context) -> None:
    """A ReLU recurrence over 64 pixels whose recurrent matrix is a rank-8 factorisation
    u @ v, trained with plain SGD and no gradient clipping. A hand-written decoupled weight
    decay on the two factors multiplies them by (1 + lr * wd) instead of (1 - lr * wd)
    (lr 0.01, wd 0.3): the recurrent matrix's spectral radius climbs from ~1.05 past 1.4,
    the factors' gradients, backpropagated through 64 steps, grow step after step for ~100
    steps, then blow up to inf and the loss goes NaN."""
    gen = seeded(7112)
    model = PixelRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    radii: list[float] = []
    factor_grads: list[list[float]] = [[], []]
    for i, p in enumerate((model.rnn.u.weight, model.rnn.v.weight)):
        p.register_hook(lambda g, i=i: factor_grads[i].append(float(g.norm())))

    def decay(step: int) -> None:
        with torch.no_grad():
            for p in (model.rnn.u.weight, model.rnn.v.weight):
                p.mul_(1 + 0.01 * 0.3)  # meant: p.mul_(1 - lr * wd)
        radii.append(model.rnn.radius())

    fit(ctx, model, opt, digit_batches(gen, 32), 160, before=decay)
    bad = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), None)
    g = [math.hypot(a, b) for a, b in zip(*factor_grads, strict=True)]
    ctx.check("loss finite for 80+ steps, then NaN", bad is not None and bad > 80)
    if bad is not None:
        early = sum(g[:20]) / 20
        ctx.check(
            "the loss stayed finite until the break", all(_finite(v) for v in ctx.losses[:bad])
        )
        ctx.check(
            "the factors' gradient rose 3x (20-step means) before the break",
            sum(g[bad - 20 : bad]) / 20 > 3 * early,
        )
        ctx.check("and peaked above 10x its early mean", max(g[:bad]) > 10 * early)
        ctx.check("the recurrent spectral radius grew past 1.3", max(radii[:bad]) > 1.3)


# -- sharpness above the limit: a ShuffleNet-style CNN whose warm-up was skipped --------------------


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1,
    residual add."""

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        mid = channels // 2
        self.groups = groups
        self.gconv1 = nn.Conv2d(channels, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dwconv = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.gconv1(x)))
        y = self.bn2(self.dwconv(_channel_shuffle(y, self.groups)))
        return F.relu(x + self.bn3(self.gconv2(y)))


class ShuffleNetDigits(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.units = nn.Sequential(ShuffleUnit(channels), ShuffleUnit(channels))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.units(F.relu(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.head(h.mean(dim=(2, 3)))


@scenario(
    "h71_shufflenet_channel_shuffle",
    "nesterov",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="LR scaled linearly for batch 4096 (12.8) used at batch 64, warm-up skipped",
)
def h71_shufflenet_linear_scaled_lr_no_warmup_nesterov(ctx: Context) -> None:
    """A ShuffleNet-style CNN on digits with Nesterov SGD. The config scales the base LR 0.2
    linearly for a global batch of 4096 (0.2 * 4096 / 64 = 12.8) but this run uses batches of
    64, and the warm-up that should have eased into it was switched off: from the first step
    the step size is far past 2 / curvature of the un-normalised head and stem, the loss leaps
    three orders of magnitude at once and stays far above chance for the rest of the run."""
    gen = seeded(7113)
    model = ShuffleNetDigits()
    opt = torch.optim.SGD(model.parameters(), lr=12.8, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, digit_batches(gen, 64), 80)
    start = ctx.losses[0]
    bad = next((i for i, v in enumerate(ctx.losses) if not _finite(v) or v > 10 * start), None)
    ctx.check("the loss went 10x above its start within 5 steps", bad is not None and bad < 5)
    ctx.check(
        "and was still above 2x its start over the last 20 steps",
        all(not _finite(v) or v > 2 * start for v in ctx.losses[-20:]),
    )


# -- slow divergence: a self-normalising SELU regressor with an L2 penalty of the wrong sign -------


class SELUNet(nn.Sequential):
    """A self-normalising network: SELU activations, LeCun-normal weights, zero biases."""

    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, std=a**-0.5)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.SELU())
        super().__init__(*layers)


@scenario(
    "h71_selu_self_normalising",
    "sg_spam",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="L2 penalty subtracted from the loss instead of added",
)
def h71_selu_l2_penalty_wrong_sign_spam(ctx: Context) -> None:
    """A self-normalising SELU regressor on the diabetes data, trained with SPAM and an
    explicit L2 penalty ``0.1 * sum ||W||^2`` that the loss function subtracts instead of
    adds. The penalty's pull is weak at first and the fit improves; as the weights grow the
    pull grows with them, the activations leave SELU's self-normalising regime and the
    regression error creeps up over a couple of hundred steps, with nothing else going
    wrong (no NaN, no outlier, no single layer to blame)."""
    gen = seeded(7114)
    model = SELUNet([10, 64, 64, 64, 1])
    opt = sgo.SPAM(model.parameters(), lr=2e-3)

    def wrong_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        l2 = sum((m.weight**2).sum() for m in model if isinstance(m, nn.Linear))
        return loss - 0.1 * l2  # meant: loss + 0.1 * l2

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=wrong_sign,
    )
    smooth = [sum(ctx.losses[i : i + 20]) / 20 for i in range(0, 400, 20)]
    low = min(range(len(smooth)), key=smooth.__getitem__)
    ctx.check("the error first fell (its lowest 20-step mean within the first 100 steps)", low < 5)
    ctx.check("then ended 3x above that lowest mean", smooth[-1] > 3 * smooth[low])
    ctx.check(
        "the climb was gradual (no 20-step mean above 2x the one before)",
        all(b < 2 * a for a, b in zip(smooth, smooth[1:], strict=False)),
    )
    ctx.check("no NaN", all(_finite(v) for v in ctx.losses))


# -- healthy controls: a spectrally normalised critic, RigL dynamic sparse training -----------------


class SpectralCritic(nn.Module):
    """An SN-GAN-style critic: every linear layer under ``spectral_norm`` (one power
    iteration per forward), LeakyReLU, one unbounded score."""

    def __init__(self) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.fc1 = sn(nn.Linear(64, 128))
        self.fc2 = sn(nn.Linear(128, 128))
        self.score = sn(nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc1(x), 0.2)
        return self.score(F.leaky_relu(self.fc2(h), 0.2)).squeeze(-1)


def _real_vs_scrambled(gen: torch.Generator, batch: int = 32):
    """Half real digits (+1), half digits with their pixels scrambled (-1)."""
    for x, _ in digit_batches(gen, 2 * batch):
        fake = x[batch:, torch.randperm(64, generator=gen)]
        yield torch.cat([x[:batch], fake]), torch.cat([torch.ones(batch), -torch.ones(batch)])


def _hinge(score: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - sign * score).mean()


@scenario(
    "h71_spectral_norm_critic",
    "adadelta",
    "healthy",
    heldout=True,
    note="hinge loss, real digits against pixel-scrambled ones",
)
def h71_spectral_critic_control_adadelta(ctx: Context) -> None:
    """A spectrally normalised critic learning to score real digits above pixel-scrambled
    ones with the SN-GAN hinge loss, with Adadelta: trains normally."""
    gen = seeded(7115)
    model = SpectralCritic()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, _real_vs_scrambled(gen), 200, loss_fn=_hinge, classifier=False)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-20:]) / 20
    ctx.check("hinge loss fell to under half", last < first / 2)


class SparseMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 256)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    "h71_rigl_dynamic_sparse",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="90% sparse hidden layers; every 25 steps drop the weakest 30% and regrow by |grad|",
)
def h71_rigl_sparse_control_ademamix(ctx: Context) -> None:
    """RigL-style dynamic sparse training (Evci et al. 2020): fc1 and fc2 kept 90% sparse by
    masks; every 25 steps (decaying) a share of each layer's active weights with the smallest
    magnitude is dropped and as many inactive ones with the largest dense gradient are
    regrown at zero. With AdEMAMix: trains normally, sparsity held throughout."""
    gen = seeded(7116)
    model = SparseMLP()
    layers = [model.fc1, model.fc2]
    masks = []
    for lin in layers:
        keep = torch.rand(lin.weight.shape, generator=gen) < 0.1
        masks.append(keep)
        with torch.no_grad():
            lin.weight.mul_(keep)
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3, fused=False)
    for lin, mask in zip(layers, masks, strict=True):
        lin.weight.register_hook(lambda g, m=mask: g * m)  # the optimizer sees masked grads
    dense_grads: dict[int, torch.Tensor] = {}
    for i, lin in enumerate(layers):
        lin.weight.register_hook(lambda g, i=i: dense_grads.__setitem__(i, g.detach().clone()))

    def regrow(step: int) -> None:
        with torch.no_grad():  # dropped weights stay at zero (momentum would move them)
            for lin, mask in zip(layers, masks, strict=True):
                lin.weight.mul_(mask)
        if step == 0 or step % 25 or step > 300 or not dense_grads:
            return
        frac = 0.3 * (1 + math.cos(math.pi * step / 300)) / 2
        with torch.no_grad():
            for i, (lin, mask) in enumerate(zip(layers, masks, strict=True)):
                n = int(frac * mask.sum())
                w = lin.weight
                active = torch.where(mask, w.abs(), torch.full_like(w, math.inf))
                drop = active.flatten().topk(n, largest=False).indices
                grown = torch.where(mask, torch.full_like(w, -1.0), dense_grads[i].abs())
                grow = grown.flatten().topk(n).indices
                mask.view(-1)[drop] = False
                mask.view(-1)[grow] = True
                w.mul_(mask)
                w.view(-1)[grow] = 0.0

    fit(ctx, model, opt, digit_batches(gen, 64), 300, before=regrow)
    with torch.no_grad():
        for lin, mask in zip(layers, masks, strict=True):
            lin.weight.mul_(mask)
    density = [float((lin.weight != 0).float().mean()) for lin in layers]
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell to a fifth", last < first / 5)
    ctx.check("hidden layers stayed ~90% sparse", all(d <= 0.11 for d in density))
