"""Held-out scenarios, set 53 (``h53_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face MGP-STR scene-text recogniser on generated digit strips, CLAP
audio-text contrastive model on generated tone spectrograms and captions, DAC neural audio codec
on generated tones (behind a loudness-normalising front end), PP-LCNet image classifier (digits)
and ViTMatte image matting on generated composites, all from configs; DANN domain adaptation
with a gradient-reversal layer (digits to inverted digits), LISTA unrolled sparse coder on a
generated dictionary, FlowNetC-style optical-flow regressor with a correlation layer on
generated textures (fp16 autocast), mixup MLP classifier (digits; a control under fp16
autocast with a GradScaler), PGD adversarial training of an MLP (digits), noisy-student
pseudo-labelling (digits), Deep SVDD anomaly detector (breast cancer, benign as normal).

Optimizers: SGD, momentum SGD, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, Adadelta,
RMSprop, ASGD, and steadygrad.optim's Lion, AdEMAMix and StableSPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    MLP,
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    scenario,
    seeded,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _grad_norm(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))


def _diverged_at(losses: list[float]) -> int | None:
    """First step whose loss is non-finite or whose median of 5 passes max(2 x best, best + 1)."""
    best = math.inf
    for i, v in enumerate(losses):
        if not _finite(v):
            return i
        best = min(best, v)
        if i >= 4:
            med = sorted(losses[i - 4 : i + 1])[2]
            if med > max(2 * best, best + 1):
                return i
    return None


def _fell(losses: list[float], k: int = 20) -> bool:
    head, tail = losses[:k], losses[-k:]
    return all(_finite(v) for v in losses) and sum(tail) / k < 0.7 * sum(head) / k


# =================================================================================================
# Hugging Face MGP-STR (scene-text recognition) on generated digit strips
# =================================================================================================


def _mgp_str() -> nn.Module:
    from transformers import MgpstrConfig, MgpstrForSceneTextRecognition

    config = MgpstrConfig(
        image_size=[16, 32],
        patch_size=4,
        num_channels=1,
        max_token_length=6,
        num_character_labels=12,
        num_bpe_labels=12,
        num_wordpiece_labels=12,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2.0,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    return MgpstrForSceneTextRecognition(config)


def _strip_batches(gen: torch.Generator, batch: int = 32):
    """Strips of four digits (8x32, padded to 16x32); labels: [GO] d1 d2 d3 d4 [s] (10, 11)."""
    x, y = digits()
    while True:
        idx = torch.randint(0, len(y), (batch, 4), generator=gen)
        img = x[idx].reshape(batch, 4, 8, 8).permute(0, 2, 1, 3).reshape(batch, 8, 32)
        img = F.pad(img, (0, 0, 4, 4))[:, None]
        labels = torch.cat([torch.full((batch, 1), 10), y[idx], torch.full((batch, 1), 11)], dim=1)
        yield img, labels


def _mgp_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.stack(m(x).logits)  # (3 heads: character, BPE, wordpiece), batch, 6, 12


def _mgp_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = y[None].expand(out.shape[0], -1, -1)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


_MGP_ATTN = ("mgp_str.encoder.blocks.0.attn", "mgp_str.encoder.blocks.1.attn")


@scenario(
    "h53_hf_mgp_str_strips",
    "adamw",
    "attention_logit_growth",
    where=_MGP_ATTN,
    diverges=None,
    onset=100,
    note="attention-temperature anneal with min/max swapped: 1/tau grows 4% a step from 100",
    heldout=True,
)
def h53_mgpstr_attention_temperature_runaway(ctx: Context) -> None:
    """An attention-sharpening anneal meant to lower the attention temperature from 1.0 to a
    floor of 0.5 is written ``tau = min(tau * 0.96, 0.5)`` instead of ``max``: from step 100 the
    temperature falls 4% a step with no floor, the pre-softmax logits q.k * scale / tau grow
    geometrically, the attention rows saturate onto single patches (the recogniser copes, but the
    attention is no longer learnt: its softmax gradient vanishes)."""
    gen = seeded(5301)
    model = _mgp_str()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    attns = [model.get_submodule(n) for n in _MGP_ATTN]
    base = attns[0].scale
    logit_max: dict[int, float] = {}
    state = {"tau": 1.0}

    def anneal(step: int) -> None:
        if step >= 100:
            state["tau"] = min(state["tau"] * 0.96, 0.5)  # meant: max(tau * 0.96, 0.5)
        for a in attns:
            a.scale = base / state["tau"]
        if step in (99, 219):
            with torch.no_grad():
                img, _ = next(_strip_batches(torch.Generator().manual_seed(1), 64))
                h = model.mgp_str.embeddings(img)
                blk = model.mgp_str.encoder.blocks[0]
                z = blk.norm1(h)
                qkv = blk.attn.qkv(z).reshape(64, z.shape[1], 3, 2, 16).permute(2, 0, 3, 1, 4)
                logits = (qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.scale
                logit_max[step] = float(logits.abs().amax())
                probs = logits.softmax(-1)
                logit_max[-step] = float(probs.amax(-1).mean())

    fit(
        ctx,
        model,
        opt,
        _strip_batches(gen),
        220,
        loss_fn=_mgp_loss,
        forward=_mgp_forward,
        classifier=False,
        before=anneal,
    )
    ctx.check("attention logits grew 10x after the onset", logit_max[219] > 10 * logit_max[99])
    ctx.check(
        "attention rows saturated (mean max prob > 0.85, from < 0.1)",
        logit_max[-219] > 0.85 and logit_max[-99] < 0.1,
    )
    ctx.check("loss fell before the onset", ctx.losses[95] < 0.9 * ctx.losses[0])


@scenario("h53_hf_mgp_str_strips", "sg_stablespam", "healthy", heldout=True)
def h53_mgpstr_healthy_stablespam(ctx: Context) -> None:
    gen = seeded(5302)
    model = _mgp_str()
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        _strip_batches(gen),
        160,
        loss_fn=_mgp_loss,
        forward=_mgp_forward,
        classifier=False,
    )
    ctx.check("loss fell", _fell(ctx.losses))


# =================================================================================================
# Hugging Face CLAP (audio-text contrastive) on generated tone spectrograms and captions
# =================================================================================================


def _clap() -> nn.Module:
    from transformers import ClapConfig, ClapModel

    config = ClapConfig(
        text_config=dict(
            vocab_size=48,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=24,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        audio_config=dict(
            hidden_size=32,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16,
            window_size=4,
            spec_size=32,
            num_mel_bins=8,
            patch_size=4,
            enable_fusion=False,
            projection_dim=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        ),
        projection_dim=16,
    )
    return ClapModel(config)


def _clap_batches(gen: torch.Generator, classes: int = 8):
    """A class-balanced batch of 8 (one per tone): a log-power 'spectrogram' (64 frames x 8
    bins) with the tone's bin and its octave lit, and a caption [CLS] filler tone-word filler."""
    while True:
        k = torch.randperm(classes, generator=gen)
        spec = 0.3 * torch.randn(classes, 1, 64, 8, generator=gen)
        onset = torch.randint(0, 24, (classes,), generator=gen)
        for i in range(classes):
            spec[i, 0, onset[i] : onset[i] + 32, k[i]] += 2.0
            spec[i, 0, onset[i] : onset[i] + 32, (k[i] + 4) % 8] += 1.0
        ids = torch.randint(20, 48, (classes, 6), generator=gen)
        ids[:, 0] = 0
        ids[:, 2] = 4 + k
        yield spec, ids


