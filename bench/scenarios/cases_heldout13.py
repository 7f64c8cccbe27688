"""Held-out scenarios, set 13 (``h13_``): new families, causes and optimizers.

Families: Hugging Face ModernBERT (classifier and masked LM), Pegasus (encoder-decoder), BigBird
(encoder classifier, full attention on short inputs), MobileViT (image classifier), HuBERT
(audio classifier on generated tones), PatchTST (forecaster on generated series) and Decision
Transformer (generated trajectories), all built from configs; written here: N-BEATS forecaster,
SimCLR-style contrastive CNN (NT-Xent), Neural Process, GraphSAGE on a generated graph, and a
LoRA fine-tune (frozen base + low-rank adapters). Optimizers: SGD, SGD with momentum / Nesterov,
Adam, AdamW, NAdam, RAdam, Adamax, RMSprop, Adagrad, and steadygrad.optim's AdaBelief and Lion.

Written without reading ``steadygrad/diagnose/`` (beyond the cause docstrings of its rules),
``steadygrad/monitor/`` or any other held-out file, and never run on steadygrad while written:
each scenario was adjusted only with a stand-in context that attaches nothing, until its own
checks held (healthy ones: until they trained normally).
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
    dead_fraction,
    digit_batches,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces --------------------------------------------------------------------------------


def _modernbert(labels: int | None = 2, vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import ModernBertConfig, ModernBertForMaskedLM
    from transformers import ModernBertForSequenceClassification as Classifier

    config = ModernBertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        global_attn_every_n_layers=1,
        local_attention=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        mlp_dropout=0.0,
        classifier_dropout=0.0,
        num_labels=labels or 2,
        attn_implementation="eager",
    )
    return Classifier(config) if labels else ModernBertForMaskedLM(config)


def _series_batches(
    gen: torch.Generator, batch: int = 32, context: int = 64, horizon: int = 16, waves: int = 2
):
    """Noisy sums of ``waves`` sines with random periods and phases: (past, future) windows."""
    t = torch.arange(context + horizon, dtype=torch.float32)
    while True:
        period = 8 + 24 * torch.rand(batch, waves, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, waves, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, waves, 1, generator=gen)
        s = (amp * torch.sin(2 * math.pi * t / period + phase)).sum(1)
        s = s + 0.1 * torch.randn(s.shape, generator=gen)
        yield s[:, :context], s[:, context:]


def _flat_sum(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- ModernBERT: attention logits grow (a compounding "temperature" schedule) ---------------------


@scenario(
    "hf_modernbert",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.1.attn", "model.layers.1.attn.Wqkv"),
    diverges=None,
    onset=40,
    heldout=True,
)
def h13_attn_growth_modernbert_adamw(ctx: Context) -> None:
    """An attention-sharpening schedule meant to set layer 1's query/key scale from a table
    instead multiplies the query and key rows of ``Wqkv`` by 1.015 every step from step 40:
    the factor compounds, the attention logits grow ~1.03x a step."""
    gen = seeded(1301)
    model = _modernbert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    wqkv = model.model.layers[1].attn.Wqkv
    dim = wqkv.in_features
    seen: dict[int, float] = {}  # step -> largest attention logit of layer 1
    now = [0]

    def logits_hook(module: nn.Module, args, out: torch.Tensor) -> None:
        q, k = out[..., :dim], out[..., dim : 2 * dim]
        b, t, _ = q.shape
        q, k = (z.reshape(b, t, 2, -1).transpose(1, 2) for z in (q, k))
        seen[now[0]] = float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(q.shape[-1]))

    wqkv.register_forward_hook(logits_hook)

    def sharpen(step: int) -> None:
        now[0] = step
        if step >= 40:
            with torch.no_grad():
                wqkv.weight[: 2 * dim].mul_(1.015)

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, 32, 16),
        220,
        before=sharpen,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("attention logits grew 20x after step 40", seen[219] > 20 * seen[40])


# -- Pegasus: output logits driven up (a z-loss with its sign flipped) -----------------------------


def _reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 12):
    """Copy-reverse task on stdlib bytes: input, decoder input (shifted right), target."""
    for x, _ in text_batches(gen, batch, length, 128):
        x = x.clamp(min=3)
        target = x.flip(1)
        dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), target[:, :-1]], 1)
        yield torch.stack([x, dec], 1), target


def _pegasus():
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    config = PegasusConfig(
        vocab_size=128,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return PegasusForConditionalGeneration(config)


@scenario(
    "hf_pegasus",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h13_zloss_sign_pegasus_adam(ctx: Context) -> None:
    """A z-loss (penalty on the squared log-partition) added from step 60 with its sign flipped:
    it rewards large log-partitions, and the output logits climb without bound."""
    gen = seeded(1302)
    model = _pegasus()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fwd = lambda m, x: m(input_ids=x[:, 0], decoder_input_ids=x[:, 1]).logits  # noqa: E731
    peaks: dict[int, float] = {}  # step -> largest |output logit|
    now = [0]

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        now[0] = step + 1
        return loss - 0.05 * last[0] if step >= 60 else loss

    last: list[torch.Tensor] = [torch.zeros(())]

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = fwd(m, x)
        last[0] = (torch.logsumexp(logits.float(), -1) ** 2).mean()
        peaks[now[0]] = float(logits.detach().abs().max())
        return logits

    fit(
        ctx,
        model,
        opt,
        _reverse_batches(gen),
        260,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss,
        classifier=False,
    )
    ctx.check("output logits 10x their step-60 peak", peaks[259] > 10 * peaks[60])


# -- BigBird: the learning rate raised mid-run above the stability limit -------------------------


def _bigbird():
    from transformers import BigBirdConfig, BigBirdForSequenceClassification

    config = BigBirdConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        attention_type="original_full",  # 16-token inputs: block-sparse would fall back anyway
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        pad_token_id=0,
    )
    return BigBirdForSequenceClassification(config)


@scenario(
    "hf_bigbird",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    heldout=True,
)
def h13_lr_raised_bigbird_nesterov(ctx: Context) -> None:
    """A resumed run reads its learning rate from the wrong config field at step 150: the LR
    jumps from 0.05 to 3.0 with Nesterov momentum 0.9, far past 2/sharpness."""
    gen = seeded(1303)
    model = _bigbird()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 3.0

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, 32, 16),
        200,
        before=resume,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    before = sum(ctx.losses[130:150]) / 20
    broke = [v for v in ctx.losses[150:] if not math.isfinite(v) or v > 3 * before]
    ctx.check("loss 3x its pre-150 level or non-finite", bool(broke))


# -- MobileViT: one corrupt batch ------------------------------------------------------------------


def _mobilevit():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = MobileViTConfig(
        num_channels=1,
        image_size=32,
        patch_size=2,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2,
        expand_ratio=2.0,
        mlp_ratio=2.0,
        conv_kernel_size=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        num_labels=10,
    )
    return MobileViTForImageClassification(config)


def _digit_images(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="bilinear")
    return m(pixel_values=img).logits


@scenario("hf_mobilevit", "adagrad", "amp_overflow", diverges=None, heldout=True)
def h13_amp_overflow_mobilevit_adagrad(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**30 and growing every 25 steps: it
    overflows a few times, skips those steps and backs off; training carries on."""
    gen = seeded(1304)
    model = _mobilevit()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        150,
        scaler=scaler,
        amp=True,
        forward=_digit_images,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


