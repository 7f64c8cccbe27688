"""Held-out scenarios, set 42 (``h42_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face Gemma-3n text causal LM, ModernBERT-decoder causal LM, BROS token
(document) classifier, Pix2Struct text decoder and CLIP image classifier from configs;
MuZero-style learned dynamics model on a generated unstable plant, DIAYN skill discriminator on
generated skill states (fp16 autocast), U2-Net-style saliency net (nested residual U-blocks) on
generated blobs, OpenPose-style part-affinity-field net on generated limbs, NRI encoder/decoder
on generated spring systems, CQL offline-RL critic on a generated chain, compressive-memory
transformer on byte text.

Optimizers: SGD, momentum, Nesterov, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop and
steadygrad.optim's Lion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs (no download) ----------------------------------------------


def _gemma3n(vocab: int = 128, layers: int = 2):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        hidden_size=32,
        hidden_size_per_layer_input=8,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"][:layers],
        activation_sparsity_pattern=[0.0] * layers,
        num_kv_shared_layers=0,
        altup_num_inputs=2,
        laurel_rank=4,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Gemma3nForCausalLM(config)


def _modernbert_decoder(vocab: int = 128):
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    config = ModernBertDecoderConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        local_attention=16,
        global_attn_every_n_layers=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        cls_token_id=0,
        sep_token_id=0,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        mlp_dropout=0.0,
    )
    return ModernBertDecoderForCausalLM(config)


def _bros(vocab: int = 64, labels: int = 3):
    from transformers import BrosConfig, BrosForTokenClassification

    config = BrosConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        pad_token_id=0,
    )
    return BrosForTokenClassification(config)


def _pix2struct_text(vocab: int = 128):
    from transformers import Pix2StructTextConfig, Pix2StructTextModel

    config = Pix2StructTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=0,
        decoder_start_token_id=0,
        eos_token_id=0,
    )
    config.initializer_range = 0.02  # the text config alone lacks it (set on the joint config)
    return Pix2StructTextModel(config)


def _clip_classifier(classes: int = 10):
    from transformers import CLIPConfig, CLIPForImageClassification

    config = CLIPConfig(
        text_config={
            "vocab_size": 32,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 4,
            "num_channels": 3,
        },
        num_labels=classes,
    )
    return CLIPForImageClassification(config)


def _hf_lm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


# -- 1. Gemma-3n: a layer frozen by a layer-wise LR table (update ratio) -------------------------


@scenario(
    "h42_hf_gemma3n_text",
    "adamw",
    "update_ratio_out_of_range",
    where="model.layers.1.mlp",
    diverges=None,
    heldout=True,
    note="layer-wise LR table gives the last MLP a factor of 0",
)
def h42_gemma3n_frozen_mlp_adamw(ctx: Context) -> None:
    """A layer-wise LR decay table indexed off by one gives layer 1's MLP a factor of 0.0: its
    weights never move while the rest of the model learns."""
    gen = seeded(4201)
    model = _gemma3n()
    frozen = list(model.model.layers[1].mlp.parameters())
    ids = {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": frozen, "lr": 0.0}], lr=3e-3, weight_decay=0.01
    )
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    fit(ctx, model, opt, text_batches(gen, 8), 160, loss_fn=lm_loss, forward=_hf_lm)
    ctx.check("mlp unchanged", torch.equal(before, model.model.layers[1].mlp.down_proj.weight))
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.85 * sum(ctx.losses[:10]))


# -- 2. ModernBERT-decoder: warm-up to a peak LR past the stability limit -------------------------


@scenario(
    "h42_hf_modernbert_decoder",
    "nadam",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to 1.0 (meant 1e-3)",
)
def h42_modernbert_decoder_warmup_overshoot_nadam(ctx: Context) -> None:
    """A linear warm-up over 240 steps to a peak LR of 1.0 (1e-3 with its exponent lost): the loss falls
    while the LR is small, then the steps outgrow the curvature and the loss climbs."""
    gen = seeded(4202)
    model = _modernbert_decoder()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-5)
    peak, warm = 1.0, 240

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * (step + 1) / warm

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8),
        260,
        loss_fn=lm_loss,
        forward=_hf_lm,
        before=schedule,
    )
    best = min(ctx.losses[:150])
    ctx.check("loss fell early", best < 0.85 * ctx.losses[0])
    late = [v for v in ctx.losses[150:] if v == v]
    ctx.check("loss later rose far above its best", len(late) < 110 or max(late) > best + 1.5)


# -- 3. BROS: token classifier with logits divided by a tiny temperature (softmax collapse) ------


def _bros_set(gen: torch.Generator, n: int = 16, length: int = 24, vocab: int = 64):
    """A small fixed set of 'pages': tokens with boxes; label = which third of the page (top,
    middle, bottom) the token's box lies in."""
    ids = torch.randint(3, vocab, (n, length), generator=gen)
    x0 = torch.rand(n, length, generator=gen) * 0.8
    y0 = torch.rand(n, length, generator=gen) * 0.9
    w, h = 0.15, 0.05
    box = torch.stack([x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h], -1)
    labels = (y0 * 3).long().clamp(max=2)
    return ids, box, labels