@scenario(
    "h53_hf_clap_tones",
    "nadam",
    "update_ratio_out_of_range",
    where="audio_model",
    diverges=None,
    note="audio tower frozen for a warm-up that is counted in epochs and never ends",
    heldout=True,
)
def h53_clap_audio_tower_left_frozen(ctx: Context) -> None:
    """The recipe freezes the audio tower for a warm-up and unfreezes it at ``step ==
    warmup_epochs`` (5) once the step counter passes it; but the check runs only at epoch ends,
    where the counter is already far past 5, so the tower stays frozen for the whole run. The
    optimizer holds its parameters but they never move: the audio tower's update/weight ratio
    is zero while the text side and projections learn to match a random audio encoder."""
    gen = seeded(5303)
    model = _clap()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    model.audio_model.requires_grad_(False)
    before = torch.cat([p.detach().flatten() for p in model.audio_model.parameters()]).clone()
    batches = _clap_batches(gen)
    ctx.attach(model, opt)
    for step in range(200):
        if step == 5 and step % 100 == 99:  # the unfreeze is only looked at on epoch ends
            model.audio_model.requires_grad_(True)
        spec, ids = next(batches)
        out = model(input_ids=ids, input_features=spec, return_loss=True)
        out.loss.backward()
        ctx.grad_norms.append(_grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
    after = torch.cat([p.detach().flatten() for p in model.audio_model.parameters()])
    moved = float((after - before).norm())
    ctx.check("the audio tower never moved", moved == 0.0)
    ctx.check("the rest trained (loss fell)", _fell(ctx.losses))


# =================================================================================================
# Hugging Face DAC (neural audio codec) behind a loudness-normalising front end
# =================================================================================================


class _RmsNormalise(nn.Module):
    """Loudness normalisation: each clip divided by its RMS (no epsilon)."""

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return wav / wav.pow(2).mean(-1, keepdim=True).sqrt()


class _Codec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import DacConfig, DacModel

        self.norm = _RmsNormalise()
        config = DacConfig(
            encoder_hidden_size=8,
            downsampling_ratios=[2, 2],
            decoder_hidden_size=32,
            n_codebooks=2,
            codebook_size=64,
            codebook_dim=4,
            hidden_size=32,
        )
        self.dac = DacModel(config)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.norm(wav)
        out = self.dac(x[:, None])
        return F.l1_loss(out.audio_values, x) + out.loss.mean()


def _tone_clips(gen: torch.Generator, batch: int = 16, length: int = 256):
    t = torch.arange(length) / 8000.0
    while True:
        f = 200 + 1800 * torch.rand(batch, 2, 1, generator=gen)
        a = 0.1 + torch.rand(batch, 2, 1, generator=gen)
        wav = (a * torch.sin(2 * math.pi * f * t)).sum(1)
        yield wav + 0.01 * torch.randn(batch, length, generator=gen)


@scenario(
    "h53_hf_dac_codec",
    "adam",
    "nonfinite",
    where="norm",
    diverges=130,
    onset=130,
    note="a silent clip: RMS 0, 0/0 in the loudness normaliser",
    heldout=True,
)
def h53_dac_silent_clip_rms(ctx: Context) -> None:
    """The codec's front end divides each clip by its RMS with no epsilon. At step 130 the
    loader yields one silent (all-zero) clip, a truncated file padded with zeros: 0/0 is NaN in
    the normaliser, the NaN runs through the codec into the loss and Adam writes it into every
    weight."""
    gen = seeded(5304)
    model = _Codec()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    bad: dict[int, bool] = {}
    model.norm.register_forward_hook(
        lambda m, i, o: bad.__setitem__(len(ctx.losses), not bool(torch.isfinite(o).all()))
    )
    clips = _tone_clips(gen)
    ctx.attach(model, opt)
    for step in range(170):
        wav = next(clips)
        if step == 130:
            wav = wav.clone()
            wav[3] = 0.0
        loss = model(wav)
        loss.backward()
        ctx.grad_norms.append(_grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    fin = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite until 130, not at 130", all(fin[:130]) and not fin[130])
    ctx.check(
        "the normaliser produced the first non-finite",
        bad[130] and not any(bad[s] for s in range(130)),
    )
    ctx.check(
        "loss steady before (no earlier divergence)", max(ctx.losses[:130]) < 1.5 * ctx.losses[0]
    )


# =================================================================================================
# Hugging Face PP-LCNet image classifier on digits
# =================================================================================================


def _pp_lcnet() -> nn.Module:
    from transformers import PPLCNetConfig, PPLCNetForImageClassification

    blocks = [
        [[3, 8, 16, 1, False]],
        [[3, 16, 16, 2, False]],
        [[3, 16, 32, 2, False]],
        [[3, 32, 32, 1, False]],
        [[3, 32, 64, 2, True]],
    ]
    config = PPLCNetConfig(
        block_configs=blocks,
        stem_channels=8,
        class_expand=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
    )
    return PPLCNetForImageClassification(config)


def _rgb16_batches(gen: torch.Generator, batch: int = 48):
    for x, y in digit_batches(gen, batch):
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=(16, 16), mode="bilinear")
        yield img.expand(-1, 3, -1, -1), y


def _lcnet_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).last_hidden_state


