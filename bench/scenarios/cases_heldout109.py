"""Held-out set 109 (``h109_``): induced instabilities and healthy controls written blind.

Hugging Face PaddleOCR-VL text decoder, Qwen2.5-Omni thinker text model (a fault and a
control), Granite-Docling text decoder and SAM3 ViT backbone, all from tiny configs (no
download); hand-written: heteroscedastic regression with a Gaussian NLL (a fault and a control),
denoising-autoencoder imputation of generated tabular records (a fault and a control),
variational RNN on generated trajectories, Behler-Parrinello-style neural network potential
with force matching, depthwise-separable CNN keyword spotter on generated clips (a fault and a
control), multi-task ECG beat net, CREPE-style pitch estimator, spectral-mask speech enhancer
under fp16 autocast with a GradScaler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    dead_fraction,
    digit_batches,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers --------------------------------------------------------------------------------


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(x) for x in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


class TextLM(nn.Module):
    """A Hugging Face text backbone (from a config) with an untied LM head."""

    def __init__(self, backbone: nn.Module, dim: int, vocab: int = 128) -> None:
        super().__init__()
        self.model = backbone
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def _paddleocr_text(dim: int = 32, layers: int = 2) -> TextLM:
    from transformers.models.paddleocr_vl.configuration_paddleocr_vl import PaddleOCRTextConfig
    from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRTextModel

    cfg = PaddleOCRTextConfig(
        vocab_size=128,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=dim // 2,
        max_position_embeddings=64,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
    )
    return TextLM(PaddleOCRTextModel(cfg), dim)


def _qwen_omni_text(dim: int = 32, layers: int = 2) -> TextLM:
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniThinkerTextModel,
    )

    cfg = Qwen2_5OmniTextConfig(
        vocab_size=128,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
    )
    return TextLM(Qwen2_5OmniThinkerTextModel(cfg), dim)


def _granite_docling_text(dim: int = 32, layers: int = 2) -> TextLM:
    from transformers.models.granite_docling.configuration_granite_docling import (
        GraniteDoclingTextConfig,
    )
    from transformers.models.granite_docling.modeling_granite_docling import (
        GraniteDoclingTextModel,
    )

    cfg = GraniteDoclingTextConfig(
        vocab_size=128,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return TextLM(GraniteDoclingTextModel(cfg), dim)


def _lm_loop(ctx, model, opt, gen, steps, before=None, sched=None, clip=None):
    batches = text_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if before is not None:
            before(step)
        loss = lm_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _max_logit(model: TextLM, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(idx).abs().amax())


def _qk_logit_max(model: TextLM, idx: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) per head over the layers, read from q_proj / k_proj outputs
    (before the rotary embedding, which rotates but does not rescale)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.model.named_modules():
        if name.endswith("q_proj") or name.endswith("k_proj"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    top = 0.0
    heads = 2
    for name, q in seen.items():
        if not name.endswith("q_proj"):
            continue
        k = seen[name[: -len("q_proj")] + "k_proj"]
        b, t, d = q.shape
        qh = q.reshape(b, t, heads, -1).transpose(1, 2)
        kh = k.reshape(b, t, heads, -1).transpose(1, 2)
        s = qh @ kh.transpose(-1, -2) / math.sqrt(d // heads)
        top = max(top, float(s.abs().amax()))
    return top


# -- Hugging Face PaddleOCR-VL text decoder: output-logit divergence ------------------------------


@scenario(
    "h109_hf_paddleocr_text_lm",
    "adam",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="untied LM head on its own 200x learning rate, no z-loss, no weight decay",
)
def h109_hf_paddleocr_text_lm_head_logits(ctx: Context) -> None:
    """The PaddleOCR-VL text decoder fine-tuned on bytes with a freshly added, untied LM head
    put in its own parameter group at 200x the backbone's learning rate (a 'new head learns
    faster' recipe), no z-loss and no weight decay: the head's logits grow by an order of
    magnitude while the log-partition drifts up with them."""
    gen = seeded(10901)
    model = _paddleocr_text()
    head = list(model.lm_head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": head, "lr": 2e-1}])
    probe, _ = next(text_batches(seeded(1)))
    start = _max_logit(model, probe)
    _lm_loop(ctx, model, opt, gen, 300)
    end = _max_logit(model, probe)
    ctx.check("max |logit| grew over 10x", end > 10 * start)
    ctx.check("logits over 15 in size", end > 15)
    ctx.check("loss rose off its best", _mean(ctx.losses[-20:]) > min(ctx.losses) + 0.2)
    ctx.check("losses finite", _finite(ctx.losses))


# -- Hugging Face Qwen2.5-Omni thinker text model: attention-logit growth (and a control) ---------


@scenario(
    "h109_hf_qwen2_5_omni_thinker_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="query/key projections at 25x the learning rate, no QK-norm, no weight decay",
)
def h109_hf_qwen2_5_omni_thinker_qk_growth(ctx: Context) -> None:
    """The Qwen2.5-Omni thinker's text model (no QK-norm) with its query/key projections in a
    parameter group at 25x the base learning rate and weight decay off: q.k logits grow far
    past their start and attention turns one-hot (Wortsman et al. 2023)."""
    gen = seeded(10902)
    model = _qwen_omni_text()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 5e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1)))
    start = _qk_logit_max(model, probe)
    _lm_loop(ctx, model, opt, gen, 220)
    end = _qk_logit_max(model, probe)
    ctx.check("q.k logits grew over 30x", end > 30 * start)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "h109_hf_qwen2_5_omni_thinker_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="control: warmup + cosine AdamW with weight decay and clipping",
)
def h109_hf_qwen2_5_omni_thinker_control(ctx: Context) -> None:
    gen = seeded(10903)
    model = _qwen_omni_text()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    steps, warm = 220, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    probe, _ = next(text_batches(seeded(1)))
    _lm_loop(ctx, model, opt, gen, steps, sched=sched, clip=1.0)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by 30%", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("q.k logits stayed under 20", _qk_logit_max(model, probe) < 20)


# -- Hugging Face Granite-Docling text decoder: a loss spike ---------------------------------------


@scenario(
    "h109_hf_granite_docling_text_lm",
    "nadam",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="a resumed run sets the learning rate 25x for two steps",
)
def h109_hf_granite_docling_resume_spike(ctx: Context) -> None:
    """The Granite-Docling text decoder trained with NAdam; at step 150 a resume from a
    checkpoint restores the scheduler's state in the wrong units and the learning rate is 25x
    for two steps before the next scheduler call sets it back: the loss jumps and then
    recovers."""
    gen = seeded(10904)
    model = _granite_docling_text()
    base = 2e-3
    opt = torch.optim.NAdam(model.parameters(), lr=base)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = base * 25 if 150 <= step < 152 else base

    _lm_loop(ctx, model, opt, gen, 300, before=before)
    pre = _mean(ctx.losses[140:150])
    ctx.check("loss jumped over 1.5x within 8 steps", max(ctx.losses[151:160]) > 1.5 * pre)
    ctx.check("loss came back within 80 steps", _mean(ctx.losses[-10:]) < 1.1 * pre)
    ctx.check("losses finite", _finite(ctx.losses))


# -- SAM3 ViT backbone on digits: a gradient spike -----------------------------------------------


class Sam3Digits(nn.Module):
    """SAM3's ViT backbone (from a tiny config) on digits upsampled to 16x16, mean-pooled into a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig
        from transformers.models.sam3.modeling_sam3 import Sam3ViTModel

        cfg = Sam3ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=1,
            image_size=16,
            patch_size=4,
            pretrain_image_size=16,
            window_size=2,
            global_attn_indexes=[1],
        )
        self.vit = Sam3ViTModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="nearest")
        h = self.vit(pixel_values=img).last_hidden_state
        return self.head(h.reshape(h.shape[0], -1, h.shape[-1]).mean(1))