@scenario(
    "h42_hf_bros_tokens",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
    note="logits / 0.01 (a temperature meant as 100)",
)
def h42_bros_temperature_collapse_adam(ctx: Context) -> None:
    """Fine-tuning BROS on 16 fixed pages with its token logits divided by a temperature of
    0.01: the float32 softmax of the tokens rounds to exactly one-hot, one after another (their
    gradient is then exactly 0), and the rest creep there."""
    gen = seeded(4203)
    ids, box, labels = _bros_set(gen)
    model = _bros()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batches():
        while True:
            yield (ids, box), labels.reshape(-1)

    def forward(m: nn.Module, xb) -> torch.Tensor:
        logits = m(input_ids=xb[0], bbox=xb[1]).logits / 0.01
        return logits.reshape(-1, logits.shape[-1])

    fit(ctx, model, opt, batches(), 250, forward=forward)
    with torch.no_grad():
        share = collapsed_fraction(forward(model, (ids, box)), labels.reshape(-1))
    ctx.check("a tenth of the tokens collapsed", share > 0.1)


# -- 4. Pix2Struct text decoder: a z-loss with the wrong sign (output-logit divergence) -----------


@scenario(
    "h42_hf_pix2struct_text",
    "adagrad",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=100,
    heldout=True,
    note="z-loss switched on at 100, subtracted",
)
def h42_pix2struct_zloss_sign_adagrad(ctx: Context) -> None:
    """From step 100 a z-loss (1e-2 * log Z^2) is switched on, but subtracted: it rewards a
    growing log-partition, the output logits drift up together and the loss slowly worsens."""
    gen = seeded(4204)
    model = _pix2struct_text()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    log_z: list[float] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x).logits
        forward.last = logits
        return logits

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        lz = torch.logsumexp(forward.last.float(), -1)
        log_z.append(float(lz.mean().detach()))
        return loss - 1e-2 * (lz**2).mean() if step >= 100 else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8),
        420,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss,
    )
    ctx.check("log Z tripled after the onset", log_z[-1] > 3 * log_z[100])
    ctx.check("loss worsened", sum(ctx.losses[-10:]) > sum(ctx.losses[90:100]) + 5.0)


@scenario("h42_hf_pix2struct_text", "adam", "healthy", heldout=True)
def h42_pix2struct_healthy_adam(ctx: Context) -> None:
    gen = seeded(4205)
    model = _pix2struct_text()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, text_batches(gen, 8), 200, loss_fn=lm_loss, forward=_hf_lm)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- 5. CLIP image classifier: one step's loss multiplied by a stale loss scale (Adam's v) --------