@scenario(
    "h53_hf_pp_lcnet_digits",
    "rmsprop",
    "update_ratio_out_of_range",
    where="head",
    diverges=None,
    note="head group LR 1e-1 typed for 1e-3",
    heldout=True,
)
def h53_pplcnet_head_lr_typo(ctx: Context) -> None:
    """Layer-wise learning rates for fine-tuning: the freshly initialised head is meant to get
    the base rate 1e-3, but its group is typed ``lr=1e-1``. Under RMSprop every head weight
    moves ~0.1 a step (the update is lr x a unit-scale ratio): the head's update/weight ratio
    is ~100x the backbone's, and its weights thrash instead of settling."""
    gen = seeded(5305)
    model = _pp_lcnet()
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.RMSprop([{"params": rest}, {"params": head, "lr": 1e-1}], lr=2e-4)
    ratios: dict[str, list[float]] = {"head": [], "rest": []}
    snap: dict[str, list[torch.Tensor]] = {}

    def track(step: int) -> None:
        if step >= 1:
            for key, ps in (("head", head), ("rest", rest)):
                w = torch.cat([p.detach().flatten() for p in ps])
                ratios[key].append(float((w - snap[key][0]).norm() / w.norm()))
        snap["head"] = [torch.cat([p.detach().flatten() for p in head])]
        snap["rest"] = [torch.cat([p.detach().flatten() for p in rest])]

    fit(ctx, model, opt, _rgb16_batches(gen), 150, forward=_lcnet_forward, before=track)
    h = sorted(ratios["head"])[len(ratios["head"]) // 2]
    r = sorted(ratios["rest"])[len(ratios["rest"]) // 2]
    ctx.check("head update/weight ratio 20x the backbone's", h > 20 * r)


# =================================================================================================
# Hugging Face ViTMatte (image matting) on generated composites
# =================================================================================================


def _vitmatte() -> nn.Module:
    from transformers import VitDetConfig, VitMatteConfig, VitMatteForImageMatting

    backbone = VitDetConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=32,
        pretrain_image_size=32,
        patch_size=16,
        num_channels=4,
        out_features=["stage2"],
    )
    config = VitMatteConfig(
        backbone_config=backbone,
        hidden_size=32,
        convstream_hidden_sizes=[8, 16, 16],
        fusion_hidden_sizes=[16, 16, 8, 8],
    )
    return VitMatteForImageMatting(config)


def _matting_batches(gen: torch.Generator, batch: int = 16, size: int = 32):
    """A soft-edged disc of one colour over a noisy background; input = image + trimap."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        c = 8 + 16 * torch.rand(batch, 2, 1, 1, generator=gen)
        r = 5 + 6 * torch.rand(batch, 1, 1, generator=gen)
        d = ((xx - c[:, 0]) ** 2 + (yy - c[:, 1]) ** 2).sqrt()
        alpha = torch.sigmoid((r - d) / 1.2)[:, None]
        fg = torch.rand(batch, 3, 1, 1, generator=gen).expand(-1, -1, size, size)
        bg = torch.rand(batch, 3, size, size, generator=gen)
        bg = F.avg_pool2d(bg, 5, 1, 2)
        img = alpha * fg + (1 - alpha) * bg
        band = ((d - r).abs() < 3)[:, None]
        trimap = torch.where(band, 0.5, (alpha > 0.5).float())
        yield torch.cat([img, trimap], 1), alpha


@scenario(
    "h53_hf_vitmatte_shapes",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    note="one step's loss multiplied by 1e4 (an accumulation-count bug)",
    heldout=True,
)
def h53_vitmatte_adamax_poisoned(ctx: Context) -> None:
    """Gradient accumulation written wrongly for one step: at step 60 the loss is multiplied by
    the accumulated pixel count (1e4) instead of divided. Adamax's infinity norm u = max(b2 u,
    |g|) takes the giant gradient into every tensor and forgets it only at 0.1% a step: once
    the spike's momentum has decayed, each update is ~1e4 x too small and learning stalls."""
    gen = seeded(5306)
    model = _vitmatte()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    moved = []

    def track(step: int) -> None:
        if step in (20, 50, 180, 210):
            moved.append(_flat(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e4 if step == 60 else loss

    fit(
        ctx,
        model,
        opt,
        _matting_batches(gen),
        215,
        loss_fn=F.l1_loss,
        classifier=False,
        forward=lambda m, x: m(x).alphas,
        before=track,
        extra_loss=bug,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 5x after the spike", after < before / 5)
    ctx.check("loss finite throughout", all(_finite(v) for v in ctx.losses))


# =================================================================================================
# DANN: domain-adversarial training with a gradient-reversal layer (digits -> inverted digits)
# =================================================================================================


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):  # noqa: ANN001
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        return -ctx.lam * g, None


class _DANN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU())
        self.label_head = nn.Linear(48, 10)
        self.domain_head = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 1))
        self.lam = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.label_head(f), self.domain_head(_Reverse.apply(f, self.lam)).squeeze(-1)


