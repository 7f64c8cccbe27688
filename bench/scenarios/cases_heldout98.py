"""Held-out scenarios, set 98 (``h98_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing and records the losses).

Families: Hugging Face Fuyu, PaliGemma (SigLIP tower + Gemma), GIT and BLIP captioners from tiny
configs on generated images of coloured squares with generated captions; hand-written: residual
flow with spectral-normalised blocks (exact 2-D log-determinant) on generated 2-D points, sparse
variational Gaussian process with inducing points (whitened) on diabetes, multi-label tag
classifier (BCE) on generated tags, two-level hierarchical-softmax GRU language model,
Routing-Transformer-style k-means attention decoder, Charformer-style gradient-based subword
tokeniser (GBST) classifier on generated character strings, option-critic on a generated
gridworld, Poisson-regression count net (log link; fp16 autocast with a GradScaler).

Optimizers: Adam, AdamW, SGD, SGD with momentum, SGD with Nesterov momentum, RMSprop, Adagrad,
NAdam, RAdam, Adamax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, scenario, seeded, text_batches

# -- generated image-caption data ------------------------------------------------------------------

BOS, EOS, PAD = 1, 2, 0
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


def caption_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Endless (images in [0, 1], captions): a coloured square of one of four colours, in one of
    four quadrants, small or large, on a noisy grey ground; the caption names the three:
    [BOS, 10 + colour, 20 + quadrant, 30 + size, EOS]."""
    half = size // 2
    while True:
        colour = torch.randint(0, 4, (batch,), generator=gen)
        quad = torch.randint(0, 4, (batch,), generator=gen)
        big = torch.randint(0, 2, (batch,), generator=gen)
        img = 0.4 + 0.05 * torch.randn(batch, 3, size, size, generator=gen)
        for i in range(batch):
            side = half - 1 if big[i] else half // 2
            top = (int(quad[i]) // 2) * half + 1
            left = (int(quad[i]) % 2) * half + 1
            img[i, :, top : top + side - 1, left : left + side - 1] = COLOURS[colour[i]][
                :, None, None
            ]
        caps = torch.stack(
            [
                torch.full((batch,), BOS),
                10 + colour,
                20 + quad,
                30 + big,
                torch.full((batch,), EOS),
            ],
            1,
        )
        yield img.clamp(0, 1), caps


def all_finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def early_late(losses: list[float], n: int = 20) -> tuple[float, float]:
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def grad_norm_of(module: nn.Module) -> float:
    grads = [p.grad.float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


# -- Hugging Face image-text models from tiny configs ----------------------------------------------

IMAGE_TOKEN = 60


def hf_fuyu():
    from transformers import FuyuConfig, FuyuForCausalLM

    text = {
        "model_type": "persimmon",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    }
    config = FuyuConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        patch_size=4,
        num_channels=3,
        image_token_id=IMAGE_TOKEN,
        pad_token_id=PAD,
        text_config=text,
    )
    return FuyuForCausalLM(config)


def fuyu_inputs(img: torch.Tensor, caps: torch.Tensor):
    """Fuyu reads raw 4x4 patches (no vision encoder): 16 image tokens, then the caption."""
    b = img.shape[0]
    patches = img.unfold(2, 4, 4).unfold(3, 4, 4)  # b, 3, 4, 4, 4, 4
    patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(b, 16, 48)
    ids = torch.cat([torch.full((b, 16), IMAGE_TOKEN), caps], 1)
    labels = ids.clone()
    labels[:, :16] = -100
    return {"input_ids": ids, "pixel_values": patches * 2 - 1, "labels": labels}


def hf_paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    text = {
        "model_type": "gemma",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
    }
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        vocab_size=64,
        projection_dim=32,
        hidden_size=32,
        pad_token_id=PAD,
    )
    return PaliGemmaForConditionalGeneration(config)


def paligemma_inputs(img: torch.Tensor, caps: torch.Tensor):
    b = img.shape[0]
    ids = torch.cat([torch.full((b, 16), IMAGE_TOKEN), caps], 1)
    labels = ids.clone()
    labels[:, :17] = -100  # the image and the BOS prefix are not predicted
    kinds = torch.cat([torch.zeros(b, 17), torch.ones(b, caps.shape[1] - 1)], 1).long()
    return {
        "input_ids": ids,
        "pixel_values": img * 2 - 1,
        "labels": labels,
        "token_type_ids": kinds,
    }