def _rgb16(x: torch.Tensor) -> torch.Tensor:
    """8x8 digits as 16x16 three-channel images."""
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)
    return img.expand(-1, 3, -1, -1)


@scenario(
    "h42_hf_clip_image_classifier",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=60,
    heldout=True,
    note="loss x 65536 once (a stale loss scale)",
)
def h42_clip_stale_loss_scale_adam(ctx: Context) -> None:
    """At step 60 a resumed run multiplies the loss by the checkpoint's saved AMP loss scale
    (65536) without unscaling: one giant gradient fills Adam's second moment, which forgets it
    over ~1000 steps, and the updates stay far smaller long after the spike's momentum is gone."""
    gen = seeded(4206)
    model = _clip_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    snaps: list[torch.Tensor] = []

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 60 else loss

    def track(step: int) -> None:
        if step in (20, 50, 120, 150):
            snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        200,
        forward=lambda m, x: m(pixel_values=_rgb16(x)).logits,
        extra_loss=bug,
        before=track,
    )
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- 6. MuZero-style dynamics: unroll lengthened over an unstable plant (exploding gradients) ----


class MuZeroNet(nn.Module):
    """Representation h(obs), dynamics g(state, action) -> next state, reward head r(state)."""

    def __init__(self, obs: int = 4, state: int = 16, actions: int = 3) -> None:
        super().__init__()
        self.actions = actions
        self.representation = nn.Sequential(nn.Linear(obs, state), nn.ReLU())
        self.dynamics = nn.Linear(state + actions, state)
        self.reward = nn.Linear(state, 1)

    def forward(self, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        s = self.representation(obs)
        rewards = []
        for t in range(acts.shape[1]):
            a = F.one_hot(acts[:, t], self.actions).float()
            s = F.relu(self.dynamics(torch.cat([s, a], -1)))  # no hidden-state rescaling
            rewards.append(self.reward(s))
        return torch.cat(rewards, 1)


def _plant_batches(gen: torch.Generator, unroll, batch: int = 32):
    """Trajectories of a generated plant x' = A x + B a with a slightly unstable mode; the
    reward is the first coordinate. ``unroll(step)`` gives the unroll length at a step."""
    a_mat = torch.tensor(
        [[1.02, 0.1, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0.8, 0.1], [0, 0, 0, 0.7]],
    )
    b_mat = torch.randn(3, 4, generator=gen) * 0.3
    step = 0
    while True:
        k = unroll(step)
        x = torch.randn(batch, 4, generator=gen)
        acts = torch.randint(0, 3, (batch, k), generator=gen)
        rewards = []
        s = x
        for t in range(k):
            s = s @ a_mat.T + b_mat[acts[:, t]]
            rewards.append(s[:, :1])
        yield (x, acts), torch.cat(rewards, 1)
        step += 1


@scenario(
    "h42_muzero_dynamics",
    "sgd_mom",
    "exploding_gradients",
    where=("dynamics",),
    diverges="auto",
    onset=100,
    heldout=True,
    note="unroll curriculum 5 -> 60 steps from step 100",
)
def h42_muzero_long_unroll_momentum(ctx: Context) -> None:
    """From step 100 an unroll curriculum lengthens the dynamics unroll from 5 to 60 steps, with
    neither MuZero's hidden-state rescaling nor its 1/2 gradient scale on the dynamics: the
    backward pass through the repeated dynamics layer grows with the unroll and blows up."""
    gen = seeded(4207)
    model = MuZeroNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def unroll(step: int) -> int:
        return 5 if step < 100 else min(60, 5 + (step - 100) // 4)

    dyn_grad: list[float] = []
    model.dynamics.weight.register_hook(lambda g: dyn_grad.append(float(g.norm())))
    fit(
        ctx,
        model,
        opt,
        _plant_batches(gen, unroll),
        240,
        loss_fn=F.mse_loss,
        classifier=False,
        forward=lambda m, b: m(*b),
    )
    early = max(dyn_grad[80:100])
    late = [g for g in dyn_grad[100:] if g == g]
    ctx.check("dynamics gradient grew 100x", bool(late) and max(late) > 100 * early)


# -- 7. DIAYN discriminator under fp16 autocast (benign AMP overflow) ------------------------------


class SkillDiscriminator(nn.Module):
    """q(skill | state): an MLP over states."""

    def __init__(self, state: int = 6, skills: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, skills)
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


def _skill_batches(gen: torch.Generator, batch: int = 64, skills: int = 8, state: int = 6):
    """States visited by skill-conditioned policies: each skill drifts in its own direction
    from the origin, with noise; the discriminator must tell the skill from the state."""
    directions = torch.randn(skills, state, generator=gen)
    directions = directions / directions.norm(dim=1, keepdim=True)
    while True:
        z = torch.randint(0, skills, (batch,), generator=gen)
        t = torch.rand(batch, 1, generator=gen) * 2
        s = t * directions[z] + 0.4 * torch.randn(batch, state, generator=gen)
        yield s, z


@scenario(
    "h42_diayn_discriminator",
    "sgd",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="GradScaler from 2**30, growth every 25 steps",
)
def h42_diayn_fp16_overflow_sgd(ctx: Context) -> None:
    """fp16 autocast with a GradScaler started at 2**30 and growing every 25 steps: it
    overflows, skips those steps and backs off; training itself is fine."""
    gen = seeded(4208)
    model = SkillDiscriminator()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(ctx, model, opt, _skill_batches(gen), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


@scenario("h42_diayn_discriminator", "sgd_nesterov", "healthy", heldout=True)
def h42_diayn_healthy_nesterov(ctx: Context) -> None:
    gen = seeded(4209)
    model = SkillDiscriminator()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, _skill_batches(gen), 200)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- 8. U2-Net-style saliency: a stage's channels die one by one (loss of plasticity) ------------


class RSU(nn.Module):
    """A residual U-block: in-conv, a small encoder-decoder inside, residual sum."""

    def __init__(self, cin: int, cout: int, mid: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, cout, 3, padding=1)
        self.down = nn.Conv2d(cout, mid, 3, padding=1)
        self.bottom = nn.Conv2d(mid, mid, 3, padding=2, dilation=2)
        self.up = nn.Conv2d(2 * mid, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv_in(x))
        d = F.relu(self.down(F.max_pool2d(h, 2)))
        b = F.relu(self.bottom(d))
        u = F.interpolate(torch.cat([b, d], 1), scale_factor=2, mode="bilinear")
        return h + F.relu(self.up(u))


class U2Net(nn.Module):
    """Two RSU stages down, one up, a side output per stage fused into the saliency map."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stage1 = RSU(1, width)
        self.stage2 = RSU(width, 2 * width)
        self.stage3 = RSU(3 * width, width)
        self.side1 = nn.Conv2d(width, 1, 1)
        self.side3 = nn.Conv2d(width, 1, 1)
        self.fuse = nn.Conv2d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.stage1(x)
        h2 = self.stage2(F.max_pool2d(h1, 2))
        h3 = self.stage3(torch.cat([F.interpolate(h2, scale_factor=2), h1], 1))
        return self.fuse(torch.cat([self.side1(h1), self.side3(h3)], 1))


def _saliency_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Noisy images with one bright ellipse; the target is the ellipse's mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        cy, cx = (torch.rand(2, batch, 1, 1, generator=gen) * (size - 6) + 3).unbind(0)
        ry, rx = (torch.rand(2, batch, 1, 1, generator=gen) * 3 + 2).unbind(0)
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
        img = 0.7 * mask + 0.3 * torch.rand(batch, size, size, generator=gen)
        yield img[:, None], mask[:, None]


@scenario(
    "h42_u2net_saliency",
    "sg_lion",
    "loss_of_plasticity",
    where=("stage2.conv_in",),
    diverges=None,
    onset=80,
    heldout=True,
    note="wrong-sign bias penalty on stage2's in-conv",
)
def h42_u2net_dying_stage_lion(ctx: Context) -> None:
    """From step 80 a hand-written "bias sparsity" step with the wrong sign pulls stage 2's
    in-conv biases down every step: its ReLU channels die one by one (a dead channel gets no
    gradient back) and the model learns around it through stage 1's skip."""
    gen = seeded(4210)
    model = U2Net()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)

    def bug(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                model.stage2.conv_in.bias.sub_(0.1)

    fit(
        ctx,
        model,
        opt,
        _saliency_batches(gen),
        220,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        before=bug,
    )
    x, _ = next(_saliency_batches(gen, 64))
    with torch.no_grad():
        h = F.relu(model.stage2.conv_in(F.max_pool2d(model.stage1(x), 2)))
    ctx.check("most of stage2's in-conv channels dead", dead_fraction(h) >= 0.75)


# -- 9. OpenPose-style PAF net: one batch from an un-normalised loader (data outlier) ------------


class PAFNet(nn.Module):
    """Backbone, then stage 1 (PAF branch + keypoint-heatmap branch), then a refinement stage
    over backbone features and stage 1's maps."""

    def __init__(self, width: int = 16, keypoints: int = 2, limbs: int = 1) -> None:
        super().__init__()
        out = 2 * limbs + keypoints
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)
        )
        self.paf1 = nn.Conv2d(width, 2 * limbs, 3, padding=1)
        self.heat1 = nn.Conv2d(width, keypoints, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(width + out, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, out, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.backbone(x))
        s1 = torch.cat([self.paf1(f), self.heat1(f)], 1)
        s2 = self.refine(torch.cat([f, s1], 1))
        return torch.stack([s1, s2])  # both stages are supervised


def _limb_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Images of one limb (a line between two keypoints); targets: 2 PAF channels (the unit
    vector along the limb near it) and 2 keypoint heatmaps."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        p = torch.rand(batch, 2, 2, generator=gen) * (size - 4) + 2
        a, b = p[:, 0], p[:, 1]
        v = b - a
        length = v.norm(dim=1, keepdim=True).clamp(min=1.0)
        u = v / length
        rel = torch.stack([xx, yy], -1)[None] - a[:, None, None]
        along = (rel * u[:, None, None]).sum(-1)
        across = (rel[..., 0] * u[:, None, None, 1] - rel[..., 1] * u[:, None, None, 0]).abs()
        on = ((along >= 0) & (along <= length[:, :, None]) & (across <= 1.0)).float()
        img = on + 0.1 * torch.rand(batch, size, size, generator=gen)
        paf = on[:, None] * u[:, :, None, None]
        heat = torch.stack(
            [
                torch.exp(-((xx - q[:, 0, None, None]) ** 2 + (yy - q[:, 1, None, None]) ** 2) / 2)
                for q in (a, b)
            ],
            1,
        )
        target = torch.cat([paf, heat], 1)
        yield img[:, None], target


def _paf_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sum(F.mse_loss(stage, target) for stage in pred)


@scenario(
    "h42_openpose_paf",
    "adamax",
    "data_outlier",
    diverges=150,
    onset=150,
    heldout=True,
    note="one batch left in 0..255",
)
def h42_openpose_raw_pixels_adamax(ctx: Context) -> None:
    """At step 150 one batch comes from a loader path that skips the /255 normalisation: its
    pixels are in 0..255 and the loss spikes for that step."""
    gen = seeded(4212)
    model = PAFNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x * 255.0, y) if step == 150 else (x, y)

    fit(
        ctx,
        model,
        opt,
        _limb_batches(gen),
        230,
        loss_fn=_paf_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))
    ctx.check("loss fell before", sum(ctx.losses[140:150]) < 0.7 * sum(ctx.losses[:10]))