# -- HuBERT: a silent clip makes the per-clip normaliser divide 0 by 0 -----------------------------


class ClipStandardize(nn.Module):
    """Zero mean, unit variance per clip (as many audio pipelines do before the encoder)."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        centred = wave - wave.mean(-1, keepdim=True)
        return centred / centred.pow(2).mean(-1, keepdim=True).sqrt()


class ToneClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import HubertConfig, HubertForSequenceClassification

        config = HubertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16, 16),
            conv_stride=(5, 4, 4),
            conv_kernel=(10, 8, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            feat_extract_norm="group",
            hidden_dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            feat_proj_dropout=0.0,
            final_dropout=0.0,
            layerdrop=0.0,
            mask_time_prob=0.0,
            num_labels=4,
            classifier_proj_size=16,
        )
        self.norm = ClipStandardize()
        self.hubert = HubertForSequenceClassification(config)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.hubert(input_values=self.norm(wave)).logits


def _tone_batches(gen: torch.Generator, batch: int = 16, length: int = 800):
    """Four tone classes (frequency bands) with random phase, amplitude and noise."""
    t = torch.arange(length, dtype=torch.float32) / 8000.0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 300.0 * (1 + y.float()) * (0.9 + 0.2 * torch.rand(batch, generator=gen))
        phase = 2 * math.pi * torch.rand(batch, generator=gen)
        amp = 0.2 + torch.rand(batch, generator=gen)
        wave = amp[:, None] * torch.sin(2 * math.pi * freq[:, None] * t + phase[:, None])
        yield wave + 0.05 * torch.randn(wave.shape, generator=gen), y


@scenario(
    "hf_hubert",
    "rmsprop",
    "nonfinite",
    where="norm",
    diverges=110,
    onset=110,
    heldout=True,
)
def h13_nan_silent_clip_hubert_rmsprop(ctx: Context) -> None:
    """At step 110 one clip in the batch is digital silence (all zeros): the per-clip
    standardiser divides 0 by 0 and its output is NaN."""
    gen = seeded(1305)
    model = ToneClassifier()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, _tone_batches(gen), 140, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 110, not at 110", all(finite[:110]) and not finite[110])
    ctx.check("learning before the bad clip", ctx.losses[100] < 0.8 * ctx.losses[0])


# -- PatchTST: Adam's second moment poisoned by one huge gradient ---------------------------------


def _patchtst():
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    config = PatchTSTConfig(
        num_input_channels=1,
        context_length=64,
        prediction_length=16,
        patch_length=8,
        patch_stride=8,
        d_model=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=64,
        dropout=0.0,
        attention_dropout=0.0,
        positional_dropout=0.0,
        path_dropout=0.0,
        ff_dropout=0.0,
        head_dropout=0.0,
        scaling="std",
    )
    return PatchTSTForPrediction(config)


def _patchtst_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(past_values=x[..., None]).prediction_outputs[..., 0]


@scenario(
    "hf_patchtst",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=80,
    heldout=True,
)
def h13_adam_poisoned_patchtst(ctx: Context) -> None:
    """At step 80 the loss is multiplied by 2**16, a static loss scale meant for a float16 run
    left on in a float32 one for a single step (a resumed-config bug): Adam's v (beta2 0.999)
    keeps the squared spike for hundreds of steps and the updates shrink."""
    gen = seeded(1306)
    model = _patchtst()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))
    snaps: list[torch.Tensor] = []

    def track(step: int) -> None:
        if step in (40, 70, 150, 180):
            snaps.append(_flat_sum(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**16 if step == 80 else loss

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen, waves=1),
        220,
        loss_fn=F.mse_loss,
        forward=_patchtst_forward,
        extra_loss=bug,
        before=track,
        classifier=False,
    )
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- Decision Transformer: a bootstrapped return target with discount > 1 -------------------------


def _decision_transformer():
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=4,
        act_dim=2,
        hidden_size=32,
        max_ep_len=64,
        n_layer=2,
        n_head=2,
        n_inner=64,
        n_positions=96,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        action_tanh=False,
    )
    return DecisionTransformerModel(config)


def _trajectories(gen: torch.Generator, batch: int = 16, length: int = 16):
    """A linear system driven by a noisy linear policy: states, actions, rewards, returns."""
    a_mat = 0.8 * torch.eye(4) + 0.1 * torch.roll(torch.eye(4), 1, 1)
    policy = torch.tensor([[0.5, -0.3, 0.2, 0.1], [-0.2, 0.4, 0.1, -0.3]])
    b_mat = torch.tensor([[1.0, 0], [0, 1.0], [0.5, 0.5], [0, 0]])
    while True:
        s = torch.randn(batch, 4, generator=gen)
        states, actions, rewards = [], [], []
        for _ in range(length):
            a = s @ policy.T + 0.1 * torch.randn(batch, 2, generator=gen)
            states.append(s)
            actions.append(a)
            rewards.append(-(s**2).sum(1, keepdim=True) * 0.1)
            s = s @ a_mat.T + a @ b_mat.T * 0.1
        st, ac, rw = (torch.stack(z, 1) for z in (states, actions, rewards))
        rtg = rw.flip(1).cumsum(1).flip(1) / 10.0  # returns scaled down, as DT training does
        yield st, ac, rw, rtg, torch.arange(length).expand(batch, length)


@scenario(
    "hf_decision_transformer",
    "nadam",
    "loss_divergence",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h13_bootstrap_discount_dt_nadam(ctx: Context) -> None:
    """From step 60 the return head is trained against reward + discount * its own next
    prediction (detached), with discount 1.05 (a typo for 0.95): a target that chases its own
    output grows without a fixed point, and the loss climbs slowly."""
    gen = seeded(1307)
    model = _decision_transformer()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    data = _trajectories(gen)
    ctx.attach(model, opt)
    for step in range(300):
        st, ac, rw, rtg, ts = next(data)
        _, action_preds, return_preds = model(
            states=st, actions=ac, rewards=rw, returns_to_go=rtg, timesteps=ts, return_dict=False
        )
        act_loss = F.mse_loss(action_preds, ac)
        if step < 60:
            target = rtg
        else:  # the window's last step has no terminal mask: it bootstraps from itself
            nxt = torch.cat([return_preds[:, 1:], return_preds[:, -1:]], 1)
            target = rw + 1.05 * nxt.detach()
        loss = act_loss + F.mse_loss(return_preds, target)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    early = sum(ctx.losses[50:60]) / 10
    ctx.check("loss 5x its step-60 level by the end", ctx.losses[-1] > 5 * early)


# -- N-BEATS: the backcast added instead of subtracted --------------------------------------------


class NBeatsBlock(nn.Module):
    def __init__(self, context: int, horizon: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(context, width)
        self.fc2 = nn.Linear(width, width)
        self.backcast = nn.Linear(width, context)
        self.forecast = nn.Linear(width, horizon)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.backcast(h), self.forecast(h)


class NBeats(nn.Module):
    """Generic N-BEATS: a stack of blocks, each explaining part of the residual input."""

    def __init__(self, context=64, horizon=16, width=64, blocks=6, residual_sign=-1.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(NBeatsBlock(context, horizon, width) for _ in range(blocks))
        self.residual_sign = residual_sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forecast = 0.0
        for block in self.blocks:
            back, fore = block(x)
            x = x + self.residual_sign * back
            forecast = forecast + fore
        return forecast


@scenario(
    "nbeats",
    "sgd",
    "exploding_gradients",
    where=("blocks.7.fc2", "blocks.7.fc1", "blocks.7"),
    diverges="auto",
    onset=50,
    heldout=True,
)
def h13_penalty_sign_nbeats_sgd(ctx: Context) -> None:
    """From step 50 a norm penalty meant to keep the last block's hidden layer small is added
    with its sign flipped: ``blocks.7.fc2``'s weights grow, the gradient of the layer that feeds
    it grows with them (backpropagation multiplies by those weights), and the run ends in NaN."""
    gen = seeded(1308)
    model = NBeats(blocks=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    grads: dict[str, list[float]] = {"blocks.0.fc1": [], "blocks.7.fc1": []}
    for name in grads:
        model.get_submodule(name).weight.register_hook(
            lambda g, name=name: grads[name].append(float(g.norm()))
        )
    w = model.blocks[7].fc2.weight
    start = float(w.detach().norm())

    grown = [0.0]

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 110:
            grown[0] = float(w.detach().norm())
        return loss - 1.0 * w.pow(2).sum() if step >= 50 else loss  # meant: + 1.0 * ...

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        250,
        loss_fn=F.mse_loss,
        extra_loss=penalty,
        classifier=False,
    )
    g = grads["blocks.7.fc1"]
    ctx.check("blocks.7.fc1's gradient 20x its step-50 norm by 130", max(g[50:130]) > 20 * g[50])
    ctx.check("blocks.7.fc2's weights 3x by 110", grown[0] > 3 * start)
    ctx.check("the run ended non-finite", not math.isfinite(ctx.losses[-1]))


# -- SimCLR: a head layer swapped after the optimizer was built -----------------------------------


class SimCLRNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(x.reshape(-1, 1, 8, 8)))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    img = x.reshape(-1, 1, 8, 8)
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    img = torch.roll(img, shifts=shift, dims=(2, 3))
    scale = 0.7 + 0.6 * torch.rand(img.shape[0], 1, 1, 1, generator=gen)
    return (img * scale + 0.1 * torch.randn(img.shape, generator=gen)).flatten(1)


def nt_xent(z: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss over 2N views (rows i and i + N are a positive pair)."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def _view_pairs(gen: torch.Generator, batch: int = 64):
    for x, _ in digit_batches(gen, batch):
        yield torch.cat([_augment(x, gen), _augment(x, gen)]), torch.zeros(())


@scenario(
    "simclr",
    "sg_adabelief",
    "update_ratio_out_of_range",
    where="proj.2",
    diverges=None,
    heldout=True,
)
def h13_frozen_swapped_head_simclr_adabelief(ctx: Context) -> None:
    """The projection head's last layer is replaced (to change the embedding size) after the
    optimizer was built: the new layer gets gradients but is in no parameter group, so it
    never moves."""
    gen = seeded(1309)
    model = SimCLRNet()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3, fused=False)
    model.proj[2] = nn.Linear(64, 32)
    before = model.proj[2].weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        _view_pairs(gen),
        160,
        loss_fn=lambda z, _: nt_xent(z),
        classifier=False,
    )
    ctx.check("proj.2 unchanged", torch.equal(before, model.proj[2].weight))
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.9 * sum(ctx.losses[:10]))


# -- Neural Process: a warm restart kills the decoder's ReLUs -------------------------------------


class NeuralProcess(nn.Module):
    """Conditional neural process: mean-pooled context encoding, Gaussian decoder."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(2, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
        )
        self.decoder = nn.Sequential(
            nn.Linear(width + 1, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 2),
        )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        xc, yc, xt = batch[..., 0:1], batch[..., 1:2], batch[..., 2:3]
        r = self.encoder(torch.cat([xc, yc], -1)).mean(1, keepdim=True)
        return self.decoder(torch.cat([r.expand(-1, xt.shape[1], -1), xt], -1))