def _dann_run(ctx: Context, model: _DANN, opt, steps: int, lam_at, clip: float | None, gen):
    src = digit_batches(gen, 32)
    tgt = digit_batches(gen, 32)
    ctx.attach(model, opt)
    for step in range(steps):
        (xs, ys), (xt, _) = next(src), next(tgt)
        xt = (1.0 - xt) + 0.05 * torch.randn(xt.shape, generator=gen)  # the target domain
        model.lam = lam_at(step)
        ctx.targets(ys)
        logits, dom_s = model(xs)
        _, dom_t = model(xt)
        cls = F.cross_entropy(logits, ys)
        dom = F.binary_cross_entropy_with_logits(
            torch.cat([dom_s, dom_t]), torch.cat([torch.zeros(32), torch.ones(32)])
        )
        (cls + dom).backward()
        ctx.grad_norms.append(_grad_norm(model))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(cls)
        opt.zero_grad(set_to_none=True)


def _grl_schedule(step: int, total: int) -> float:
    p = step / total
    return 2.0 / (1.0 + math.exp(-10 * p)) - 1.0


@scenario(
    "h53_dann_grl_digits",
    "sgd_mom",
    "gradient_spike",
    where="features",
    diverges=None,
    onset=100,
    note="GRL coefficient reads a 1e3 sentinel for one step; clipped, no lasting damage",
    heldout=True,
)
def h53_dann_grl_sentinel_spike(ctx: Context) -> None:
    """The gradient-reversal coefficient is looked up per step from a precomputed schedule
    table that ends in a sentinel (1e3); an off-by-one at the first epoch boundary (step 100)
    reads the sentinel for one step. The forward pass (and the loss) are unchanged, but the
    reversed gradient into the feature extractor is ~2000x its size for that step; gradient
    clipping (max norm 2) bounds the update, and training carries on unharmed."""
    gen = seeded(5307)
    model = _DANN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 200

    def lam_at(step: int) -> float:
        return 1e3 if step == 100 else _grl_schedule(step, steps)

    _dann_run(ctx, model, opt, steps, lam_at, 5.0, gen)
    g = ctx.grad_norms
    calm = sorted(g[80:100] + g[101:120])[20]
    ctx.check("gradient norm spiked 20x at 100", g[100] > 20 * calm)
    ctx.check("loss did not spike at 100", ctx.losses[100] < 2 * max(ctx.losses[90:100]))
    after = sum(ctx.losses[180:200]) / 20
    ctx.check(
        "no lasting damage (loss at the end below its pre-spike level)",
        after < 1.1 * (sum(ctx.losses[80:100]) / 20),
    )