# -- 10. NRI: an inverse-distance edge feature meets two coincident particles (NaN) --------------


class InverseDistance(nn.Module):
    """Edge feature 1/|x_i - x_j| from the last observed positions, self-pairs masked (and no
    epsilon: distinct particles are assumed never to coincide)."""

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        n = pos.shape[1]
        eye = torch.eye(n)
        d = (pos[:, :, None] - pos[:, None, :]).norm(dim=-1)
        return (1.0 - eye) / (d + eye)


class NRIEncoder(nn.Module):
    def __init__(self, steps: int, hidden: int = 32, edge_types: int = 2) -> None:
        super().__init__()
        self.node = nn.Sequential(nn.Linear(steps * 4, hidden), nn.ELU())
        self.inv_dist = InverseDistance()
        self.edge = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ELU())
        self.logits = nn.Linear(hidden, edge_types)

    def forward(self, traj: torch.Tensor) -> torch.Tensor:
        b, t, n, _ = traj.shape
        h = self.node(traj.permute(0, 2, 1, 3).reshape(b, n, t * 4))
        inv = self.inv_dist(traj[:, -1, :, :2])[..., None]
        pair = torch.cat(
            [h[:, :, None].expand(-1, -1, n, -1), h[:, None].expand(-1, n, -1, -1)], -1
        )
        return self.logits(self.edge(torch.cat([pair, inv], -1)))


