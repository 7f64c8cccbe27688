"""Held-out scenarios, fourteenth set (``h14_``): families none of the earlier sets have.

Hugging Face MarianMT (encoder-decoder), Nemotron and Granite causal LMs, CvT and PoolFormer
image classifiers, all built from configs (no download); and, written here, BYOL (online and
EMA target networks), DQN with a target network on a generated contextual chain, a PPO-style
actor-critic on a generated bandit, a spiking net trained with a surrogate gradient, a binary
neural net (straight-through estimator), quantisation-aware training (fake quantisation), a
linear-attention (Performer-style) decoder, a Hyena-style long-convolution forecaster, a sparse
autoencoder with an L1 penalty, a WGAN with a gradient penalty and a Deep & Cross network on
scikit-learn's breast-cancer table. Optimizers: SGD with Nesterov or plain momentum, Adam,
AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax and steadygrad's Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py``,
``steadygrad/monitor/``, the other held-out files or any measured result; steadygrad was never
run on these scenarios while they were written (they were tuned with a stand-in context that
attaches nothing, only until each one's own checks held or, for a healthy control, until it
trained normally).
"""

from __future__ import annotations

import copy
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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs -------------------------------------------------------------


def _nemotron(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import NemotronConfig, NemotronForCausalLM

    config = NemotronConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=dim // heads,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return NemotronForCausalLM(config)


def _granite(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        attention_multiplier=(dim // heads) ** -0.5,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GraniteForCausalLM(config)


def _marian(vocab: int = 32, dim: int = 32):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab,
        decoder_vocab_size=vocab,
        d_model=dim,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        decoder_ffn_dim=2 * dim,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return MarianMTModel(config)


def _cvt(classes: int = 10):
    from transformers import CvtConfig, CvtForImageClassification

    config = CvtConfig(
        num_channels=1,
        patch_sizes=[3, 3],
        patch_stride=[1, 2],
        patch_padding=[1, 1],
        embed_dim=[8, 16],
        num_heads=[1, 2],
        depth=[1, 2],
        mlp_ratio=[2.0, 2.0],
        attention_drop_rate=[0.0, 0.0],
        drop_rate=[0.0, 0.0],
        drop_path_rate=[0.0, 0.0],
        qkv_bias=[True, True],
        cls_token=[False, True],
        qkv_projection_method=["dw_bn", "dw_bn"],
        kernel_qkv=[3, 3],
        padding_kv=[1, 1],
        stride_kv=[2, 2],
        padding_q=[1, 1],
        stride_q=[1, 1],
        num_labels=classes,
    )
    return CvtForImageClassification(config)


def _poolformer(classes: int = 10):
    from transformers import PoolFormerConfig, PoolFormerForImageClassification

    config = PoolFormerConfig(
        num_channels=1,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        patch_sizes=[3, 3],
        strides=[1, 2],
        padding=[1, 1],
        num_encoder_blocks=2,
        pool_size=3,
        mlp_ratio=2.0,
        use_layer_scale=False,
        num_labels=classes,
    )
    return PoolFormerForImageClassification(config)


def _image(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1, 8, 8)


# -- 1. Nemotron: the LR raised mid-run (sharpness above the limit) --------------------------------


@scenario(
    "hf_nemotron",
    "adam",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="resumed run picks up the pre-decay peak LR x30",
)
def h14_nemotron_lr_raised_midrun(ctx: Context) -> None:
    """A run resumed at step 150 from a checkpoint whose scheduler state was not restored: the
    LR jumps from 1e-3 to 0.1 (the value was stored for a different
    optimizer), far above what the sharpened loss allows; the loss blows up."""
    gen = seeded(1401)
    model = _nemotron()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 0.1

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        260,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
        before=resume,
        classifier=False,
    )
    ctx.check("loss had fallen before 150", ctx.losses[149] < 0.8 * ctx.losses[0])


# -- 2. Granite: attention logits grow (a flipped-sign decay on the q/k projections) -------------


@scenario(
    "hf_granite",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    onset=40,
)
def h14_granite_qk_decay_sign(ctx: Context) -> None:
    """A hand-written "qk decay" (meant to keep q/k projections small) is applied with the sign
    flipped from step 40: q_proj and k_proj grow 2.5% a step, attention logits grow with their
    product and the attention saturates towards one-hot; the loss stops improving and drifts
    up a little, but the run does not break within 300 steps."""
    gen = seeded(1402)
    model = _granite()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    qk = [
        p
        for n, p in model.named_parameters()
        if ".q_proj." in n or ".k_proj." in n  # the decay's filter
    ]
    scale = model.config.attention_multiplier
    seen: dict[str, torch.Tensor] = {}
    attn = model.model.layers[0].self_attn
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach())),
    ]
    logit_max: list[float] = []

    def bug(step: int) -> None:
        if "q" in seen:
            q, k = (seen[z].reshape(*seen[z].shape[:2], 2, -1).transpose(1, 2) for z in "qk")
            logit_max.append(float((q @ k.transpose(-1, -2)).abs().max() * scale))
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1.025)  # meant: p.mul_(1 - lr * qk_decay)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        300,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
        before=bug,
        classifier=False,
    )
    for h in hooks:
        h.remove()
    ctx.check("layer-0 attention logits grew 10x", max(logit_max[-20:]) > 10 * logit_max[39])