def _np_batches(gen: torch.Generator, batch: int = 16, points: int = 20):
    """Random sine functions: context (x, y) pairs, target x, target y."""
    while True:
        a = 0.5 + 1.5 * torch.rand(batch, 1, 1, generator=gen)
        ph = math.pi * torch.rand(batch, 1, 1, generator=gen)
        xc = 6 * torch.rand(batch, points, 1, generator=gen) - 3
        xt = 6 * torch.rand(batch, points, 1, generator=gen) - 3
        yc, yt = a * torch.sin(xc + ph), a * torch.sin(xt + ph)
        yield torch.cat([xc, yc, xt], -1), yt


def _gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mean, raw = out[..., 0:1], out[..., 1:2]
    std = 0.05 + F.softplus(raw)
    return (torch.log(std) + 0.5 * ((y - mean) / std) ** 2).mean()


@scenario(
    "neural_process",
    "radam",
    "loss_of_plasticity",
    where=("decoder.2", "decoder.3"),
    diverges=None,
    onset=100,
    heldout=True,
)
def h13_dead_decoder_restart_np_radam(ctx: Context) -> None:
    """A warm restart at step 100 sets the learning rate to 0.1 (meant 3e-3, the run's base)
    for 10 steps: the big steps push most of the decoder's second layer's units negative for
    every input, and a dead ReLU gets no gradient to come back; the loss never regains its
    pre-restart level."""
    gen = seeded(1310)
    model = NeuralProcess()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)

    dead_before = [1.0]

    def restart(step: int) -> None:
        if step == 100:
            dead_before[0] = _np_dead(model, _np_batches(torch.Generator().manual_seed(7), 64))
        opt.param_groups[0]["lr"] = 0.1 if 100 <= step < 110 else 3e-3

    fit(
        ctx,
        model,
        opt,
        _np_batches(gen),
        220,
        loss_fn=_gaussian_nll,
        before=restart,
        classifier=False,
    )
    dead = _np_dead(model, _np_batches(torch.Generator().manual_seed(7), 64))
    ctx.check("under 45% of decoder.2's units dead at step 100", dead_before[0] < 0.45)
    ctx.check("over 80% of decoder.2's units dead at the end", dead >= 0.8)