class NRIDecoder(nn.Module):
    def __init__(self, hidden: int = 32, edge_types: int = 2) -> None:
        super().__init__()
        self.messages = nn.ModuleList(nn.Linear(8, hidden) for _ in range(edge_types))
        self.out = nn.Sequential(nn.Linear(4 + hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, state: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        n = state.shape[1]
        pair = torch.cat(
            [state[:, :, None].expand(-1, -1, n, -1), state[:, None].expand(-1, n, -1, -1)], -1
        )
        msg = sum(edges[..., k : k + 1] * torch.tanh(f(pair)) for k, f in enumerate(self.messages))
        agg = msg.sum(2)
        return self.out(torch.cat([state, agg], -1))


class NRI(nn.Module):
    """Encoder infers edge types from observed steps; the decoder predicts the state's rate of
    change (velocity and acceleration) at the last step."""

    def __init__(self, steps: int = 6) -> None:
        super().__init__()
        self.encoder = NRIEncoder(steps)
        self.decoder = NRIDecoder()

    def forward(self, traj: torch.Tensor) -> torch.Tensor:
        edges = F.softmax(self.encoder(traj), -1)
        return self.decoder(traj[:, -1], edges)


def _spring_batches(gen: torch.Generator, batch: int = 16, n: int = 4, steps: int = 6):
    """Particles joined by random springs: (observed steps, rate of change of the state
    [x, y, vx, vy] over the next step)."""
    while True:
        springs = (torch.rand(batch, n, n, generator=gen) < 0.5).float()
        springs = torch.triu(springs, 1)
        springs = springs + springs.transpose(1, 2)
        pos = torch.randn(batch, n, 2, generator=gen)
        vel = 0.3 * torch.randn(batch, n, 2, generator=gen)
        frames = []
        for _ in range(steps + 1):
            frames.append(torch.cat([pos, vel], -1))
            force = -(springs[..., None] * (pos[:, :, None] - pos[:, None])).sum(2)
            vel = vel + 0.1 * force
            pos = pos + 0.1 * vel
        traj = torch.stack(frames, 1)
        yield traj[:, :-1], (traj[:, -1] - traj[:, -2]) / 0.1


@scenario(
    "h42_nri_springs",
    "rmsprop",
    "nonfinite",
    where="encoder.inv_dist",
    diverges=140,
    onset=140,
    heldout=True,
    note="two coincident particles in one sample",
)
def h42_nri_coincident_particles_rmsprop(ctx: Context) -> None:
    """At step 140 one simulation has two particles at the same last position (a duplicated
    particle id): the inverse distance is inf for them and 0 * inf turns the loss NaN."""
    gen = seeded(4213)
    model = NRI()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[3, :, 1] = x[3, :, 0]  # particle 1 is a copy of particle 0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _spring_batches(gen),
        170,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    finite = [v == v and abs(v) != float("inf") for v in ctx.losses]
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])
    ctx.check("loss fell before", sum(ctx.losses[130:140]) < 0.8 * sum(ctx.losses[:10]))