def hf_git():
    from transformers import GitConfig, GitForCausalLM

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    config = GitConfig(
        vision_config=vision,
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return GitForCausalLM(config)


def hf_blip():
    from transformers import BlipConfig, BlipForConditionalGeneration

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    text = {
        "vocab_size": 64,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "encoder_hidden_size": 32,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "sep_token_id": EOS,
    }
    config = BlipConfig(vision_config=vision, text_config=text, projection_dim=32)
    return BlipForConditionalGeneration(config)


NORM_MEAN = torch.tensor([0.48, 0.46, 0.41])[:, None, None]
NORM_STD = torch.tensor([0.27, 0.26, 0.28])[:, None, None]


def caption_loop(ctx: Context, model, opt, batches, steps, inputs, alter=None, before=None):
    """A captioning loop: ``inputs(img, caps)`` makes the model's keyword arguments."""
    ctx.attach(model, opt)
    for step in range(steps):
        img, caps = next(batches)
        if alter is not None:
            img, caps = alter(step, img, caps)
        if before is not None:
            before(step)
        loss = model(**inputs(img, caps)).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# 1. Fuyu: one image decoded with a NaN pixel (a corrupt file) poisons the patch projection.
@scenario(
    "h98_hf_fuyu_captions",
    "adam",
    "nonfinite",
    where="model.vision_embed_tokens",
    diverges=140,
    heldout=True,
    onset=140,
    note="a NaN pixel in one image at step 140 enters through Fuyu's linear patch embedding",
)
def h98_fuyu_nan_pixel(ctx: Context) -> None:
    gen = seeded(9801)
    model = hf_fuyu()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, img, caps):
        if step == 140:
            img = img.clone()
            img[3, 1, 5, 7] = float("nan")
        return img, caps

    def hook(_m, _inp, out):
        seen.setdefault("first_nan", None)
        if seen["first_nan"] is None and not torch.isfinite(out).all():
            seen["first_nan"] = len(ctx.losses)

    model.model.vision_embed_tokens.register_forward_hook(hook)
    caption_loop(ctx, model, opt, caption_batches(gen), 180, fuyu_inputs, alter=alter)
    first_bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check(
        "the loss was finite and falling before the bad image",
        all_finite(ctx.losses[:140]) and ctx.losses[139] < 0.7 * ctx.losses[0],
    )
    ctx.check("the patch embedding went non-finite at step 140", seen.get("first_nan") == 140)
    ctx.check("the loss went non-finite at step 140", first_bad == 140)


# 2. Fuyu control.
@scenario("h98_hf_fuyu_captions", "adam", "healthy", heldout=True)
def h98_fuyu_healthy(ctx: Context) -> None:
    gen = seeded(9802)
    model = hf_fuyu()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    caption_loop(ctx, model, opt, caption_batches(gen), 200, fuyu_inputs)
    early, late = early_late(ctx.losses)
    ctx.check("the loss stayed finite", all_finite(ctx.losses))
    ctx.check("the loss fell by half", late < 0.5 * early)


# 3. PaliGemma: one shard's images reach the model unnormalised (0..255 instead of [-1, 1]).
@scenario(
    "h98_hf_paligemma_captions",
    "adamw",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=120,
    note="one batch of raw 0..255 pixels at step 120 (the normalisation skipped for one shard)",
)
def h98_paligemma_raw_pixels(ctx: Context) -> None:
    gen = seeded(9803)
    model = hf_paligemma()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    seen = {}

    def alter(step, img, caps):
        if step == 120:
            return img * 127.5 + 0.5, caps  # after the model's (x * 2 - 1): raw 0..255 pixels
        return img, caps

    def before(step):
        if step == 120:
            seen["grad_before"] = sum(ctx.grad_norms[100:120]) / 20

    caption_loop(ctx, model, opt, caption_batches(gen), 220, paligemma_inputs, alter, before)
    base = sum(ctx.losses[100:120]) / 20
    ctx.check("the loss was falling before the outlier", base < 0.6 * ctx.losses[0])
    ctx.check("the outlier batch's loss jumped 3x", ctx.losses[120] > 3 * base)
    ctx.check("its gradient norm jumped 10x", ctx.grad_norms[120] > 10 * seen["grad_before"])
    ctx.check("the loss stayed finite", all_finite(ctx.losses))


# 5. GIT control: the same warm-up to a sane peak.
@scenario("h98_hf_git_captions", "sgd_mom", "healthy", heldout=True)
def h98_git_healthy(ctx: Context) -> None:
    gen = seeded(9805)
    model = hf_git()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.1 * min(1.0, (step + 1) / 50)

    def inputs(img, caps):
        return {"input_ids": caps, "pixel_values": (img - NORM_MEAN) / NORM_STD, "labels": caps}

    caption_loop(ctx, model, opt, caption_batches(gen), 260, inputs, before=before)
    early, late = early_late(ctx.losses)
    ctx.check("the loss stayed finite", all_finite(ctx.losses))
    ctx.check("the loss fell by half", late < 0.5 * early)