@scenario(
    "h53_dann_grl_digits", "adagrad", "healthy", note="the standard GRL schedule", heldout=True
)
def h53_dann_healthy_adagrad(ctx: Context) -> None:
    gen = seeded(5308)
    model = _DANN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    _dann_run(ctx, model, opt, 200, lambda s: _grl_schedule(s, 200), None, gen)
    ctx.check("loss fell", _fell(ctx.losses))


# =================================================================================================
# LISTA: learned ISTA unrolled sparse coder on a generated dictionary
# =================================================================================================


class _LISTA(nn.Module):
    def __init__(self, dictionary: torch.Tensor, iters: int = 8, sign: float = -1.0) -> None:
        super().__init__()
        m, n = dictionary.shape
        lip = float(torch.linalg.matrix_norm(dictionary, 2) ** 2)
        self.We = nn.Linear(m, n, bias=False)
        self.S = nn.Linear(n, n, bias=False)
        self.theta = nn.Parameter(torch.full((n,), 0.05 / lip))
        with torch.no_grad():
            self.We.weight.copy_(dictionary.T / lip)
            # ISTA's recurrence I - D^T D / L (sign=-1)
            self.S.weight.copy_(torch.eye(n) + sign * dictionary.T @ dictionary / lip)
        self.iters = iters

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b = self.We(y)
        z = torch.sign(b) * F.relu(b.abs() - self.theta)
        for _ in range(self.iters):
            c = b + self.S(z)
            z = torch.sign(c) * F.relu(c.abs() - self.theta)
        return z


def _sparse_problem(gen: torch.Generator, m: int = 24, n: int = 48):
    d = torch.randn(m, n, generator=gen)
    d = d / d.norm(dim=0, keepdim=True)

    def batches(batch: int = 64):
        while True:
            z = torch.zeros(batch, n)
            idx = torch.randint(0, n, (batch, 3), generator=gen)
            z.scatter_(1, idx, torch.randn(batch, 3, generator=gen))
            yield z @ d.T + 0.01 * torch.randn(batch, m, generator=gen), z

    return d, batches()