@scenario("h42_nri_springs", "sgd", "healthy", heldout=True)
def h42_nri_healthy_sgd(ctx: Context) -> None:
    gen = seeded(4214)
    model = NRI()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fit(ctx, model, opt, _spring_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- 11. CQL critic: the conservative penalty switched on with the wrong sign (slow divergence) ---


class QNet(nn.Module):
    def __init__(self, state: int = 6, actions: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, actions)
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


def _offline_chain(gen: torch.Generator, size: int = 4096, states: int = 6, actions: int = 4):
    """An offline dataset on a 6-state chain from a behaviour policy that mostly moves right
    (action 0 right, 1 left, 2-3 stay): reward 1 on reaching the last state."""
    s = torch.randint(0, states, (size,), generator=gen)
    behaviour = torch.rand(size, generator=gen)
    a = torch.where(behaviour < 0.7, 0, torch.where(behaviour < 0.9, 1, 2 + (behaviour > 0.95)))
    move = torch.where(a == 0, 1, torch.where(a == 1, -1, 0))
    s2 = (s + move).clamp(0, states - 1)
    r = (s2 == states - 1).float()
    eye = torch.eye(states)
    return eye[s], a, r, eye[s2]


def _cql_loop(ctx: Context, model: QNet, opt, steps: int, alpha_from, gen: torch.Generator):
    s, a, r, s2 = _offline_chain(gen)
    target = QNet()
    target.load_state_dict(model.state_dict())
    for p in target.parameters():
        p.requires_grad_(False)
    gamma, tau = 0.95, 0.05
    ctx.attach(model, opt)
    q_max: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(a), (64,), generator=gen)
        q = model(s[idx])
        q_sa = q.gather(1, a[idx, None])[:, 0]
        with torch.no_grad():
            y = r[idx] + gamma * target(s2[idx]).max(1).values
        td = F.mse_loss(q_sa, y)
        alpha = alpha_from(step)
        penalty = (torch.logsumexp(q, 1) - q_sa).mean()
        (td + alpha * penalty).backward()
        opt.step()
        ctx.step(td)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pt, p in zip(target.parameters(), model.parameters(), strict=True):
                pt.lerp_(p, tau)
        q_max.append(float(q.detach().max()))
    return q_max