def _np_dead(model: NeuralProcess, batches) -> float:
    """Share of ``decoder.2``'s ReLU units never positive on a batch."""
    x, _ = next(batches)
    with torch.no_grad():
        xc, yc, xt = x[..., 0:1], x[..., 1:2], x[..., 2:3]
        r = model.encoder(torch.cat([xc, yc], -1)).mean(1, keepdim=True)
        h = torch.cat([r.expand(-1, xt.shape[1], -1), xt], -1)
        h = model.decoder[3](model.decoder[2](model.decoder[1](model.decoder[0](h))))
    return dead_fraction(h.reshape(-1, h.shape[-1]))


# -- GraphSAGE: float16 autocast overflows a few times (benign) -----------------------------------


class SAGELayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.self_lin = nn.Linear(d_in, d_out)
        self.neigh_lin = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.self_lin(h) + self.neigh_lin(adj @ h)


class GraphSAGE(nn.Module):
    def __init__(self, adj: torch.Tensor, d_in: int = 16, width: int = 32, classes: int = 4):
        super().__init__()
        self.register_buffer("adj", adj)
        self.sage1 = SAGELayer(d_in, width)
        self.sage2 = SAGELayer(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.sage1(x, self.adj))
        h = F.relu(self.sage2(h, self.adj))
        return self.head(h)