@scenario(
    "h53_lista_sparse_coder",
    "nesterov",
    "loss_divergence",
    diverges="auto",
    onset=60,
    note="hand-written decoupled weight decay with the sign flipped, from step 60",
    heldout=True,
)
def h53_lista_decay_sign_bug(ctx: Context) -> None:
    """From step 60 (the end of warm-up) a hand-written decoupled weight decay is applied to
    LISTA's two matrices as ``w *= 1 + lr * wd`` (meant ``1 - lr * wd``): the filter We and the
    recurrence S grow by a fixed fraction every step, faster than Nesterov SGD pulls them back,
    the codes overshoot more and more and the reconstruction error creeps up."""
    gen = seeded(5309)
    d, batches = _sparse_problem(gen)
    model = _LISTA(d, sign=-1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def decay(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for w in (model.We.weight, model.S.weight):
                    w.mul_(1 + LISTA_DECAY)  # meant: 1 - lr * wd

    fit(ctx, model, opt, batches, 240, loss_fn=F.mse_loss, classifier=False, before=decay)
    at = _diverged_at(ctx.losses)
    ctx.check("trained before 60", ctx.losses[59] < 0.7 * ctx.losses[0])
    w = model.S.weight.detach()
    grew = not bool(torch.isfinite(w).all()) or float(torch.linalg.matrix_norm(w, 2)) > 1
    ctx.check("S's spectral norm grew past 1 (or overflowed)", grew)
    ctx.check("the loss diverged slowly (20+ steps after 60)", at is not None and at > 80)


LISTA_DECAY = 0.005
SVDD_PEAK = 5.0


@scenario(
    "h53_lista_sparse_coder",
    "adadelta",
    "healthy",
    note="ISTA initialisation (Gregor & LeCun)",
    heldout=True,
)
def h53_lista_healthy_adadelta(ctx: Context) -> None:
    gen = seeded(5310)
    d, batches = _sparse_problem(gen)
    model = _LISTA(d, sign=-1.0)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, batches, 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _fell(ctx.losses))


# =================================================================================================
# FlowNetC-style optical flow with a correlation layer, fp16 autocast
# =================================================================================================


class _Correlation(nn.Module):
    """FlowNet's correlation: <f1(x), f2(x + d)> for every displacement |d| <= 2. The
    reference divides by the channel count; this one does not."""

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        pad = F.pad(f2, (2, 2, 2, 2))
        h, w = f1.shape[-2:]
        out = [
            (f1 * pad[:, :, dy : dy + h, dx : dx + w]).sum(1) for dy in range(5) for dx in range(5)
        ]
        return torch.stack(out, 1)


class _PixelMLP(nn.Module):
    """A 3x3-neighbourhood encoder applied at every pixel (im2col + Linear, MSRA init)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(9, width)
        self.fc2 = nn.Linear(width, width)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, _, h, w = img.shape
        patches = F.unfold(img, 3, padding=1).transpose(1, 2)  # b, h*w, 9
        f = F.relu(self.fc2(F.relu(self.fc1(patches))))
        return f.transpose(1, 2).reshape(b, -1, h, w)


class _FlowNetC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _PixelMLP(32)
        self.corr = _Correlation()
        self.regress = nn.Sequential(nn.Linear(25 + 32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        f1, f2 = self.encoder(pair[:, :1]), self.encoder(pair[:, 1:])
        z = torch.cat([self.corr(f1, f2), f1], 1).permute(0, 2, 3, 1)
        return self.regress(z).permute(0, 3, 1, 2)


def _flow_batches(gen: torch.Generator, batch: int = 16, size: int = 12):
    """Smooth random textures and the same texture shifted by (dx, dy) in [-2, 2]^2."""
    while True:
        tex = F.avg_pool2d(torch.rand(batch, 1, size + 8, size + 8, generator=gen), 3, 1, 1)
        shift = torch.randint(-2, 3, (batch, 2), generator=gen)
        f1 = tex[:, :, 4:-4, 4:-4]
        f2 = torch.stack(
            [
                torch.roll(tex[i], (-int(s[1]), -int(s[0])), (1, 2))[:, 4:-4, 4:-4]
                for i, s in enumerate(shift)
            ]
        )
        flow = shift.float()[:, :, None, None].expand(-1, -1, size, size)
        yield torch.cat([f1, f2], 1), flow


@scenario(
    "h53_flownet_corr",
    "sg_ademamix",
    "amp_overflow",
    where="corr",
    diverges=120,
    onset=120,
    note="raw 0-255 frames from step 120: the un-normalised correlation overflows fp16",
    heldout=True,
)
def h53_flownet_corr_fp16_overflow(ctx: Context) -> None:
    """Under fp16 autocast, from step 120 the loader switches to a second shard of raw uint8
    frames (0-255, never divided by 255). The encoder's features grow ~255x, and the
    correlation layer, which sums f1 * f2 over 32 channels without FlowNet's 1/C, squares
    them: its outputs pass fp16's 65504 and become inf. The GradScaler skips every step from
    then on (the loss itself is inf), and the flow regressor never trains again."""
    gen = seeded(5311)
    model = _FlowNetC()
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    peaks: dict[str, dict[int, float]] = {"encoder": {}, "corr": {}}

    def hook(name: str):
        def record(m, i, o) -> None:
            s = len(ctx.losses)
            v = float(o.detach().float().abs().amax())
            peaks[name][s] = max(peaks[name].get(s, 0.0), v)

        return record

    model.encoder.register_forward_hook(hook("encoder"))
    model.corr.register_forward_hook(hook("corr"))

    def raw(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 255.0 if step >= 120 else x), y

    fit(
        ctx,
        model,
        opt,
        _flow_batches(gen),
        150,
        loss_fn=F.mse_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
        alter=raw,
    )
    fin = [_finite(v) for v in ctx.losses]
    ctx.check(
        "loss finite and falling before 120", all(fin[:120]) and ctx.losses[115] < ctx.losses[0]
    )
    ctx.check("loss non-finite from 120", not any(fin[120:]))
    ctx.check("the correlation overflowed at 120", not _finite(peaks["corr"][120]))
    ctx.check("the encoder before it stayed finite", _finite(peaks["encoder"][120]))


# =================================================================================================
# mixup MLP classifier on digits
# =================================================================================================


def _mixup_batches(gen: torch.Generator, batch: int = 48, alpha: float = 0.4, raw_at=None):
    """Digits mixed pairwise with a Beta(alpha, alpha) weight; target: the soft label."""
    beta = torch.distributions.Beta(alpha, alpha)
    for step, (x, y) in enumerate(digit_batches(gen, batch)):
        if raw_at is not None and step - 1 == raw_at:  # the first batch is fit's probe batch
            x = x * 16.0  # a shard written without the /16 normalisation
        lam = beta.sample((batch, 1))
        perm = torch.randperm(batch, generator=gen)
        xm = lam * x + (1 - lam) * x[perm]
        onehot = F.one_hot(y, 10).float()
        yield xm, lam * onehot + (1 - lam) * onehot[perm]


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return -(soft * F.log_softmax(logits, -1)).sum(-1).mean()


@scenario(
    "h53_mixup_mlp_digits",
    "radam",
    "data_outlier",
    diverges=150,
    onset=150,
    note="one batch from a shard without the /16 normalisation",
    heldout=True,
)
def h53_mixup_unnormalised_shard(ctx: Context) -> None:
    """One batch (step 150) comes from a shard that was written without dividing the pixel
    counts by 16: the inputs are 16x too bright, the logits overshoot and the loss spikes.
    RAdam's normalised step keeps the damage small and the loss is back within ~30 steps."""
    gen = seeded(5312)
    model = MLP([64, 128, 128, 10])
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        _mixup_batches(gen, raw_at=150),
        230,
        loss_fn=_soft_ce,
        classifier=False,
    )
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check("loss spiked 3x at 150", ctx.losses[150] > 3 * max(ctx.losses[135:150]))
    ctx.check("recovered within 40 steps", sum(ctx.losses[190:210]) / 20 < 1.2 * pre)