@scenario(
    "h109_hf_sam3_vit_digits",
    "sgd_mom",
    "gradient_spike",
    diverges=None,
    heldout=True,
    onset=120,
    note="gradient accumulation bug: one step's loss summed over 12 micro-batches, not averaged",
)
def h109_hf_sam3_vit_accumulation_spike(ctx: Context) -> None:
    """SAM3's ViT backbone classifying digits with SGD + momentum; at step 120 the gradient
    accumulation path (taken once, when the loader hands over a ragged last batch) sums 12
    micro-batch losses instead of averaging them: one gradient 12x the usual, on an ordinary
    batch."""
    gen = seeded(10905)
    model = Sam3Digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for step in range(260):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        (loss * 12 if step == 120 else loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("step 120's gradient over 8x the median", g[120] > 8 * sorted(g[100:120])[10])
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell over the run", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))


# -- heteroscedastic regression with a Gaussian NLL: non-finite (and a control) -------------------


def _hetero_data(gen: torch.Generator, n: int = 128):
    while True:
        x = torch.rand(n, 1, generator=gen) * 6 - 3
        noise = 0.05 + 0.3 * x.abs()
        y = torch.sin(2 * x) + 0.3 * x + noise * torch.randn(n, 1, generator=gen)
        yield x, y.clamp(max=1.0)  # the sensor saturates: readings above 1.0 read exactly 1.0


class HeteroNet(nn.Module):
    def __init__(self, softplus: bool) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.mu_head = nn.Linear(64, 1)
        self.sigma_head = nn.Linear(64, 1)
        self.softplus = softplus
        nn.init.constant_(self.sigma_head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        s = self.sigma_head(h)
        return self.mu_head(h), (F.softplus(s) + 1e-3 if self.softplus else s)


def _gauss_nll(mu, sigma, y):
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    "h109_heteroscedastic_gnll_regressor",
    "radam",
    "nonfinite",
    where=("sigma_head",),
    diverges="auto",
    heldout=True,
    note="sigma head used raw (softplus forgotten): log of a negative sigma",
)
def h109_heteroscedastic_raw_sigma(ctx: Context) -> None:
    """A mean-and-variance regression net trained by Gaussian NLL, its sigma head's output used
    as sigma directly (the softplus was forgotten; a bias of 1 kept it positive at first). As the
    NLL drives sigma down where the noise is small, a sigma crosses zero: log(sigma) is NaN."""
    gen = seeded(10906)
    model = HeteroNet(softplus=False)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-2)
    data = _hetero_data(gen)
    ctx.attach(model, opt)
    min_sigma = []
    for _step in range(400):
        x, y = next(data)
        mu, sigma = model(x)
        min_sigma.append(float(sigma.detach().min()))
        loss = _gauss_nll(mu, sigma, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not _finite(ctx.losses[:-5]):
            break  # the run is stopped five steps after its first NaN loss
    bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("a sigma was <= 0 at the break", bad is not None and min_sigma[bad] <= 0)
    ctx.check("finite for the first 30 steps", _finite(ctx.losses[:30]))


@scenario(
    "h109_heteroscedastic_gnll_regressor",
    "adadelta",
    "healthy",
    heldout=True,
    note="control: softplus sigma, Adadelta",
)
def h109_heteroscedastic_control(ctx: Context) -> None:
    gen = seeded(10907)
    model = HeteroNet(softplus=True)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    data = _hetero_data(gen)
    ctx.attach(model, opt)
    for _step in range(400):
        x, y = next(data)
        mu, sigma = model(x)
        loss = _gauss_nll(mu, sigma, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("NLL fell by 0.5 nats", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 0.5)


# -- denoising autoencoder imputing tabular records: exploding gradients (and a control) ----------


def _tabular_records(gen: torch.Generator, n: int = 128, d: int = 16):
    """Generated records: 4 latent factors mixed into 16 standardised columns plus noise; 20% of
    the entries are missing (zeroed, with a mask) and must be imputed."""
    mix = torch.randn(4, d, generator=gen) / 2
    while True:
        z = torch.randn(n, 4, generator=gen)
        x = z @ mix + 0.1 * torch.randn(n, d, generator=gen)
        keep = (torch.rand(n, d, generator=gen) > 0.2).float()
        yield torch.cat([x * keep, keep], 1), x, keep


class ImputerDAE(nn.Module):
    def __init__(self, depth: int = 8, width: int = 64, gain: float = 1.0, norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [32] + [width] * depth
        for a, b in zip(sizes[:-1], sizes[1:], strict=False):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / a))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.LayerNorm(b) if norm else nn.Identity(), nn.LeakyReLU(0.1)]
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Linear(width, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _imputer_loop(ctx, model, opt, gen, steps, on_grad=None, clip=None):
    data = _tabular_records(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        inp, x, keep = next(data)
        # denoising: reconstruct every column, observed ones weighted 1, missing ones 2
        w = keep + 2 * (1 - keep)
        loss = ((model(inp) - x) ** 2 * w).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if on_grad is not None:
            on_grad(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not _finite(ctx.losses[:-3]):
            break


@scenario(
    "h109_tabular_dae_imputer",
    "sgd",
    "exploding_gradients",
    where=("encoder.0", "encoder.3", "encoder.6"),
    diverges="auto",
    heldout=True,
    note="8-layer unnormalised encoder initialised at 1.5x the He gain (gain applied twice)",
)
def h109_tabular_dae_gain_explodes(ctx: Context) -> None:
    """A denoising autoencoder that imputes missing columns, its 8-layer LeakyReLU encoder
    unnormalised and initialised with the He gain applied twice (1.5x the right std): the
    forward and backward passes multiply by ~1.5 per layer, the first gradient is hundreds of
    times a He-initialised twin's, and each SGD step grows the weights, which grows the next
    gradients: the run blows up within a few steps."""
    gen = seeded(10908)
    model = ImputerDAE(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=2.5e-3)
    _imputer_loop(ctx, model, opt, gen, 300)
    g = ctx.grad_norms
    ctx.check("gradient norm over 100 at the first step", g[0] > 100)
    ctx.check("gradient norm grew over 30x, then non-finite", max(g) > 30 * g[0] or not _finite(g))
    ctx.check("the loss went non-finite", not _finite(ctx.losses))


@scenario(
    "h109_tabular_dae_imputer",
    "asgd",
    "healthy",
    heldout=True,
    note="control: LayerNorm encoder, He init, ASGD with clipping",
)
def h109_tabular_dae_control(ctx: Context) -> None:
    gen = seeded(10909)
    model = ImputerDAE(gain=1.0, norm=True)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2, t0=100)
    _imputer_loop(ctx, model, opt, gen, 300, clip=5.0)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


# -- variational RNN on generated trajectories: loss of plasticity ---------------------------------


def _trajectories(gen: torch.Generator, n: int = 32, t: int = 20):
    """Noisy 2-D Lissajous pieces with random frequency and phase."""
    steps = torch.arange(t).float()[None, :, None]
    while True:
        f = 0.2 + 0.4 * torch.rand(n, 1, 2, generator=gen)
        ph = 6.28 * torch.rand(n, 1, 2, generator=gen)
        yield torch.sin(f * steps + ph) + 0.05 * torch.randn(n, t, 2, generator=gen)


class VRNN(nn.Module):
    """Chung et al. 2015: a GRU state, a learned prior, an encoder and a decoder per step."""

    def __init__(self, x_dim: int = 2, h: int = 32, z: int = 8) -> None:
        super().__init__()
        self.phi_x = nn.Sequential(nn.Linear(x_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(z, h), nn.ReLU())
        self.prior = nn.Linear(h, 2 * z)
        self.enc = nn.Linear(2 * h, 2 * z)
        self.dec = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, x_dim))
        self.rnn = nn.GRUCell(2 * h, h)
        self.h = h

    def forward(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        h = x.new_zeros(b, self.h)
        rec, kl = 0.0, 0.0
        for i in range(t):
            fx = self.phi_x(x[:, i])
            pm, plv = self.prior(h).chunk(2, -1)
            qm, qlv = self.enc(torch.cat([fx, h], -1)).chunk(2, -1)
            zs = qm + torch.exp(0.5 * qlv) * torch.randn(qm.shape, generator=gen)
            fz = self.phi_z(zs)
            rec = rec + ((self.dec(torch.cat([fz, h], -1)) - x[:, i]) ** 2).sum(-1).mean()
            kl = (
                kl + 0.5 * (plv - qlv + (qlv.exp() + (qm - pm) ** 2) / plv.exp() - 1).sum(-1).mean()
            )
            h = self.rnn(torch.cat([fx, fz], -1), h)
        return rec / t, kl / t


@scenario(
    "h109_vrnn_trajectories",
    "adamax",
    "loss_of_plasticity",
    where=("phi_x", "dec"),
    diverges=None,
    heldout=True,
    onset=40,
    note="a warmup misconfigured as a 150x burst kills decoder and input-feature units",
)
def h109_vrnn_feature_units_die(ctx: Context) -> None:
    """A variational RNN on generated 2-D trajectories, trained with Adamax; a warmup written
    as a multiplier (150x for steps 40-59, meant as a ramp to 1x) blasts the ReLU layers: most
    decoder units and many input-feature units end up never active, and with them gone the
    loss never gets back to where it was before the burst."""
    gen = seeded(10910)
    noise = seeded(10911)
    model = VRNN()
    base = 2e-3
    opt = torch.optim.Adamax(model.parameters(), lr=base)
    data = _trajectories(gen)
    probe = next(_trajectories(seeded(2)))
    ctx.attach(model, opt)
    before: dict[str, float] = {}
    for step in range(260):
        for g in opt.param_groups:
            g["lr"] = base * 150 if 40 <= step < 60 else base
        if step == 40:
            before = _vrnn_dead(model, probe)
        x = next(data)
        rec, kl = model(x, noise)
        loss = rec + kl
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    after = _vrnn_dead(model, probe)
    ctx.check("under 20% of decoder units dead before", before["dec"] < 0.2)
    ctx.check("over half of decoder units dead after", after["dec"] > 0.5)
    ctx.check("more input-feature units dead after", after["phi_x"] > before["phi_x"] + 0.15)
    pre = _mean(ctx.losses[30:40])
    ctx.check("the loss never came back to its pre-burst level", min(ctx.losses[80:]) > pre)
    ctx.check("losses finite", _finite(ctx.losses))


def _vrnn_dead(model: VRNN, probe: torch.Tensor) -> dict[str, float]:
    outs: dict[str, list[torch.Tensor]] = {"phi_x": [], "dec": []}
    hooks = [
        model.phi_x.register_forward_hook(lambda m, i, o: outs["phi_x"].append(o)),
        model.dec[1].register_forward_hook(lambda m, i, o: outs["dec"].append(o)),
    ]
    with torch.no_grad():
        model(probe, torch.Generator().manual_seed(3))
    for h in hooks:
        h.remove()
    return {k: dead_fraction(torch.cat(v)) for k, v in outs.items()}


# -- Behler-Parrinello-style neural network potential with force matching: sharpness ------------


def _morse_clusters(gen: torch.Generator, n: int = 64, atoms: int = 4):
    """Generated 2-D clusters with a Morse pair energy; forces are its negative gradient."""
    while True:
        base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        pos = base[:atoms] + 0.07 * torch.randn(n, atoms, 2, generator=gen)
        pos.requires_grad_(True)
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1) + torch.eye(atoms)
        e_pair = (1 - torch.exp(-2.0 * (d - 1.0))) ** 2 - 1
        e = (e_pair * (1 - torch.eye(atoms))).sum((1, 2)) / 2
        (f,) = torch.autograd.grad(-e.sum(), pos)
        yield pos.detach(), e.detach() + 4.5, f.detach()  # energies about their mean


class AtomicNNP(nn.Module):
    """Radial symmetry functions per atom -> a shared atomic MLP -> atomic energies, summed."""

    def __init__(self, centres: int = 12, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mu", torch.linspace(0.5, 2.5, centres))
        self.atomic = nn.Sequential(
            nn.Linear(centres, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.energy = nn.Linear(hidden, 1)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        atoms = pos.shape[1]
        diff = pos[:, :, None] - pos[:, None]
        d = (diff.pow(2).sum(-1) + 1e-9).sqrt()
        mask = 1 - torch.eye(atoms)
        cut = 0.5 * (torch.cos(math.pi * (d / 3.0).clamp(max=1.0)) + 1) * mask
        g = (torch.exp(-4.0 * (d[..., None] - self.mu) ** 2) * cut[..., None]).sum(2)
        return self.energy(self.atomic(g)).sum((1, 2))


def _sharpness(model: nn.Module, loss_fn, batch, iters: int = 12) -> float:
    """Top Hessian eigenvalue of the loss on a batch, by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * x).sum() for g, x in zip(grads, v, strict=True)), params)
        lam = float(sum((h * x).sum() for h, x in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _nnp_loss(model: nn.Module, batch) -> torch.Tensor:
    pos, e, f = batch
    pos = pos.clone().requires_grad_(True)
    pred = model(pos)
    (pf,) = torch.autograd.grad(-pred.sum(), pos, create_graph=True)
    return F.mse_loss(pred, e) + 10.0 * F.mse_loss(pf, f)


@scenario(
    "h109_bp_nnp_force_matching",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="a long geometric learning-rate ramp passes 2/sharpness of the force-matching loss",
)
def h109_bp_nnp_lr_ramp_past_edge(ctx: Context) -> None:
    """An atomic neural network potential (radial symmetry functions, shared atomic MLP)
    trained on energies and, weighted 10x, forces by double backprop, with plain SGD whose
    learning rate ramps geometrically (a 'find the largest learning rate that works' sweep left
    running): the force term makes the loss sharp, and once the rate passes 2/sharpness the
    loss oscillates and climbs away."""
    gen = seeded(10912)
    model = AtomicNNP()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = _morse_clusters(gen)
    probe = next(_morse_clusters(torch.Generator().manual_seed(4)))
    ctx.attach(model, opt, probe=(_nnp_loss, probe))
    edge: list[tuple[int, float]] = []
    for step in range(300):
        lr = 1e-3 * math.exp(step * math.log(1000) / 300)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 20 == 0 and _finite(ctx.losses):
            edge.append((step, lr * _sharpness(model, _nnp_loss, probe)))
        loss = _nnp_loss(model, next(data))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not _finite(ctx.losses[:-3]):
            break
    best = min(ctx.losses)
    ctx.check("lr x sharpness under 2 at the start", edge[0][1] < 2)
    ctx.check("lr x sharpness passed 2 before the break", max(e for _, e in edge) > 2)
    ctx.check("the loss fell first (trainable)", best < 0.5 * ctx.losses[0])
    ctx.check(
        "then climbed over 10x its best", max(ctx.losses) > 10 * best or not _finite(ctx.losses)
    )


# -- depthwise-separable CNN keyword spotter: a data outlier (and a control) -----------------------


def _keyword_clips(gen: torch.Generator, n: int = 32, length: int = 400, classes: int = 6):
    """Generated 'keywords': each class a sequence of two tone syllables (its own pair of
    pitches and durations) at a random offset and loudness, in noise; waveforms in [-1, 1]."""
    t = torch.arange(length).float()
    f1 = torch.linspace(0.05, 0.30, classes)
    f2 = torch.linspace(0.28, 0.06, classes)
    while True:
        y = torch.randint(0, classes, (n,), generator=gen)
        start = torch.randint(0, 120, (n, 1), generator=gen).float()
        gain = 0.3 + 0.5 * torch.rand(n, 1, generator=gen)
        mid = start + 120
        env1 = ((t >= start) & (t < mid)).float()
        env2 = ((t >= mid) & (t < mid + 120)).float()
        wave = env1 * torch.sin(f1[y, None] * t) + env2 * torch.sin(f2[y, None] * t)
        x = gain * wave + 0.1 * torch.randn(n, length, generator=gen)
        yield x.clamp(-1, 1), y


class DSCNNKeywordSpotter(nn.Module):
    """Strided conv front end, then depthwise-separable conv blocks, pooled; no normalisation
    layers (a microcontroller-sized model with its normalisation folded away)."""

    def __init__(self, ch: int = 32, classes: int = 6) -> None:
        super().__init__()
        self.front = nn.Conv1d(1, ch, 16, stride=4)
        self.dw1 = nn.Conv1d(ch, ch, 9, padding=4, groups=ch)
        self.pw1 = nn.Conv1d(ch, ch, 1)
        self.dw2 = nn.Conv1d(ch, ch, 9, padding=4, groups=ch, stride=2)
        self.pw2 = nn.Conv1d(ch, ch, 1)
        self.head = nn.Linear(ch, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.front(x[:, None]))
        h = F.relu(self.pw1(self.dw1(h)))
        h = F.relu(self.pw2(self.dw2(h)))
        return self.head(h.mean(-1))


def _kws_loop(ctx, model, opt, gen, steps, alter=None, sched=None):
    data = _keyword_clips(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(data)
        if alter is not None:
            x = alter(step, x)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not _finite(ctx.losses[:-5]):
            break


@scenario(
    "h109_dscnn_keyword_spotter",
    "sgd_nesterov",
    "data_outlier",
    diverges="auto",
    heldout=True,
    onset=110,
    note="8 clips of one batch read as raw int16 samples (x32767), not scaled to [-1, 1]",
)
def h109_dscnn_kws_int16_batch(ctx: Context) -> None:
    """A depthwise-separable CNN keyword spotter on generated two-syllable clips, SGD with
    Nesterov momentum; at step 110 one shard's clips come through a loader path that skips the
    int16 -> float scaling, so a quarter of the batch is 32767x too loud: the loss and the
    gradient jump on that batch, and the step it takes (with the momentum that carries it)
    wrecks the weights: the run is NaN two steps later."""
    gen = seeded(10913)
    model = DSCNNKeywordSpotter()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step: int, x: torch.Tensor) -> torch.Tensor:
        if step == 110:  # a quarter of the batch from the unscaled shard
            x = torch.cat([x[:8] * 32767.0, x[8:]])
        return x

    _kws_loop(ctx, model, opt, gen, 240, alter=alter)
    L, g = ctx.losses, ctx.grad_norms
    before = sorted(L[90:110])[10]
    ctx.check("the bad batch's loss over 5x the median before", L[110] > 5 * before)
    ctx.check("its gradient over 10x the median before", g[110] > 10 * sorted(g[90:110])[10])
    ctx.check("finite and learning before it", _finite(L[:110]) and L[109] < 0.8 * L[0])
    ctx.check("the run went non-finite within 5 steps of it", not _finite(L[110:116]))


@scenario(
    "h109_dscnn_keyword_spotter",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="control: SGD momentum with a step decay",
)
def h109_dscnn_kws_control(ctx: Context) -> None:
    gen = seeded(10914)
    model = DSCNNKeywordSpotter()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=120, gamma=0.3)
    _kws_loop(ctx, model, opt, gen, 240, sched=sched)
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:10]))


# -- multi-task ECG beat net: Adam's second moment poisoned ----------------------------------------


def _ecg_beats(gen: torch.Generator, n: int = 64, length: int = 128):
    """Generated single beats: P, QRS and T waves as Gaussians; class 1 beats (ventricular-like)
    have a wide QRS and no P wave; the regression target is the RR interval in seconds, which
    sets the T wave's place."""
    t = torch.arange(length).float()[None]
    while True:
        y = torch.randint(0, 2, (n,), generator=gen)
        rr = 0.6 + 0.6 * torch.rand(n, 1, generator=gen)
        qrs_w = torch.where(y[:, None] == 1, 6.0, 2.0)
        p = (1 - y[:, None].float()) * 0.15 * torch.exp(-((t - 30) ** 2) / 30)
        qrs = torch.exp(-((t - 50) ** 2) / (2 * qrs_w**2))
        tw = 0.3 * torch.exp(-((t - 60 - 40 * rr) ** 2) / 60)
        x = p + qrs + tw + 0.03 * torch.randn(n, length, generator=gen)
        yield x, y, rr[:, 0]


class ECGBeatNet(nn.Module):
    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv1d(1, ch, 7, padding=3),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(ch, ch, 7, padding=3),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(8),
            nn.Flatten(),
        )
        self.cls_head = nn.Linear(8 * ch, 2)
        self.rr_head = nn.Linear(8 * ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x[:, None])
        return self.cls_head(h), self.rr_head(h)[:, 0]


@scenario(
    "h109_ecg_multitask_beats",
    "adam",
    "adam_second_moment_poisoned",
    where=("rr_head",),
    diverges=None,
    heldout=True,
    onset=80,
    note="one batch's RR targets in milliseconds: one giant rr_head gradient fills Adam's v",
)
def h109_ecg_rr_units_poison(ctx: Context) -> None:
    """A multi-task ECG beat net (beat class + RR interval) under Adam (beta2 0.999); at step
    80 one batch's RR targets arrive in milliseconds instead of seconds: the squared error is
    ~10^6x, the RR head's gradient ~1000x, and its second-moment estimate jumps by ~10^3 and
    decays over thousands of steps: after the one large step the event itself makes, the
    head's steps shrink over 5x and the RR error stays far above its level before the event,
    while the classification head trains on."""
    gen = seeded(10915)
    model = ECGBeatNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _ecg_beats(gen)
    ctx.attach(model, opt)
    rr_losses: list[float] = []
    moves: list[float] = []
    for step in range(300):
        x, y, rr = next(data)
        if step == 80:
            rr = rr * 1000.0
        ctx.targets(y)
        logits, pred = model(x)
        rr_loss = F.mse_loss(pred, rr)
        loss = F.cross_entropy(logits, y) + rr_loss
        rr_losses.append(float(rr_loss.detach()))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        w = model.rr_head.weight.detach().clone()
        opt.step()
        moves.append(float((model.rr_head.weight.detach() - w).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "rr_head's steps shrank over 5x after the event",
        _mean(moves[100:300]) < 0.2 * _mean(moves[60:80]),
    )
    ctx.check(
        "RR error stayed above its level before the event",
        _mean(rr_losses[-20:]) > 0.8 * _mean(rr_losses[60:80]),
    )
    ctx.check(
        "the event's loss over 1000x the usual", ctx.losses[80] > 1000 * _mean(ctx.losses[70:80])
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- CREPE-style pitch estimator: update ratio out of range ---------------------------------------


def _pitched_frames(gen: torch.Generator, n: int = 64, length: int = 256, bins: int = 24):
    """Generated voiced frames: a harmonic tone (three partials, random amplitudes and phase)
    whose fundamental falls in one of 24 log-spaced pitch bins, in noise."""
    t = torch.arange(length).float()[None]
    f0s = 0.02 * 2 ** (torch.arange(bins).float() / 8)
    while True:
        y = torch.randint(0, bins, (n,), generator=gen)
        f = f0s[y][:, None] * (1 + 0.01 * torch.randn(n, 1, generator=gen))
        x = torch.zeros(n, length)
        for k in (1, 2, 3):
            a = torch.rand(n, 1, generator=gen) / k
            ph = 6.28 * torch.rand(n, 1, generator=gen)
            x = x + a * torch.sin(2 * math.pi * k * f * t + ph)
        x = x + 0.05 * torch.randn(n, length, generator=gen)
        yield x / x.abs().amax(1, keepdim=True), y


class PitchNet(nn.Module):
    def __init__(self, ch: int = 32, bins: int = 24) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, ch, 64, stride=4)
        self.conv2 = nn.Conv1d(ch, ch, 8, stride=2)
        self.bn2 = nn.BatchNorm1d(ch)
        self.head = nn.Linear(ch * 4, bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(F.adaptive_avg_pool1d(h, 4).flatten(1))


@scenario(
    "h109_crepe_pitch_estimator",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("conv1",),
    diverges=None,
    heldout=True,
    note="front-end conv's parameter group at lr 0.5 (meant 5e-4): steps ~ its weights",
)
def h109_crepe_front_end_lr_typo(ctx: Context) -> None:
    """A CREPE-style pitch classifier (a wide strided conv front end, then a conv with
    BatchNorm, 24 pitch bins) under RMSprop with the front end in its own parameter group, its learning rate typed
    as 0.5 instead of 5e-4: each step moves the front-end filters by a third of their size on
    average, and their norm is pushed up ~90x. The ReLU, max-pool, conv and BatchNorm
    after them are (nearly) scale-invariant in them, so the loss stays finite and even falls: the ratio is the only sign."""
    losses, ratios, grew = _crepe_run(ctx, 0.5)
    c1, c2 = _mean(ratios["conv1"]), _mean(ratios["conv2"])
    ctx.check("conv1's update/weight ratio over 0.1 per step", c1 > 0.1)
    ctx.check("conv1's ratio over 5x conv2's", c1 > 5 * c2)
    ctx.check("conv1's weights pushed out over 20x their start", grew > 20)
    ctx.check("losses finite", _finite(losses))


def _crepe_run(ctx: Context | None, front_lr: float):
    gen = seeded(10916)
    model = PitchNet()
    front = list(model.conv1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv1.")]
    opt = torch.optim.RMSprop([{"params": rest, "lr": 1e-3}, {"params": front, "lr": front_lr}])
    data = _pitched_frames(gen)
    if ctx is not None:
        ctx.attach(model, opt)
    start = float(model.conv1.weight.detach().norm())
    ratios: dict[str, list[float]] = {"conv1": [], "conv2": []}
    losses: list[float] = []
    for _step in range(240):
        x, y = next(data)
        if ctx is not None:
            ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if ctx is not None:
            ctx.grad_norms.append(grad_norm(model))
        w = {k: getattr(model, k).weight.detach().clone() for k in ratios}
        opt.step()
        for k in ratios:
            now = getattr(model, k).weight.detach()
            ratios[k].append(float((now - w[k]).norm() / w[k].norm()))
        losses.append(float(loss.detach()))
        if ctx is not None:
            ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return losses, ratios, float(model.conv1.weight.detach().norm()) / start


# -- spectral-mask speech enhancer under fp16 autocast: AMP overflow ------------------------------


def _noisy_spectra(gen: torch.Generator, n: int = 32, frame: int = 128):
    """Power spectra of generated voiced frames (harmonic tones) plus noise, and of the clean
    frames: the enhancer predicts a mask on the noisy power spectrum. Loudness varies over
    ~40 dB between clips, as recordings do."""
    t = torch.arange(frame).float()[None]
    win = torch.hann_window(frame)
    while True:
        f0 = 0.02 + 0.05 * torch.rand(n, 1, generator=gen)
        clean = sum(
            torch.rand(n, 1, generator=gen) / k * torch.sin(2 * math.pi * k * f0 * t)
            for k in (1, 2, 3)
        )
        gain = 10 ** (2 * torch.rand(n, 1, generator=gen))  # 0 to 40 dB
        clean = gain * clean
        noisy = clean + gain * 0.3 * torch.randn(n, frame, generator=gen)
        spec = lambda w: torch.fft.rfft(w * win).abs() ** 2  # noqa: E731
        yield spec(noisy)[:, :64], spec(clean)[:, :64]


class MaskEnhancer(nn.Module):
    def __init__(self, bins: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.enc = nn.Linear(bins, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.mask = nn.Linear(hidden, bins)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        feat = torch.log1p(power)  # log-compressed features in; the mask applies to power
        h = F.relu(self.mid(F.relu(self.enc(feat))))
        return torch.sigmoid(self.mask(h)) * power


@scenario(
    "h109_spectral_mask_enhancer",
    "adagrad",
    "amp_overflow",
    where=("mask",),
    diverges=None,
    heldout=True,
    note="fp16 autocast + GradScaler, the loss an MSE on linear power spectra of loud clips",
)
def h109_mask_enhancer_power_loss_fp16(ctx: Context) -> None:
    """A mask-based speech enhancer (log features in, a sigmoid mask on the power spectrum
    out) trained under fp16 autocast with a GradScaler, the loss an MSE between linear power
    spectra: on loud clips (power ~10^6-10^8) the gradient reaching the mask layer overflows
    fp16 even unscaled, so the scaler skips those steps and halves its scale each time; the
    scale collapses far below 1."""
    gen = seeded(10917)
    model = MaskEnhancer()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    data = _noisy_spectra(gen)
    ctx.attach(model, opt, scaler=scaler)
    skipped = 0
    inf_in: dict[str, int] = {}
    for _step in range(200):
        noisy, clean = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(noisy)
        loss = F.mse_loss(out.float(), clean)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        for name, mod in model.named_children():
            if any(
                p.grad is not None and not torch.isfinite(p.grad).all() for p in mod.parameters()
            ):
                inf_in[name] = inf_in.get(name, 0) + 1
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 20 steps skipped for overflow", skipped > 20)
    ctx.check("the loss scale fell below 1", min(ctx.scales) < 1)
    ctx.check("the mask layer's gradients overflowed", inf_in.get("mask", 0) > 10)