def _sbm_graph(gen: torch.Generator, nodes: int = 200, classes: int = 4):
    """A stochastic block model with noisy class-dependent features; mean-aggregation matrix."""
    y = torch.randint(0, classes, (nodes,), generator=gen)
    same = y[:, None] == y[None, :]
    p = torch.where(same, 0.08, 0.01)
    a = (torch.rand(nodes, nodes, generator=gen) < p).float()
    a = torch.triu(a, 1)
    a = a + a.T
    adj = a / a.sum(1, keepdim=True).clamp(min=1)
    centres = torch.randn(classes, 16, generator=gen)
    x = centres[y] * 0.5 + torch.randn(nodes, 16, generator=gen)
    return adj, x, y


def _node_batches(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor):
    while True:
        yield x, torch.where(train, y, -100)


@scenario("graphsage", "adamax", "data_outlier", diverges=120, onset=120, heldout=True)
def h13_outlier_nodes_sage_adamax(ctx: Context) -> None:
    """At step 120 the feature pipeline reads ten nodes' features from an unscaled column
    (values in the hundreds): one step's input far out of distribution."""
    gen = seeded(1311)
    adj, x, y = _sbm_graph(gen)
    train = torch.rand(len(y), generator=gen) < 0.6
    model = GraphSAGE(adj)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)

    def alter(step: int, feats: torch.Tensor, labels: torch.Tensor):
        if step == 120:
            feats = feats.clone()
            feats[:10] = 300.0 * torch.rand(10, feats.shape[1], generator=torch.Generator())
        return feats, labels

    fit(ctx, model, opt, _node_batches(x, y, train), 180, alter=alter, classifier=False)
    ctx.check("loss spiked at 120", ctx.losses[120] > 5 * max(ctx.losses[110:120]))