@scenario(
    "h53_mixup_mlp_digits",
    "adam",
    "healthy",
    note="fp16 autocast with a GradScaler",
    heldout=True,
)
def h53_mixup_healthy_fp16(ctx: Context) -> None:
    gen = seeded(5313)
    model = MLP([64, 128, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fit(
        ctx,
        model,
        opt,
        _mixup_batches(gen),
        180,
        loss_fn=_soft_ce,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    ctx.check("loss fell", _fell(ctx.losses))


# =================================================================================================
# PGD adversarial training of an MLP on digits
# =================================================================================================


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps=0.1, alpha=0.04, iters=3):
    delta = torch.zeros_like(x).uniform_(-eps, eps)
    for _ in range(iters):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def _top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 30) -> float:
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "h53_pgd_adv_mlp",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    onset=100,
    note="MultiStepLR gamma=10 typed for 0.1: the LR jumps 10x at step 100",
    heldout=True,
)
def h53_pgd_lr_milestone_gamma_typo(ctx: Context) -> None:
    """PGD adversarial training (eps 0.1, 3 steps) with a step schedule whose ``gamma`` is typed
    10 instead of 0.1: at the milestone (step 100) the learning rate goes from 0.3 to 3.0 instead
    of 0.03. The adversarial loss's top Hessian eigenvalue at that point (~11) puts 2/lambda far
    below the new rate, so plain SGD overshoots along the sharpest direction, the loss blows
    up and the ReLU network is left at chance."""
    gen = seeded(5314)
    model = MLP([64, 128, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[100], gamma=10.0)
    batches = digit_batches(gen, 64)
    ctx.attach(model, opt)
    lam = {}
    for step in range(160):
        x, y = next(batches)
        xa = _pgd(model, x, y)
        if step == 100:
            lam["top"] = _top_eigenvalue(model, xa, y)
            lam["lr"] = opt.param_groups[0]["lr"]
        ctx.targets(y)
        loss = F.cross_entropy(model(xa), y)
        loss.backward()
        ctx.grad_norms.append(_grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        sched.step()
    ctx.check("the new LR is well above 2/lambda (lr * lambda > 4)", lam["lr"] * lam["top"] > 4)
    ctx.check("trained before the milestone", ctx.losses[95] < 0.8 * ctx.losses[0])
    at = _diverged_at(ctx.losses)
    ctx.check("the loss diverged after the milestone", at is not None and at >= 100)


# =================================================================================================
# Noisy student: a student trained on a teacher's pseudo-labels
# =================================================================================================


@scenario(
    "h53_noisy_student_digits",
    "sg_lion",
    "softmax_collapse",
    where="2",
    diverges=None,
    note="student logits divided by the teacher's sharpening temperature 0.05",
    heldout=True,
)
def h53_noisy_student_temperature(ctx: Context) -> None:
    """A teacher trained on 300 labelled digits pseudo-labels the other 1497; the student is
    trained on them with input noise. The config's sharpening temperature (0.05, meant for the
    teacher's soft labels) is applied to the student's logits instead: they are 20x too large,
    and within tens of steps the float32 softmax of most training rows is exactly one-hot, their
    gradient exactly zero."""
    gen = seeded(5315)
    x, y = digits()
    order = torch.randperm(len(y), generator=gen)
    lab, pool = order[:300], order[300:]
    teacher = MLP([64, 64, 10])
    topt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        i = lab[torch.randint(0, 300, (64,), generator=gen)]
        loss = F.cross_entropy(teacher(x[i]), y[i])
        topt.zero_grad()
        loss.backward()
        topt.step()
    with torch.no_grad():
        pseudo = teacher(x[pool]).argmax(-1)
    xp = x[pool]

    def batches():
        while True:
            i = torch.randint(0, len(pool), (64,), generator=gen)
            yield xp[i] + 0.1 * torch.randn(64, 64, generator=gen), pseudo[i]

    student = MLP([64, 128, 10])
    opt = sgo.Lion(student.parameters(), lr=1e-3, fused=False)
    fit(ctx, student, opt, batches(), 250, forward=lambda m, b: m(b) / 0.05)
    with torch.no_grad():
        frac = collapsed_fraction(student(xp) / 0.05, pseudo)
    ctx.check("over half the pool's rows collapsed to one-hot", frac > 0.5)


# =================================================================================================
# Deep SVDD anomaly detector (breast cancer, benign as the normal class)
# =================================================================================================


def _benign():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x[torch.tensor(d.target) == 1]


def _svdd_batches(x: torch.Tensor, gen: torch.Generator, batch: int = 32):
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            yield x[order[i : i + batch]], torch.zeros(batch)


@scenario(
    "h53_deep_svdd_cancer",
    "asgd",
    "loss_of_plasticity",
    where=("2", "3"),
    diverges="auto",
    onset=80,
    note="three steps at 500x the LR (a cyclic schedule's peak typed 5.0 for 5e-2)",
    heldout=True,
)
def h53_svdd_lr_burst_dead_relu(ctx: Context) -> None:
    """Deep SVDD pulls every normal sample's embedding towards a fixed centre c. A cyclic
    learning-rate schedule whose peak is typed 5.0 instead of 5e-2 runs its first cycle's three
    peak steps (from step 80) at 500x the base rate: the huge steps throw the second layer's
    pre-activations far negative, most units of the ReLU after it are dead for every sample
    from then on, their weights never learn again, and the loss never gets back to where it was."""
    gen = seeded(5316)
    x = _benign()
    model = MLP([30, 64, 32, 8])
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    with torch.no_grad():
        c = model(x).mean(0)

    def burst(step: int) -> None:
        opt.param_groups[0]["lr"] = SVDD_PEAK if 80 <= step < 83 else 0.01

    fit(
        ctx,
        model,
        opt,
        _svdd_batches(x, gen),
        160,
        loss_fn=lambda out, _: (out - c).pow(2).sum(-1).mean(),
        classifier=False,
        before=burst,
    )
    with torch.no_grad():
        h2 = model[3](model[2](model[1](model[0](x))))
    ctx.check("over half of layer 2's ReLUs dead", dead_fraction(h2) > 0.5)