# 6. BLIP: one batch captioned with another tokenizer's ids (a stale shard): the loss spikes.
@scenario(
    "h98_hf_blip_captions",
    "rmsprop",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="at step 150 one batch's captions are random ids of the vocabulary (images normal)",
)
def h98_blip_stale_caption_shard(ctx: Context) -> None:
    gen = seeded(9806)
    model = hf_blip()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    noise = torch.Generator().manual_seed(98060)

    def alter(step, img, caps):
        if step == 150:
            caps = caps.clone()
            caps[:, 1:-1] = torch.randint(3, 64, caps[:, 1:-1].shape, generator=noise)
        return img, caps

    def inputs(img, caps):
        return {"input_ids": caps, "pixel_values": (img - NORM_MEAN) / NORM_STD, "labels": caps}

    caption_loop(ctx, model, opt, caption_batches(gen), 220, inputs, alter=alter)
    base = sum(ctx.losses[130:150]) / 20
    after = sum(ctx.losses[-20:]) / 20
    ctx.check("the loss was low before the shard", base < 0.5 * ctx.losses[0])
    ctx.check("the loss spiked 4x at step 150", ctx.losses[150] > 4 * base)
    ctx.check("and came back within 50 steps", after < 1.5 * base)


# -- residual flow with spectral-normalised blocks -------------------------------------------------


def ring_points(gen: torch.Generator, batch: int = 128, scale: float = 1.0):
    """Endless batches of a noisy ring (radius 1, width 0.1) times ``scale``."""
    while True:
        angle = 2 * math.pi * torch.rand(batch, generator=gen)
        radius = 1.0 + 0.1 * torch.randn(batch, generator=gen)
        yield scale * torch.stack([radius * angle.cos(), radius * angle.sin()], 1), None


class ResidualBlock(nn.Module):
    """x + g(x), g an ELU MLP whose linear maps are spectral-normalised and scaled by ``coeff``
    (Lipschitz below 1 keeps the block invertible)."""

    def __init__(self, width: int = 32, coeff: float = 0.9, normalised: bool = True) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if normalised else (lambda m: m)
        self.fc1 = sn(nn.Linear(2, width))
        self.fc2 = sn(nn.Linear(width, width))
        self.fc3 = sn(nn.Linear(width, 2))
        self.coeff = coeff if normalised else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.coeff ** (1 / 3)
        return c * self.fc3(F.elu(c * self.fc2(F.elu(c * self.fc1(x)))))


class ResidualFlow(nn.Module):
    def __init__(self, blocks: int = 4, normalised: tuple[bool, ...] | None = None) -> None:
        super().__init__()
        normalised = normalised or (True,) * blocks
        self.blocks = nn.ModuleList(ResidualBlock(normalised=n) for n in normalised)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) with the exact log-determinant of each 2x2 Jacobian I + dg/dx."""
        logdet = torch.zeros(x.shape[0])
        for block in self.blocks:
            x = x.detach().requires_grad_(True) if not x.requires_grad else x
            g = block(x)
            rows = [torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0] for i in range(2)]
            jac = torch.stack(rows, 1) + torch.eye(2)
            logdet = logdet + torch.linalg.det(jac).abs().log()
            x = x + g
        logp = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
        return -(logp + logdet).mean()


# 7. Residual flow: the spectral normalisation of one block left off (a refactor dropped it).
@scenario(
    "h98_residual_flow_sn",
    "sgd_mom",
    "exploding_gradients",
    where="blocks.2",
    diverges="auto",
    heldout=True,
    note="blocks.2 built without spectral normalisation: its Lipschitz bound passes 1, the block "
    "folds and its log-determinant's gradient runs away over a few steps until the loss is inf",
)
def h98_resflow_block_without_sn(ctx: Context) -> None:
    gen = seeded(9807)
    model = ResidualFlow(4, (True, True, False, True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.attach(model, opt)
    batches = ring_points(gen)
    per_block: list[list[float]] = []
    for _ in range(120):
        x, _ = next(batches)
        loss = model.nll(x)
        loss.backward()
        per_block.append([grad_norm_of(b) for b in model.blocks])
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first_bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    calm = sorted(g[2] for g in per_block[:40])[20]
    ctx.check("the loss went non-finite", first_bad is not None and first_bad > 40)
    if first_bad is not None:
        ramp = [g[2] for g in per_block[first_bad - 6 : first_bad - 1]]
        ctx.check(
            "blocks.2's gradient grew 100x over the steps before, step on step",
            ramp[-1] > 100 * calm and sum(b > a for a, b in zip(ramp, ramp[1:], strict=False)) >= 3,
        )
        ctx.check(
            "blocks.2 carried the largest gradient as it ran away",
            per_block[first_bad - 2][2] == max(per_block[first_bad - 2]),
        )


# 8. Residual flow control: every block spectral-normalised, Adam.
@scenario("h98_residual_flow_sn", "adam", "healthy", heldout=True)
def h98_resflow_healthy(ctx: Context) -> None:
    gen = seeded(9808)
    model = ResidualFlow(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = ring_points(gen, scale=0.2)
    for _ in range(200):
        x, _ = next(batches)
        loss = model.nll(x)
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _, late = early_late(ctx.losses)
    ctx.check("the loss stayed finite", all_finite(ctx.losses))
    ctx.check("the negative log-likelihood fell by 2 nats", late < ctx.losses[0] - 2.0)


# -- sparse variational Gaussian process (whitened, inducing points) on diabetes --------------------


def diabetes_standardised() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def row_batches(gen: torch.Generator, x: torch.Tensor, y: torch.Tensor, batch: int = 64):
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


class RBFKernel(nn.Module):
    def __init__(self, dims: int) -> None:
        super().__init__()
        self.log_lengthscale = nn.Parameter(torch.full((dims,), math.log(2.0)))
        self.log_variance = nn.Parameter(torch.zeros(()))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ls = self.log_lengthscale.exp()
        return self.log_variance.exp() * torch.exp(-0.5 * torch.cdist(a / ls, b / ls).pow(2))


class Inducing(nn.Module):
    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.z = nn.Parameter(z.clone())


class WhitenedVariational(nn.Module):
    """q(v) = N(mean, L L^T) over whitened inducing outputs v (u = chol(Kzz) v)."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(m))
        self.chol_raw = nn.Parameter(torch.eye(m) * 0.5)

    def chol(self) -> torch.Tensor:
        low = torch.tril(self.chol_raw, -1)
        return low + torch.diag(F.softplus(torch.diagonal(self.chol_raw)) + 1e-4)

    def kl(self) -> torch.Tensor:
        lo = self.chol()
        m = self.mean.shape[0]
        return 0.5 * ((lo**2).sum() + (self.mean**2).sum() - m - 2 * torch.diagonal(lo).log().sum())