# -- 3. MarianMT: healthy --------------------------------------------------------------------------


def _translate_batches(gen: torch.Generator, batch: int = 32, length: int = 10, vocab: int = 32):
    """A word-for-word "translation": token t becomes 2 + (5 * t) % (vocab - 2), plus an end
    token 1; the decoder starts with 0."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        tgt = 2 + (5 * src) % (vocab - 2)
        tgt = torch.cat([tgt, torch.ones(batch, 1, dtype=torch.long)], 1)
        dec_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


@scenario("hf_marian", "adamw", "healthy", heldout=True)
def h14_marian_translate_healthy(ctx: Context) -> None:
    gen = seeded(1403)
    model = _marian()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        _translate_batches(gen),
        250,
        loss_fn=lm_loss,
        forward=lambda m, x: m(input_ids=x[0], decoder_input_ids=x[1]).logits,
        classifier=False,
    )
    ctx.check("loss fell by 40%", sum(ctx.losses[-10:]) / 10 < 0.6 * ctx.losses[0])


# -- 4. CvT: a frozen stage (LR 0 in its group) ----------------------------------------------------


@scenario(
    "hf_cvt",
    "adagrad",
    "update_ratio_out_of_range",
    where="cvt.encoder.stages.1",
    diverges=None,
    heldout=True,
)
def h14_cvt_stage_lr_zero(ctx: Context) -> None:
    """Layer-wise LR decay computed as base * decay ** (depth - 1 - i) with an integer
    ``decay`` of 0 (meant 0.8): the last stage's group gets LR 0 and never moves."""
    gen = seeded(1404)
    model = _cvt()
    stage1 = list(model.cvt.encoder.stages[1].parameters())
    ids = {id(p) for p in stage1}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adagrad([{"params": rest}, {"params": stage1, "lr": 0.0}], lr=2e-2)
    before = [p.detach().clone() for p in stage1]
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        150,
        forward=lambda m, x: m(pixel_values=_image(x)).logits,
    )
    ctx.check(
        "stage 1 unchanged", all(torch.equal(a, b) for a, b in zip(before, stage1, strict=True))
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


# -- 5. PoolFormer: healthy -------------------------------------------------------------------------


@scenario("hf_poolformer", "sgd_nesterov", "healthy", heldout=True)
def h14_poolformer_digits_healthy(ctx: Context) -> None:
    gen = seeded(1405)
    model = _poolformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen, 48),
        200,
        forward=lambda m, x: m(pixel_values=_image(x)).logits,
    )
    ctx.check("loss fell by half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- 6. BYOL: a corrupted batch (data outlier) -----------------------------------------------------


class _Online(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = MLP([64, 128, 64])
        self.projector = MLP([64, 64, 32])
        self.predictor = MLP([32, 64, 32])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.embed(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    img = x.reshape(-1, 8, 8)
    shift = int(torch.randint(-1, 2, (1,), generator=gen))
    img = torch.roll(img, shift, dims=2)
    noise = 0.1 * torch.randn(img.shape, generator=gen)
    keep = (torch.rand(img.shape, generator=gen) > 0.1).float()
    return (img * keep + noise).reshape(-1, 64)


def _byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


@scenario("byol", "sgd_mom", "data_outlier", diverges=160, heldout=True, onset=160)
def h14_byol_corrupt_batch(ctx: Context) -> None:
    """BYOL on digits: online net (encoder, projector, predictor) against an EMA target. At
    step 160 a batch arrives with eight images decoded as 0..255 bytes instead of 0..1 floats."""
    gen = seeded(1406)
    online = _Online()
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(online.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(online, opt)
    batches = digit_batches(gen, 64)
    for step in range(260):
        x, _ = next(batches)
        if step == 160:
            x = x.clone()
            x[:8] = x[:8] * 255.0
        a, b = _augment(x, gen), _augment(x, gen)
        loss = _byol_loss(online(a), target.embed(b)) + _byol_loss(online(b), target.embed(a))
        loss.backward()
        ctx.grad_norms.append(grad_norm(online))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pt, po in zip(target.parameters(), online.parameters(), strict=True):
                pt.lerp_(po, 0.01)
    before = max(ctx.losses[150:160])
    ctx.check("loss spiked at 160", max(ctx.losses[160:163]) > 3 * before)


# -- 7. DQN: one corrupt reward poisons Adam's second moment ----------------------------------------


def _chain(gen: torch.Generator, n: int = 4096, dim: int = 8, actions: int = 4):
    """A generated contextual chain: state s, action a, reward w_a . s + noise, next state."""
    w = torch.randn(actions, dim, generator=gen)
    s = torch.randn(n, dim, generator=gen)
    a = torch.randint(0, actions, (n,), generator=gen)
    r = (w[a] * s).sum(1) + 0.1 * torch.randn(n, generator=gen)
    s2 = 0.8 * s + 0.6 * torch.randn(n, dim, generator=gen)
    return s, a, r, s2


@scenario("dqn", "adam", "adam_second_moment_poisoned", diverges=None, heldout=True, onset=120)
def h14_dqn_reward_glitch(ctx: Context) -> None:
    """DQN with a target network (synced every 50 steps) on a replay buffer; one transition's
    reward is logged as 1e5 (a sensor glitch) and sampled at step 120: the TD error's gradient
    is ~1e4x the usual, Adam's v (beta2 0.999) holds it for hundreds of steps and the updates
    are tiny from then on."""
    gen = seeded(1407)
    s, a, r, s2 = _chain(gen)
    q = MLP([8, 64, 64, 4])
    q_target = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    ctx.attach(q, opt)
    gamma = 0.5
    snaps = []
    for step in range(300):
        idx = torch.randint(0, len(r), (64,), generator=gen)
        rew = r[idx].clone()
        if step == 120:
            rew[0] = 1e5
        with torch.no_grad():
            tgt = rew + gamma * q_target(s2[idx]).max(1).values
        pred = q(s[idx]).gather(1, a[idx, None])[:, 0]
        loss = F.mse_loss(pred, tgt)
        loss.backward()
        ctx.grad_norms.append(grad_norm(q))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 50 == 49:
            q_target.load_state_dict(q.state_dict())
        if step in (60, 110, 200, 250):
            snaps.append(torch.cat([p.detach().flatten() for p in q.parameters()]).clone())
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the glitch", after < before / 3)
    ctx.check("one huge gradient at 120", ctx.grad_norms[120] > 100 * max(ctx.grad_norms[100:120]))


# -- 8. PPO-style actor-critic: healthy -------------------------------------------------------------


class _ActorCritic(nn.Module):
    def __init__(self, dim: int = 8, actions: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 64), nn.Tanh())
        self.policy = nn.Linear(64, actions)
        self.value = nn.Linear(64, 1)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(s)
        return self.policy(h), self.value(h)[:, 0]


@scenario("ppo", "radam", "healthy", heldout=True)
def h14_ppo_bandit_healthy(ctx: Context) -> None:
    """Clipped-ratio PPO on a generated contextual bandit: 60 rollouts of 128 contexts, four
    epochs of updates on each; reward rises, value loss falls."""
    gen = seeded(1408)
    w = torch.randn(4, 8, generator=gen)
    model = _ActorCritic()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    rewards = []
    for _ in range(60):
        s = torch.randn(128, 8, generator=gen)
        with torch.no_grad():
            logits, _ = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            logp_old = dist.log_prob(a)
            r = (w[a] * s).sum(1) + 0.1 * torch.randn(128, generator=gen)
        rewards.append(float(r.mean()))
        for _ in range(4):
            logits, v = model(s)
            dist = torch.distributions.Categorical(logits=logits)
            adv = r - v.detach()
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = (dist.log_prob(a) - logp_old).exp()
            pg = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
            loss = pg + 0.5 * F.mse_loss(v, r) - 0.01 * dist.entropy().mean()
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
            ctx.step(loss)
            opt.zero_grad(set_to_none=True)
    ctx.check("mean reward rose", sum(rewards[-10:]) > sum(rewards[:10]) + 5.0)


# -- 9. Spiking net (surrogate gradient): softmax collapse -----------------------------------------


class _Spike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid surrogate derivative backward."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v)
        return (v > 0).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (v,) = ctx.saved_tensors
        return grad / (1 + 10 * v.abs()) ** 2


class _SpikingNet(nn.Module):
    """Two leaky integrate-and-fire layers over rate-coded digits; the readout integrates."""

    def __init__(self, steps: int = 16, beta: float = 0.8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.readout = nn.Linear(64, 10)
        self.steps, self.beta = steps, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v1 = torch.zeros(x.shape[0], 128)
        v2 = torch.zeros(x.shape[0], 64)
        out = 0.0
        for _ in range(self.steps):
            v1 = self.beta * v1 + self.fc1(x)
            s1 = _Spike.apply(v1 - 1.0)
            v1 = v1 - s1
            v2 = self.beta * v2 + self.fc2(s1)
            s2 = _Spike.apply(v2 - 1.0)
            v2 = v2 - s2
            out = out + self.readout(s2)
        return out  # meant: out / self.steps


@scenario("spiking", "nadam", "softmax_collapse", where="readout", diverges=None, heldout=True)
def h14_snn_summed_readout_collapse(ctx: Context) -> None:
    """A spiking net fine-tuned on a fixed set of 160 digits whose readout sums over the 16
    time steps instead of averaging: the logits are 16x too large and most rows' float32 softmax
    rounds to exactly one-hot (zero gradient), a growing share of rows."""
    seeded(1409)
    x, y = digits()
    x, y = x[:160], y[:160]
    model = _SpikingNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)

    def full():
        while True:
            yield x, y

    fit(ctx, model, opt, full(), 400)
    with torch.no_grad():
        ctx.check("a quarter of the rows collapsed", collapsed_fraction(model(x), y) > 0.25)


# -- 10. Binary neural net (straight-through estimator): healthy ------------------------------------


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).float()


class _BinaryLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.abs().mean()
        return F.linear(x, _SignSTE.apply(self.weight) * scale, self.bias)


class _BNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = _BinaryLinear(64, 256)
        self.bn1 = nn.BatchNorm1d(256)
        self.fc2 = _BinaryLinear(256, 256)
        self.bn2 = nn.BatchNorm1d(256)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardtanh(self.bn1(self.fc1(x)))
        h = F.hardtanh(self.bn2(self.fc2(h)))
        return self.head(h)


@scenario("bnn", "sg_lion", "healthy", heldout=True)
def h14_bnn_ste_lion_healthy(ctx: Context) -> None:
    gen = seeded(1410)
    model = _BNN()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)

    def clip(step: int) -> None:  # latent weights stay in the STE's window
        with torch.no_grad():
            for m in (model.fc1, model.fc2):
                m.weight.clamp_(-1, 1)

    fit(ctx, model, opt, digit_batches(gen, 64), 220, before=clip)
    ctx.check("loss fell by half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- 11. Quantisation-aware training under fp16 autocast: benign AMP overflow -----------------------


class _FakeQuant(nn.Module):
    """Symmetric 8-bit fake quantisation with a straight-through round."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.detach().abs().amax().clamp_min(1e-8) / 127
        q = torch.clamp(torch.round(x / scale), -127, 127) * scale
        return x + (q - x).detach()


class _QATConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.q1 = _FakeQuant()
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.q2 = _FakeQuant()
        self.head = nn.Linear(24 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q1(F.relu(self.conv1(_image(x))))
        h = F.max_pool2d(self.q2(F.relu(self.conv2(h))), 2)
        return self.head(h.flatten(1))


@scenario("qat_cnn", "sgd_nesterov", "amp_overflow", diverges=None, heldout=True)
def h14_qat_fp16_scaler_growth(ctx: Context) -> None:
    """QAT CNN under float16 autocast; the GradScaler starts at 2**20 and quadruples every 25
    clean steps: it overflows now and then, skips those steps and backs off; training is fine."""
    gen = seeded(1411)
    model = _QATConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_factor=4.0, growth_interval=25)
    fit(ctx, model, opt, digit_batches(gen, 48), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops >= 2)
    ctx.check("loss finite and fell", all(map(math.isfinite, ctx.losses)))
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- 12. Linear-attention decoder: output logits diverge (a z-loss with the sign flipped) -----------


class _LinearAttention(nn.Module):
    """Causal linear attention with the elu+1 feature map (prefix sums)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.cumsum(k[..., :, None] * v[..., None, :], dim=2)
        num = (q[..., :, None] * kv).sum(-2)
        den = (q * torch.cumsum(k, dim=2)).sum(-1, keepdim=True)
        y = (num / (den + 1e-6)).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class _LinearBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _LinearAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _LinearDecoder(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 48, layers: int = 2, context: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_LinearBlock(dim, 2) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    "linear_attention",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=60,
)
def h14_linear_attn_zloss_sign(ctx: Context) -> None:
    """A z-loss (1e-3 * log Z**2, meant to keep the softmax normaliser near 0) is added from
    step 60 with the sign flipped: log Z is pushed up and the output logits drift upward
    without bound, until float32 cross-entropy breaks."""
    gen = seeded(1412)
    model = _LinearDecoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    logz: list[float] = []

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - (1e-2 * seen["z"] ** 2).mean() if step >= 60 else loss

    seen: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(x)
        seen["z"] = torch.logsumexp(logits.float(), -1)
        logz.append(float(seen["z"].detach().abs().mean()))
        return logits

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        320,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss,
        classifier=False,
    )
    ctx.check("|log Z| grew 10x after 60", max(logz[-30:]) > 10 * max(logz[50:60]))


# -- 13. Hyena-style long convolution forecaster: slow divergence (target normaliser drifts) -------


class _HyenaOperator(nn.Module):
    """Order-2 Hyena-like operator: short depthwise conv, an implicit long filter (an MLP on
    positions times a decay window) applied by FFT convolution, and multiplicative gates."""

    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.short = nn.Conv1d(3 * dim, 3 * dim, 3, padding=2, groups=3 * dim)
        self.filter = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, dim))
        self.out_proj = nn.Linear(dim, dim)
        t = torch.linspace(0, 1, length)[:, None]
        self.register_buffer("pos", torch.cat([t, torch.sin(6 * t), torch.cos(6 * t)], 1))
        self.register_buffer("decay", torch.exp(-4 * t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        u = self.short(self.in_proj(x).transpose(1, 2))[..., :n]
        v, g1, g2 = u.split(d, dim=1)
        h = (self.filter(self.pos[:n]) * self.decay[:n]).T  # (d, n)
        size = 2 * n
        y = torch.fft.irfft(torch.fft.rfft(v * g1, size) * torch.fft.rfft(h, size), size)[..., :n]
        return self.out_proj((y * g2).transpose(1, 2))


class _HyenaForecaster(nn.Module):
    def __init__(self, dim: int = 32, length: int = 48, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(_HyenaOperator(dim, length) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x[..., None])
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(norm(h))
        return self.head(h)[..., 0]


def _wave_batches(gen: torch.Generator, batch: int = 32, length: int = 48):
    """Sums of two sines with random frequency and phase: predict the next value."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = 0.05 + 0.3 * torch.rand(batch, 2, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        s = torch.sin(f * t + ph).sum(1) + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, :-1], s[:, 1:]


@scenario(
    "hyena",
    "nadam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="streaming target normaliser's std estimate decays",
)
def h14_hyena_normaliser_drift(ctx: Context) -> None:
    """A streaming normaliser divides the targets by a running std whose update has the wrong
    momentum: from step 100 the estimate shrinks 1% a step, the targets grow, and the MSE
    climbs slowly; nothing in the model is at fault."""
    gen = seeded(1413)
    model = _HyenaForecaster()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    std = [1.0]

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 100:
            std[0] *= 0.99
        return x, y / std[0]

    fit(
        ctx,
        model,
        opt,
        _wave_batches(gen),
        320,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    ctx.check("loss had fallen by 100", ctx.losses[99] < 0.5 * ctx.losses[0])


# -- 14. Sparse autoencoder: dead latents from an L1 coefficient 100x too large ---------------------


class _SAE(nn.Module):
    def __init__(self, dim: int = 32, latents: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, latents)
        self.decoder = nn.Linear(latents, dim)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encoder(x - self.decoder.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codes(x))


@scenario(
    "sparse_autoencoder",
    "adam",
    "loss_of_plasticity",
    where="encoder",
    diverges=None,
    heldout=True,
    onset=100,
)
def h14_sae_l1_warmup_overshoot(ctx: Context) -> None:
    """A sparse autoencoder on generated superposed sparse features; the L1 coefficient's
    warm-up (from step 100) ramps to 3.0 where 3e-2 was meant: most latents are pushed below
    zero for every input and never come back (a dead latent has no gradient)."""
    gen = seeded(1414)
    dictionary = F.normalize(torch.randn(96, 32, generator=gen), dim=1)

    def batches():
        while True:
            on = (torch.rand(128, 96, generator=gen) < 0.04).float()
            yield on * torch.rand(128, 96, generator=gen) @ dictionary, None

    model = _SAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = batches()
    for step in range(320):
        x, _ = next(data)
        coef = 3.0 * min(max(step - 100, 0) / 100, 1.0)
        codes = model.codes(x)
        recon = F.mse_loss(model.decoder(codes), x)
        (recon + coef * codes.abs().sum(1).mean()).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(recon)  # the reconstruction error is what is logged
        opt.zero_grad(set_to_none=True)
    x, _ = next(data)
    with torch.no_grad():
        ctx.check("most latents dead", dead_fraction(model.encoder(x - model.decoder.bias)) > 0.5)
    ctx.check("reconstruction 10x worse", min(ctx.losses[-20:]) > 10 * min(ctx.losses[80:100]))


# -- 15. WGAN-GP: the gradient penalty added with the wrong sign (exploding gradients) -------------


class _Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2)
        )
        self.out = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x))[:, 0]


@scenario(
    "wgan_gp",
    "rmsprop",
    "exploding_gradients",
    where=("out", "net.2"),
    diverges=121,
    heldout=True,
    onset=80,
    note="breaks: critic gradient 100x its pre-fault level at 121 (the loss is unbounded below)",
)
def h14_wgan_gp_sign(ctx: Context) -> None:
    """WGAN-GP on a generated ring of 8 Gaussians. A refactor at step 80 turns
    ``loss += lam * gp`` into ``loss -= lam * gp``: the critic is now rewarded for a large input
    gradient, its weights grow (the output layer and the last hidden one most) and its gradients grow
    step after step: 10x by step 105, 100x by 121, 10**4x by the end."""
    gen = seeded(1415)
    critic = _Critic()
    generator = MLP([8, 64, 64, 2])
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=5e-4)
    opt_g = torch.optim.RMSprop(generator.parameters(), lr=5e-4)
    ctx.attach(critic, opt_c)
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 2 * torch.stack([angles.cos(), angles.sin()], 1)
    lam = 10.0
    for step in range(300):
        real = centres[torch.randint(0, 8, (64,), generator=gen)]
        real = real + 0.05 * torch.randn(64, 2, generator=gen)
        fake = generator(torch.randn(64, 8, generator=gen)).detach()
        eps = torch.rand(64, 1, generator=gen)
        mid = (eps * real + (1 - eps) * fake).requires_grad_(True)
        g = torch.autograd.grad(critic(mid).sum(), mid, create_graph=True)[0]
        gp = ((g.norm(dim=1) - 1) ** 2).mean()
        w = critic(fake).mean() - critic(real).mean()
        loss = w + lam * gp if step < 80 else w - lam * gp
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(critic))
        opt_c.step()
        ctx.step(loss)
        if step % 5 == 4:  # five critic steps per generator step
            opt_g.zero_grad(set_to_none=True)
            (-critic(generator(torch.randn(64, 8, generator=gen))).mean()).backward()
            opt_g.step()
    finite = [v for v in ctx.grad_norms if math.isfinite(v)]
    ref = max(ctx.grad_norms[60:80])
    ctx.check("critic gradient grew 100x after 80", max(finite) > 100 * ref)
    ctx.check("and kept growing", min(ctx.grad_norms[-20:]) > 10 * max(ctx.grad_norms[115:125]))


# -- 16. Deep & Cross network: a NaN from the log-ratio feature on one sample ------------------------


class _LogRatio(nn.Module):
    """log(area / perimeter**2) of each tumour: a shape feature added to the raw ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.log(x[:, 3:4] / x[:, 2:3] ** 2)], 1)


class _DCN(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, cross: int = 3) -> None:
        super().__init__()
        self.ratio = _LogRatio()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        d = len(mean)
        self.cross = nn.ModuleList(nn.Linear(d, d) for _ in range(cross))
        self.deep = MLP([d, 64, 32])
        self.head = nn.Linear(d + 32, 2)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x0 = (self.ratio(raw) - self.mean) / self.std
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, F.relu(self.deep(x0))], 1))


@scenario("deep_cross", "adamax", "nonfinite", where="ratio", diverges=170, heldout=True, onset=170)
def h14_dcn_zero_perimeter(ctx: Context) -> None:
    """Deep & Cross on the breast-cancer table. At step 170 one record's perimeter arrives as 0
    (a missing value filled with zero): the log-ratio feature is inf, NaN after normalisation
    through the cross layers, and the update writes NaN into every weight."""
    gen = seeded(1416)
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    feats = _LogRatio()(x)
    model = _DCN(feats.mean(0), feats.std(0))
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def batches():
        while True:
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y) - 48, 48):
                yield x[order[i : i + 48]], y[order[i : i + 48]]

    def alter(step: int, xb: torch.Tensor, yb: torch.Tensor):
        if step == 170:
            xb = xb.clone()
            xb[7, 2] = 0.0
        return xb, yb

    fit(ctx, model, opt, batches(), 220, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    ctx.check("loss fell before 170", ctx.losses[169] < 0.7 * ctx.losses[0])