@scenario(
    "h42_cql_critic",
    "sgd_mom",
    "loss_divergence",
    diverges="auto",
    onset=100,
    heldout=True,
    note="CQL penalty switched on at 100 as -alpha",
)
def h42_cql_penalty_sign_momentum(ctx: Context) -> None:
    """After 100 steps of plain TD the conservative penalty is switched on with alpha = -0.5 (a
    sign flip when porting a "maximise" objective): out-of-data actions' Q-values are pushed
    up, bootstrapping carries them into every target, and the TD loss creeps up from ~50 steps
    after the switch and keeps climbing."""
    gen = seeded(4215)
    model = QNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    q_max = _cql_loop(ctx, model, opt, 320, lambda step: -0.5 if step >= 100 else 0.0, gen)
    ctx.check("Q-values over 1.5x the largest true value 1/(1-gamma) = 20", max(q_max[100:]) > 30)
    ctx.check(
        "TD loss rose over 50+ steps",
        min(ctx.losses[-10:]) > 4 * max(1e-3, min(ctx.losses[90:100])),
    )


@scenario("h42_cql_critic", "radam", "healthy", heldout=True)
def h42_cql_healthy_radam(ctx: Context) -> None:
    gen = seeded(4216)
    model = QNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-4)
    q_max = _cql_loop(ctx, model, opt, 300, lambda step: 0.5, gen)
    ctx.check("Q stayed bounded", max(q_max) < 25)
    ctx.check("TD loss fell", sum(ctx.losses[-50:]) / 50 < 0.85 * sum(ctx.losses[:20]) / 20)