class SVGP(nn.Module):
    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.kernel = RBFKernel(z.shape[1])
        self.inducing = Inducing(z)
        self.variational = WhitenedVariational(z.shape[0])
        self.likelihood = nn.Module()
        self.likelihood.log_noise = nn.Parameter(torch.tensor(math.log(0.5)))

    def neg_elbo(self, x: torch.Tensor, y: torch.Tensor, n: int, kl_weight: float = 1.0):
        """The negative ELBO per data point, the batch's expected log-likelihood scaled to n."""
        z = self.inducing.z
        kzz = self.kernel(z, z) + 1e-4 * torch.eye(z.shape[0])
        lk = torch.linalg.cholesky(kzz)
        a = torch.linalg.solve_triangular(lk, self.kernel(z, x), upper=False).T  # b, m
        mean = a @ self.variational.mean
        var = (
            self.kernel.log_variance.exp()
            - (a**2).sum(1)
            + ((a @ self.variational.chol()) ** 2).sum(1)
        )
        noise = (2 * self.likelihood.log_noise).exp()
        ell = -0.5 * (math.log(2 * math.pi) + noise.log() + ((y - mean) ** 2 + var) / noise)
        return -(ell.mean() * n - kl_weight * self.variational.kl()) / n


# 9. SVGP: one step's KL weight read as 1e5 (a warm-up schedule dividing by a zero length, clamped)
#    gives the variational parameters one giant gradient; Adam's second moment for them is poisoned.
@scenario(
    "h98_svgp_diabetes",
    "adam",
    "adam_second_moment_poisoned",
    where="variational",
    diverges=None,
    heldout=True,
    onset=80,
    note="step 80's KL weight is 1e5: one giant gradient on the variational mean and Cholesky "
    "factor; their Adam second moment stays huge and their updates all but stop",
)
def h98_svgp_poisoned_second_moment(ctx: Context) -> None:
    gen = seeded(9809)
    x, y = diabetes_standardised()
    model = SVGP(x[torch.randperm(len(y), generator=gen)[:24]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = row_batches(gen, x, y)
    moved: list[float] = []
    v_max: list[float] = []
    for step in range(260):
        xb, yb = next(batches)
        loss = model.neg_elbo(xb, yb, len(y))
        total = loss + (1e5 - 1.0) * model.variational.kl() / len(y) if step == 80 else loss
        total.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        before = model.variational.mean.detach().clone()
        opt.step()
        moved.append(float((model.variational.mean.detach() - before).norm()))
        v_max.append(float(opt.state[model.variational.mean]["exp_avg_sq"].max()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell before step 80", ctx.losses[79] < 0.8 * ctx.losses[0])
    ctx.check("the second moment jumped 1e4x at step 80", v_max[80] > 1e4 * v_max[79])
    ctx.check("and stayed 1e3x above it 150 steps on", v_max[230] > 1e3 * v_max[79])
    calm_before = sum(moved[60:80]) / 20
    ctx.check(
        "the variational mean's updates shrank 10x after",
        sum(moved[120:160]) / 40 < 0.1 * calm_before,
    )


# -- hierarchical-softmax language model -----------------------------------------------------------


class HierSoftmaxLM(nn.Module):
    """Byte-level GRU LM whose 128-way softmax is a two-level tree: 16 clusters of 8 tokens;
    p(token) = p(cluster | h) p(token | cluster, h)."""

    def __init__(self, vocab: int = 128, clusters: int = 16, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.clusters, self.leaves = clusters, vocab // clusters
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.node_head = nn.Linear(hidden, clusters)
        self.leaf_head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        h, _ = self.rnn(self.embed(idx))
        node = self.node_head(h)  # b, t, clusters
        leaf = self.leaf_head(h).reshape(*h.shape[:2], self.clusters, self.leaves)
        cluster = targets // self.leaves
        leaf = leaf.gather(2, cluster[..., None, None].expand(-1, -1, 1, self.leaves)).squeeze(2)
        loss = F.cross_entropy(node.reshape(-1, self.clusters), cluster.reshape(-1))
        loss = loss + F.cross_entropy(
            leaf.reshape(-1, self.leaves), (targets % self.leaves).reshape(-1)
        )
        return loss, node, leaf


# 10. Hierarchical softmax: the z-loss switched on at step 60 with its sign flipped rewards large
#     log-partition values; the tree's output logits drift off until the loss climbs.
@scenario(
    "h98_hier_softmax_lm",
    "nadam",
    "output_logit_divergence",
    where=("node_head", "leaf_head"),
    diverges="auto",
    heldout=True,
    onset=60,
    note="from step 60 the loss backpropagated is loss - 1e-2 * logsumexp^2 (z-loss sign flipped)",
)
def h98_hsoftmax_zloss_sign(ctx: Context) -> None:
    gen = seeded(9810)
    model = HierSoftmaxLM()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    scale: list[float] = []
    for step in range(320):
        x, y = next(batches)
        loss, node, leaf = model(x, y)
        total = loss
        if step >= 60:
            z = node.logsumexp(-1).pow(2).mean() + leaf.logsumexp(-1).pow(2).mean()
            total = loss - 1e-2 * z
        total.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        scale.append(float(node.detach().abs().mean() + leaf.detach().abs().mean()))
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("the loss fell before step 60", ctx.losses[59] < 0.8 * ctx.losses[0])
    ctx.check(
        "the output logits grew 10x after step 60",
        max(scale[-20:] + [0.0]) > 10 * scale[59] or len(finite) < len(ctx.losses),
    )
    ctx.check("the loss climbed above twice its best", max(ctx.losses[-10:]) > 2 * min(finite))


# -- Routing-Transformer-style k-means attention ---------------------------------------------------


class RoutingAttention(nn.Module):
    """Causal attention in which a query sees only the keys routed to its k-means cluster (and
    itself); the centroids follow the unit-normalised queries and keys by a moving average."""

    def __init__(self, dim: int, heads: int = 2, clusters: int = 4) -> None:
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer(
            "centroids", F.normalize(torch.randn(heads, clusters, self.hd), dim=-1)
        )
        self.max_logit = 0.0
        self.peak = 0.0  # the mean over queries of the largest attention weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, self.hd).transpose(1, 2) for z in self.qkv(x).split(d, -1)
        )
        qn, kn = F.normalize(q.detach(), dim=-1), F.normalize(k.detach(), dim=-1)
        cq = torch.einsum("bhtd,hcd->bhtc", qn, self.centroids).argmax(-1)
        ck = torch.einsum("bhtd,hcd->bhtc", kn, self.centroids).argmax(-1)
        if self.training:
            with torch.no_grad():
                both = torch.cat([qn, kn], 2)
                assign = F.one_hot(torch.cat([cq, ck], 2), self.centroids.shape[1]).float()
                sums = torch.einsum("bhtc,bhtd->hcd", assign, both)
                self.centroids.mul_(0.99).add_(0.01 * F.normalize(sums, dim=-1))
                self.centroids.copy_(F.normalize(self.centroids, dim=-1))
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        allowed = (cq[..., :, None] == ck[..., None, :]) & causal | torch.eye(t, dtype=torch.bool)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        self.max_logit = float(logits.detach().masked_fill(~allowed, 0).abs().max())
        att = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        self.peak = float(att.detach()[..., 8:, :].max(-1).values.mean())
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class RoutingBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RoutingAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RoutingDecoder(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2, context: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(RoutingBlock(dim) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# 11. Routing transformer: the attention projections' learning-rate multiplier is 100 (meant 1%);
#     the query-key logits grow until attention is one-hot and the loss stalls.
@scenario(
    "h98_routing_kmeans_attention",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="the qkv parameter group runs at 100x the base learning rate (a per-module multiplier "
    "meant as a percentage): the logits grow 100x, attention goes one-hot and the loss stalls "
    "about 0.4 nats above the same run at one learning rate",
)
def h98_routing_qkv_lr_multiplier(ctx: Context) -> None:
    gen = seeded(9811)
    model = RoutingDecoder()
    qkv = [p for n, p in model.named_parameters() if ".attn.qkv." in n]
    rest = [p for n, p in model.named_parameters() if ".attn.qkv." not in n]
    base = 2e-3
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qkv, "lr": 100 * base}], lr=base, weight_decay=0.0
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    logit: list[float] = []
    peak: list[float] = []
    for _ in range(300):
        x, y = next(batches)
        loss = F.cross_entropy(model(x).reshape(-1, 128), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        logit.append(max(b.attn.max_logit for b in model.blocks))
        peak.append(min(b.attn.peak for b in model.blocks))
    ctx.check("the attention logits grew 10x", max(logit[-30:]) > 10 * logit[5])
    ctx.check("attention went near one-hot in every layer", sum(peak[-30:]) / 30 > 0.95)


# -- Charformer-style gradient-based subword tokenisation (GBST) -----------------------------------

WORDS = torch.tensor([[16, 17, 18], [17, 18, 19], [18, 19, 16], [19, 16, 17]])


def char_batches(gen: torch.Generator, batch: int = 32, length: int = 36, vocab: int = 16):
    """Random strings of 16 characters with one of four 3-character words of 4 other characters
    (the same letters in a different order) planted at a random place; the label is which word."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = torch.randint(0, 4, (batch,), generator=gen)
        at = torch.randint(0, length - 3, (batch,), generator=gen)
        for i in range(batch):
            x[i, at[i] : at[i] + 3] = WORDS[y[i]]
        yield x, y


class GBST(nn.Module):
    """Candidate blocks of 1..4 characters (mean-pooled, upsampled back to characters), scored
    per position by a linear scorer, mixed by a softmax over block sizes, then downsampled 2x."""

    def __init__(self, dim: int, sizes: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        super().__init__()
        self.sizes = sizes
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)  # the position-aware pre-mixing
        self.scorer = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # b, t, d
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        t = x.shape[1]
        blocks = []
        for s in self.sizes:
            pooled = F.avg_pool1d(x.transpose(1, 2), s, s).transpose(1, 2)
            blocks.append(pooled.repeat_interleave(s, 1)[:, :t])
        cands = torch.stack(blocks, 2)  # b, t, sizes, d
        weights = self.scorer(cands).softmax(2)
        mixed = (weights * cands).sum(2)
        return F.avg_pool1d(mixed.transpose(1, 2), 2, 2).transpose(1, 2)


class Charformer(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gbst = GBST(dim)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 4 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)
        self.sharpen = 1.0  # a logit multiplier some recipes anneal (1.0: off)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.gbst(self.embed(x))).mean(1)) * self.sharpen


def charformer_loop(ctx: Context, model, opt, steps: int, gen: torch.Generator, sharpen=None):
    ctx.attach(model, opt)
    batches = char_batches(gen)
    collapsed: list[float] = []
    for step in range(steps):
        if sharpen is not None:
            model.sharpen = sharpen(step)
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_share(logits.detach(), y))
    return collapsed


def collapsed_share(logits: torch.Tensor, y: torch.Tensor) -> float:
    p = torch.softmax(logits.float(), -1)
    return float((p.gather(1, y[:, None]) == 1.0).float().mean())


# 12. Charformer: a logit-sharpening schedule meant for a distillation teacher is left on the
#     student's head from step 120; the logits grow 3% a step and float32 softmax rounds the
#     target of most rows to exactly 1 (their loss, and their gradient, is exactly zero).
@scenario(
    "h98_charformer_gbst",
    "radam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    onset=120,
    note="from step 120 the logits are multiplied by exp(0.03 (step - 120)): the softmax of most "
    "rows saturates to exactly 1.0 and their gradient is exactly zero",
)
def h98_charformer_sharpening_left_on(ctx: Context) -> None:
    gen = seeded(9812)
    model = Charformer()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    collapsed = charformer_loop(
        ctx, model, opt, 300, gen, sharpen=lambda step: math.exp(0.03 * max(0, step - 120))
    )
    ctx.check("over half the rows' softmax reached exactly 1.0", sum(collapsed[-20:]) / 20 > 0.5)
    ctx.check("the loss stayed finite", all_finite(ctx.losses))


# 13. Charformer control: no temperature.
@scenario("h98_charformer_gbst", "radam", "healthy", heldout=True)
def h98_charformer_healthy(ctx: Context) -> None:
    gen = seeded(9813)
    model = Charformer()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    collapsed = charformer_loop(ctx, model, opt, 300, gen)
    early, late = early_late(ctx.losses)
    ctx.check("the loss stayed finite", all_finite(ctx.losses))
    ctx.check("the loss fell by half", late < 0.5 * early)
    ctx.check("no softmax saturated", max(collapsed) < 0.1)


# -- option-critic on a generated gridworld --------------------------------------------------------

GRID, ACTIONS, OPTIONS = 6, 4, 2
MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])


class OptionCritic(nn.Module):
    """Shared trunk; Q over options, an intra-option softmax policy per option, and a sigmoid
    termination per option."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(GRID * GRID, hidden), nn.ReLU())
        self.q_head = nn.Linear(hidden, OPTIONS)
        self.policy_head = nn.Linear(hidden, OPTIONS * ACTIONS)
        self.term_head = nn.Linear(hidden, OPTIONS)

    def forward(self, s: torch.Tensor):
        h = self.trunk(F.one_hot(s[:, 0] * GRID + s[:, 1], GRID * GRID).float())
        logits = self.policy_head(h).reshape(-1, OPTIONS, ACTIONS)
        return self.q_head(h), logits, torch.sigmoid(self.term_head(h))


def option_critic_loop(
    ctx: Context,
    model,
    opt,
    steps: int,
    gen: torch.Generator,
    gamma=0.95,
    envs: int = 32,
    after_step=None,
):
    """A batch of gridworlds (start anywhere, +1 at the far corner, then restart); one-step
    option-critic updates. The loss is the critic's TD error plus the actor's terms."""
    ctx.attach(model, opt)
    goal = torch.tensor([GRID - 1, GRID - 1])
    s = torch.randint(0, GRID, (envs, 2), generator=gen)
    option = torch.randint(0, OPTIONS, (envs,), generator=gen)
    rows = torch.arange(envs)
    returns: list[float] = []
    for step in range(steps):
        q, logits, beta = model(s)
        dist = torch.distributions.Categorical(logits=logits[rows, option])
        a = dist.sample()
        s2 = (s + MOVES[a]).clamp(0, GRID - 1)
        done = (s2 == goal).all(1)
        r = done.float()
        q2, _, beta2 = model(s2)
        with torch.no_grad():
            b2 = beta2[rows, option]
            u = (1 - b2) * q2[rows, option] + b2 * q2.max(1).values
            g = r + gamma * (~done).float() * u
            adv_term = q2[rows, option] - q2.max(1).values + 0.01
        critic = (q[rows, option] - g).pow(2).mean()
        actor = (
            -(dist.log_prob(a) * (g - q[rows, option].detach())).mean()
            - 0.01 * dist.entropy().mean()
        )
        term = (beta2[rows, option] * adv_term).mean()
        loss = critic + actor + term
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step)
        returns.append(float(r.mean()))
        with torch.no_grad():
            ends = torch.rand(envs, generator=gen) < b2
            greedy = q2.argmax(1)
            explore = torch.rand(envs, generator=gen) < 0.1
            pick = torch.where(explore, torch.randint(0, OPTIONS, (envs,), generator=gen), greedy)
            option = torch.where(ends | done, pick, option)
            restart = torch.randint(0, GRID, (envs, 2), generator=gen)
            s = torch.where(done[:, None], restart, s2)
    return returns


# 14. Option-critic: resumed at step 100 with the learning rate read from a config in percent
#     (1.0 where 0.01 was meant); Adagrad's first steps then move every weight by about its size.
@scenario(
    "h98_option_critic_grid",
    "adagrad",
    "update_ratio_out_of_range",
    diverges="auto",
    heldout=True,
    onset=100,
    note="Adagrad at lr 0.01 for 100 steps, then lr 1.0: updates as large as the weights, the "
    "critic's TD error jumps by orders of magnitude and the options stop reaching the goal",
)
def h98_option_critic_lr_percent(ctx: Context) -> None:
    gen = seeded(9814)
    model = OptionCritic()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    ratios: list[float] = []
    last = [torch.cat([p.detach().flatten() for p in model.parameters()])]

    def after_step(step: int) -> None:
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        ratios.append(float((now - last[0]).norm() / last[0].norm()))
        last[0] = now
        if step == 99:
            for group in opt.param_groups:
                group["lr"] = 1.0

    returns = option_critic_loop(ctx, model, opt, 300, gen, after_step=after_step)
    calm = sum(ratios[80:100]) / 20
    ctx.check("the update-to-weight ratio jumped 30x at step 100", max(ratios[100:105]) > 30 * calm)
    ctx.check(
        "the ratio reached 0.1 (an update a tenth of the weights)", max(ratios[100:105]) > 0.1
    )
    ctx.check("the agent was learning before", sum(returns[80:100]) > 2 * sum(returns[:20]))
    ctx.check(
        "and stopped reaching the goal after", sum(returns[-100:]) < 0.25 * sum(returns[0:100])
    )


# -- multi-label tag classifier (BCE) --------------------------------------------------------------


def tag_batches(gen: torch.Generator, batch: int = 64, dims: int = 32, tags: int = 24):
    """Generated items: a feature vector from a few latent topics, and the tags those topics
    switch on (about 3 of 24 per item)."""
    proj = torch.randn(8, dims, generator=gen)
    tag_of = torch.randn(8, tags, generator=gen)
    while True:
        topics = (torch.rand(batch, 8, generator=gen) < 0.25).float()
        x = topics @ proj + 0.3 * torch.randn(batch, dims, generator=gen)
        y = ((topics @ tag_of) > 1.2).float()
        yield x, y


class TagNet(nn.Module):
    def __init__(self, dims: int = 32, hidden: int = 128, tags: int = 24) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


# 15. Multi-label tags: a warm restart of the schedule to lr 10 for three steps (the restart's
#     peak read from the wrong config) kills most units of the second layer; they never come back
#     and the net cannot fit the tags any further.
@scenario(
    "h98_multilabel_tags",
    "sgd_nesterov",
    "loss_of_plasticity",
    where=("trunk.2", "trunk.3"),
    diverges=None,
    heldout=True,
    onset=100,
    note="steps 100-102 at lr 10 (else 0.05): over half of trunk.2's ReLU units go dead for good "
    "and the loss stays stuck far above where it was heading",
)
def h98_multilabel_dead_units(ctx: Context) -> None:
    gen = seeded(9815)
    model = TagNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = tag_batches(gen)
    dead: list[float] = []
    for step in range(300):
        x, y = next(batches)
        for group in opt.param_groups:
            group["lr"] = 10.0 if 100 <= step < 103 else 0.05
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.trunk(x)))
    ctx.check("few units were dead before step 100", max(dead[80:100]) < 0.2)
    ctx.check("over 40% of trunk.2's units stayed dead to the end", min(dead[-50:]) > 0.4)
    ctx.check(
        "the loss stayed above its level before the restart",
        min(ctx.losses[-50:]) > min(ctx.losses[80:100]),
    )


# -- Poisson-regression count net (log link) -------------------------------------------------------


def count_batches(gen: torch.Generator, batch: int = 64, dims: int = 8, offset: float = 2.0):
    """Generated counts: y ~ Poisson(exp(offset + w.x + 0.5 sin(x0 x1)))."""
    w = 0.4 * torch.randn(dims, generator=gen)
    while True:
        x = torch.randn(batch, dims, generator=gen)
        rate = torch.exp(offset + x @ w + 0.5 * torch.sin(x[:, 0] * x[:, 1]))
        yield x, torch.poisson(rate, generator=gen)


class CountNet(nn.Module):
    """Log-rate MLP; ``forward`` returns the rate exp(log-rate), as a serving API wants it."""

    def __init__(self, dims: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dims, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, 1)

    def log_rate(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_rate(x))


def poisson_nll(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood per count, from the rate."""
    rate = rate.float()
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


# 16. Poisson count net under fp16 autocast: the forward returns exp(log-rate) inside the autocast
#     region; counts run to 1e5, and once a log-rate passes 11.09 the fp16 exp is inf.
@scenario(
    "h98_poisson_count_net",
    "adamax",
    "amp_overflow",
    where="head",
    diverges="auto",
    heldout=True,
    note="exp of the head's fp16 log-rate overflows (e^11.09 = 65504) as the fit reaches counts of "
    "1e5: the loss is inf then NaN, every step is skipped and the loss scale falls to nothing",
)
def h98_poisson_fp16_exp_overflow(ctx: Context) -> None:
    gen = seeded(9816)
    model = CountNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = count_batches(gen, offset=10.0)
    peak: list[float] = []
    head_inf: list[bool] = []
    for _ in range(150):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            log_rate = model.log_rate(x)
            rate = torch.exp(log_rate)
        loss = poisson_nll(rate, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm_of(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peak.append(float(log_rate.detach().float().max()))
        head_inf.append(bool(torch.isinf(rate).any()) and rate.dtype == torch.float16)
    first_bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check(
        "the loss went non-finite (at step 58 here)",
        first_bad is not None and 45 <= first_bad <= 75,
    )
    ctx.check(
        "where the fp16 exp first overflowed",
        first_bad is not None and head_inf.index(True) == first_bad,
    )
    ctx.check(
        "the log-rate there had just passed log(65504)",
        first_bad is not None and peak[first_bad] > math.log(65504),
    )
    ctx.check(
        "the same log-rates are finite in float32", first_bad is not None and peak[first_bad] < 80
    )
    ctx.check("the loss scale then fell below 1e-3", min(ctx.scales) < 1e-3)
    ctx.check(
        "the loss stayed non-finite after",
        first_bad is not None and not any(math.isfinite(v) for v in ctx.losses[first_bad:]),
    )


# 17. SVGP: ExponentialLR with gamma 1.015 (meant 0.985) under plain SGD: the learning rate grows
#     300x over the run; the negative ELBO falls, flattens, then climbs.
@scenario(
    "h98_svgp_diabetes",
    "sgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="the schedule multiplies the lr by 1.015 a step instead of 0.985; from about step 300 the "
    "negative ELBO climbs steadily",
)
def h98_svgp_lr_schedule_grows(ctx: Context) -> None:
    gen = seeded(9818)
    x, y = diabetes_standardised()
    model = SVGP(x[torch.randperm(len(y), generator=gen)[:24]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.015)
    ctx.attach(model, opt)
    batches = row_batches(gen, x, y)
    for _ in range(400):
        xb, yb = next(batches)
        loss = model.neg_elbo(xb, yb, len(y))
        loss.backward()
        ctx.grad_norms.append(grad_norm_of(model))
        opt.step()
        schedule.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    smooth = [sum(ctx.losses[i : i + 10]) / 10 for i in range(0, 391)]
    best = min(smooth)
    above = next((i for i, v in enumerate(smooth) if i > smooth.index(best) and v > 2 * best), None)
    rising = next(
        (i for i, v in enumerate(smooth) if i > smooth.index(best) and v > 1.25 * best), None
    )
    ctx.check("the loss fell first", best < 0.5 * ctx.losses[0])
    ctx.check("then climbed past twice its best", above is not None)
    ctx.check(
        "slowly: 10 steps or more from 1.25x to 2x its best",
        above is not None and rising is not None and above - rising >= 10,
    )