# -- LoRA: a warm-up that overshoots (alpha not divided by the rank) -------------------------------


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``B @ A`` scaled by ``scale``."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def _pretrained_digit_mlp(gen: torch.Generator) -> nn.Sequential:
    """A base MLP trained briefly on digits 0-4 (the "pretrained" model to adapt)."""
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = digit_batches(gen, 64)
    for _ in range(80):
        x, y = next(batches)
        keep = y < 5
        loss = F.cross_entropy(model(x[keep]), y[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _lora_wrap(base: nn.Sequential, rank: int, scale: float) -> nn.Sequential:
    for i in (0, 2, 4):
        base[i] = LoRALinear(base[i], rank, scale)
    return base


@scenario(
    "lora_mlp",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=0,
    heldout=True,
)
def h13_lora_warmup_overshoot_sgd(ctx: Context) -> None:
    """LoRA fine-tune (rank 4, alpha 64: adapter scale 16) of an MLP pretrained on digits 0-4,
    to all ten digits, with a learning rate copied from a recipe whose adapters had scale 1: a
    linear warm-up to 0.012 over 150 steps crosses the stability limit midway (the adapters'
    curvature grows with the square of the scale)."""
    gen = seeded(1312)
    model = _lora_wrap(_pretrained_digit_mlp(gen), rank=4, scale=16.0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.012 * min(1.0, (step + 1) / 150)

    fit(ctx, model, opt, digit_batches(gen, 64), 200, before=warmup)
    ctx.check("base frozen", all(not m.base.weight.requires_grad for m in model[::2]))
    ctx.check("loss fell first", max(ctx.losses[40:60]) < 0.5 * ctx.losses[0])
    ctx.check("then broke", any(not math.isfinite(v) or v > ctx.losses[0] for v in ctx.losses))


# -- healthy controls -----------------------------------------------------------------------------


def _mlm_batches(gen: torch.Generator, batch: int = 16, length: int = 24, vocab: int = 128):
    """Mask 15% of stdlib-byte tokens (id 3 = [MASK]); predict them, ignore the rest."""
    for x, _ in text_batches(gen, batch, length, vocab):
        x = x.clamp(min=4)
        mask = torch.rand(x.shape, generator=gen) < 0.15
        yield torch.where(mask, 3, x), torch.where(mask, x, -100)


@scenario("hf_modernbert_mlm", "adamw", "healthy", heldout=True)
def h13_healthy_modernbert_mlm_adamw(ctx: Context) -> None:
    gen = seeded(1321)
    model = _modernbert(labels=None)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        _mlm_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


@scenario("hf_patchtst", "sg_lion", "healthy", heldout=True)
def h13_healthy_patchtst_lion(ctx: Context) -> None:
    gen = seeded(1322)
    model = _patchtst()
    opt = sgo.Lion(model.parameters(), lr=5e-4, weight_decay=0.01, fused=False)
    fit(
        ctx,
        model,
        opt,
        _series_batches(gen, waves=1),
        300,
        loss_fn=F.mse_loss,
        forward=_patchtst_forward,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


@scenario("nbeats", "adam", "healthy", heldout=True)
def h13_healthy_nbeats_adam(ctx: Context) -> None:
    gen = seeded(1323)
    model = NBeats()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _series_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))


@scenario("graphsage", "sgd_mom", "healthy", heldout=True)
def h13_healthy_sage_momentum(ctx: Context) -> None:
    gen = seeded(1324)
    adj, x, y = _sbm_graph(gen)
    train = torch.rand(len(y), generator=gen) < 0.6
    model = GraphSAGE(adj)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(ctx, model, opt, _node_batches(x, y, train), 200, classifier=False)
    ctx.check("loss fell", ctx.losses[-1] < 0.7 * ctx.losses[0])