# -- 12. compressive-memory transformer: q/k weights grow (attention-logit growth) --------------


class MemoryAttention(nn.Module):
    """Causal self-attention over the segment plus a compressed memory of earlier segments."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        m = memory.shape[1]
        kv = torch.cat([memory, x], 1)
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(kv).reshape(b, m + t, self.heads, -1).transpose(1, 2)
        v = self.v(kv).reshape(b, m + t, self.heads, -1).transpose(1, 2)
        allowed = torch.ones(t, m + t, dtype=torch.bool)
        allowed[:, m:] = torch.ones(t, t, dtype=torch.bool).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class CompressiveBlock(nn.Module):
    def __init__(self, dim: int, heads: int, rate: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MemoryAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.compress = nn.Conv1d(dim, dim, rate, stride=rate)  # old memories, 2:1

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln1(x)
        x = x + self.attn(h, memory)
        x = x + self.ff(self.ln2(x))
        squeezed = self.compress(h.detach().transpose(1, 2)).transpose(1, 2)
        return x, torch.cat([memory, squeezed], 1)[:, -16:]


class CompressiveTransformer(nn.Module):
    """Reads a window as consecutive segments; each block keeps a compressed memory of the
    previous segments' inputs."""

    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(16, dim)
        self.blocks = nn.ModuleList(CompressiveBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, segment: int = 16) -> torch.Tensor:
        b = idx.shape[0]
        memories = [torch.zeros(b, 0, self.tok.embedding_dim) for _ in self.blocks]
        outs = []
        for s in range(0, idx.shape[1], segment):
            x = (
                self.tok(idx[:, s : s + segment])
                + self.pos.weight[: min(segment, idx.shape[1] - s)]
            )
            for i, block in enumerate(self.blocks):
                x, memories[i] = block(x, memories[i])
            outs.append(self.head(self.ln_f(x)))
        return torch.cat(outs, 1)


@scenario(
    "h42_compressive_memory_transformer",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    onset=80,
    heldout=True,
    note="hand-written q/k decay with the wrong sign from step 80",
)
def h42_compressive_qk_growth_adamw(ctx: Context) -> None:
    """From step 80 a hand-written decoupled decay meant for the query/key projections only
    (AdamW's own decay is 0 for them) has its sign flipped: q and k grow 2.5% a step, the
    attention logits grow as their product and the attention saturates to one-hot: learning
    stops improving (the loss wanders, it does not blow up)."""
    gen = seeded(4217)
    model = CompressiveTransformer()
    qk = [p for n, p in model.named_parameters() if ".attn.q." in n or ".attn.k." in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": qk, "weight_decay": 0.0}], lr=2e-3
    )

    def grow(step: int) -> None:
        if step >= 80:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1 + 0.025)  # meant: 1 - lr * decay

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 32),
        260,
        loss_fn=lm_loss,
        before=grow,
    )
    x, _ = next(text_batches(gen, 8, 32))
    with torch.no_grad():
        h = model.blocks[0].ln1(model.tok(x[:, :16]) + model.pos.weight)
        att = model.blocks[0].attn
        q = att.q(h).reshape(8, 16, 2, -1).transpose(1, 2)
        k = att.k(h).reshape(8, 16, 2, -1).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    p = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
    top = p.max(-1).values[..., 4:]  # rows with at least 5 keys to choose from
    ctx.check("attention logits over 100", float(logits.abs().max()) > 100)
    ctx.check(
        "most attention rows saturated (top weight > 0.99)",
        float((top > 0.99).float().mean()) > 0.5,
    )
