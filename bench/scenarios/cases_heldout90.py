"""Held-out scenarios, set 90 (``h90_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Kosmos-2 vision tower, UDOP encoder, DAB-DETR and Table Transformer
detectors and the PE-Audio encoder from tiny configs (upsampled digits, generated pages, generated
box images, generated tones), and hand-written reinforcement-learning and control models: PPO on a
hand-written cart-pole, soft actor-critic on a 1-D point mass, a recurrent world model on generated
trajectories, TD3 on a hand-written pendulum, an inverse-dynamics model of a 2-link arm, a
behaviour-cloning transformer on generated demonstrations, a differentiable spring-mass simulator
trained end to end and a neural controller trained with a Lyapunov loss.

Optimizers: AdamW, NAdam, RAdam, Adam, Adamax, Adagrad, RMSprop, SGD, SGD with momentum, and
steadygrad.optim's AdaBelief and AdEMAMix.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import Context, collapsed_fraction, digit_batches, scenario, seeded


def _quiet_hf() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2]


# -- Hugging Face Kosmos-2 vision tower: attention logit growth ----------------------------------


class KosmosDigits(nn.Module):
    """Kosmos-2's CLIP-like vision tower on 16x16 upsampled digits, a linear head on its pooler."""

    def __init__(self) -> None:
        super().__init__()
        _quiet_hf()
        from transformers.models.kosmos2.modeling_kosmos2 import (
            Kosmos2VisionConfig,
            Kosmos2VisionModel,
        )

        cfg = Kosmos2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
            num_channels=1,
            attention_dropout=0.0,
        )
        cfg._attn_implementation = "eager"
        self.vision = Kosmos2VisionModel(cfg)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="nearest")
        return self.head(self.vision(pixel_values=img).pooler_output)


def _kosmos_attention_stats(model: KosmosDigits, x: torch.Tensor) -> tuple[float, float]:
    """Largest |pre-softmax logit| and the lowest mean attention entropy over both layers."""
    seen: list[torch.Tensor] = []
    layers = model.vision.model.encoder.layers
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(
                kwargs.get("hidden_states", args[0] if args else None)
            ),
            with_kwargs=True,
        )
        for layer in layers
    ]
    with torch.no_grad():
        model(x)
        top, ent = 0.0, float("inf")
        for layer, h in zip(layers, seen, strict=False):
            att = layer.self_attn
            b, t, d = h.shape
            q = att.q_proj(h).reshape(b, t, att.num_heads, -1).transpose(1, 2)
            k = att.k_proj(h).reshape(b, t, att.num_heads, -1).transpose(1, 2)
            s = (q @ k.transpose(-1, -2)) * att.scale
            p = s.softmax(-1)
            top = max(top, float(s.abs().amax()))
            ent = min(ent, float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))
    for hk in hooks:
        hk.remove()
    return top, ent


@scenario(
    "h90_hf_kosmos2_vision_digits",
    "adamw",
    "attention_logit_growth",
    where=("vision.model.encoder.layers.0.self_attn", "vision.model.encoder.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="ported attention drops the 1/sqrt(d) scale, q/k init 10x too wide, high LR, no wd",
    onset=0,
)
def h90_kosmos2_unscaled_attention_high_lr(ctx: Context) -> None:
    """A hand port of the vision tower set ``scale = 1.0`` (the original folded 1/sqrt(d) into
    the q weights) and initialised q/k with std 0.2; AdamW at 1e-2 with no weight decay lets the
    q.k logits grow without bound and the attention rows go one-hot."""
    gen = seeded(9001)
    model = KosmosDigits()
    for layer in model.vision.model.encoder.layers:
        layer.self_attn.scale = 1.0
        nn.init.normal_(layer.self_attn.q_proj.weight, std=0.2)
        nn.init.normal_(layer.self_attn.k_proj.weight, std=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batches = digit_batches(gen, 64)
    probe, _ = next(batches)
    top0, ent0 = _kosmos_attention_stats(model, probe)
    ctx.attach(model, opt)
    for _ in range(220):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    top1, ent1 = _kosmos_attention_stats(model, probe)
    ctx.check("max attention logit grew over 5x", top1 > 5 * top0)
    ctx.check("attention entropy fell below a third", ent1 < ent0 / 3)


# -- Hugging Face UDOP encoder: output logit divergence ------------------------------------------


def page_batches(gen: torch.Generator, batch: int = 32, tokens: int = 12, vocab: int = 64):
    """Generated 'pages': word tokens with boxes on a 16x16 page image; the label is the
    quadrant of the page that holds the keyword (token 1)."""
    while True:
        ids = torch.randint(3, vocab, (batch, tokens), generator=gen)
        xy = torch.rand(batch, tokens, 2, generator=gen) * 0.85
        wh = 0.05 + 0.1 * torch.rand(batch, tokens, 2, generator=gen)
        bbox = torch.cat([xy, (xy + wh).clamp(max=1.0)], -1)
        pos = torch.randint(0, tokens, (batch,), generator=gen)
        ids[torch.arange(batch), pos] = 1
        c = bbox[torch.arange(batch), pos]
        cx, cy = (c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2
        y = (cx > 0.5).long() + 2 * (cy > 0.5).long()
        img = torch.zeros(batch, 3, 16, 16)
        for i in range(batch):
            for j in range(tokens):
                x0, y0, x1, y1 = (bbox[i, j] * 16).long().tolist()
                img[i, 0 if j == pos[i] else 1, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = 1.0
        yield (ids, bbox, img), y


class UdopPages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        _quiet_hf()
        from transformers import UdopConfig, UdopEncoderModel

        cfg = UdopConfig(
            vocab_size=64,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            image_size=16,
            patch_size=4,
            num_channels=3,
            dropout_rate=0.0,
            relative_bias_args=[{"type": "1d"}],
        )
        self.udop = UdopEncoderModel(cfg)
        self.head = nn.Linear(32, 4)

    def forward(self, inputs) -> torch.Tensor:
        ids, bbox, img = inputs
        h = self.udop(input_ids=ids, bbox=bbox, pixel_values=img).last_hidden_state
        return self.head(h.mean(1))


@scenario(
    "h90_hf_udop_encoder_pages",
    "nadam",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: rewards a growing log-partition",
    onset=0,
)
def h90_udop_zloss_wrong_sign(ctx: Context) -> None:
    gen = seeded(9002)
    model = UdopPages()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    batches = page_batches(gen)
    ctx.attach(model, opt)
    log_z: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, -1)
        total = loss - 1e-2 * (z**2).mean()  # meant: + 1e-4 * z**2 (PaLM's z-loss)
        total.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        log_z.append(float(z.detach().mean()))
    ctx.check("log-partition drifted up by over 15", log_z[-1] > log_z[0] + 15)
    ctx.check("losses finite", all(_finite(ctx.losses)))


# -- Hugging Face DAB-DETR / Table Transformer on generated box images ---------------------------


def box_batches(gen: torch.Generator, batch: int = 8, size: int = 32, cells: bool = False):
    """Images with 1-3 filled rectangles (class = colour channel); DETR-style targets with
    normalised (cx, cy, w, h) boxes. ``cells``: a grid of table cells, class = row parity."""
    while True:
        img = 0.05 * torch.randn(batch, 3, size, size, generator=gen)
        targets = []
        for i in range(batch):
            n = int(torch.randint(1, 4, (1,), generator=gen))
            boxes, labels = [], []
            for j in range(n):
                if cells:
                    x0, y0 = 0.05 + 0.3 * j, 0.1 + 0.3 * float(torch.rand(1, generator=gen))
                    w, h = 0.25, 0.2
                    c = j % 2
                else:
                    w, h = (0.15 + 0.3 * torch.rand(2, generator=gen)).tolist()
                    x0 = float(torch.rand(1, generator=gen)) * (1 - w)
                    y0 = float(torch.rand(1, generator=gen)) * (1 - h)
                    c = int(torch.randint(0, 3, (1,), generator=gen))
                a, b = int(x0 * size), int(y0 * size)
                img[i, c, b : b + max(int(h * size), 1), a : a + max(int(w * size), 1)] += 1.0
                boxes.append([x0 + w / 2, y0 + h / 2, w, h])
                labels.append(c)
            targets.append(
                {"class_labels": torch.tensor(labels), "boxes": torch.tensor(boxes).float()}
            )
        yield img, targets


def _detr_config(kind: str):
    from transformers import DabDetrConfig, ResNetConfig, TableTransformerConfig

    cls = {"dab": DabDetrConfig, "table": TableTransformerConfig}[kind]
    return cls(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=6,
        num_labels=3,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        auxiliary_loss=False,
    )


def _detr_loop(ctx: Context, model: nn.Module, opt, batches, steps: int, alter=None) -> None:
    ctx.attach(model, opt)
    for step in range(steps):
        img, targets = next(batches)
        if alter is not None:
            targets = alter(step, targets)
        loss = model(pixel_values=img, labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # DETR's default clipping
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h90_hf_dab_detr_boxes",
    "radam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch from an annotation shard in pixel coordinates instead of normalised boxes",
    onset=150,
)
def h90_dab_detr_pixel_boxes_batch(ctx: Context) -> None:
    _quiet_hf()
    from transformers import DabDetrForObjectDetection

    gen = seeded(9003)
    model = DabDetrForObjectDetection(_detr_config("dab"))
    opt = torch.optim.RAdam(model.parameters(), lr=5e-4)

    def alter(step: int, targets):
        if step == 150:  # a shard converted without dividing by the image size
            targets = [dict(t, boxes=t["boxes"] * 32.0) for t in targets]
        return targets

    _detr_loop(ctx, model, opt, box_batches(gen), 200, alter)
    before = _median(ctx.losses[130:150])
    ctx.check("loss at the bad batch over 3x the median before", ctx.losses[150] > 3 * before)
    ctx.check("losses finite", all(_finite(ctx.losses)))


@scenario(
    "h90_hf_table_transformer_cells",
    "sg_adabelief",
    "healthy",
    heldout=True,
    note="tiny Table Transformer detecting generated table cells",
)
def h90_table_transformer_healthy(ctx: Context) -> None:
    _quiet_hf()
    from transformers import TableTransformerForObjectDetection

    gen = seeded(9004)
    model = TableTransformerForObjectDetection(_detr_config("table"))
    opt = sgo.AdaBelief(model.parameters(), lr=5e-4, weight_decay=1e-4)
    _detr_loop(ctx, model, opt, box_batches(gen, cells=True), 170)
    ctx.check("losses finite", all(_finite(ctx.losses)))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.8 * sum(ctx.losses[:20]) / 20)


# -- Hugging Face PE-Audio encoder: fp16 overflow on un-normalised PCM --------------------------


def tone_batches(gen: torch.Generator, batch: int = 8, length: int = 256, pcm: bool = False):
    """Generated tones of 4 pitch classes with noise, 8 kHz; ``pcm``: raw integer sample values
    of 24-bit audio read into an int32 container (full scale 2**31), never normalised."""
    freqs = torch.tensor([300.0, 600.0, 1000.0, 1600.0])
    t = torch.arange(length) / 8000.0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        amp = 0.3 + 0.5 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freqs[y][:, None] * t + phase)
        x = x + 0.05 * torch.randn(batch, length, generator=gen)
        if pcm:
            x = torch.round(x * 2147483647.0)
        yield x[:, None, :], y


class PeAudioTones(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        _quiet_hf()
        from transformers import PeAudioEncoder, PeAudioEncoderConfig

        cfg = PeAudioEncoderConfig(
            dac_config=dict(
                encoder_hidden_size=8,
                downsampling_ratios=[2, 4],
                hidden_size=32,
                codebook_dim=8,
                n_codebooks=2,
                codebook_size=16,
                decoder_hidden_size=16,
                upsampling_ratios=[4, 2],
                hop_length=8,
            ),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
        )
        self.encoder = PeAudioEncoder(cfg)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_values=x).pooler_output)


@scenario(
    "h90_hf_pe_audio_tones",
    "adam",
    "amp_overflow",
    where="encoder.embedder.dac_encoder.conv1",
    diverges=110,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 110 a shard of 24-bit PCM read as raw int32",
    onset=110,
)
def h90_pe_audio_int32_pcm_shard_fp16(ctx: Context) -> None:
    gen = seeded(9005)
    model = PeAudioTones()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    clean, raw = tone_batches(gen), tone_batches(gen, pcm=True)
    first_bad: list[tuple[int, str]] = []
    step_now = [0]

    def watch(name: str):
        def hook(mod, args, out) -> None:
            o = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(o) and not first_bad and not torch.isfinite(o).all():
                first_bad.append((step_now[0], name))

        return hook

    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(watch(name))
    ctx.attach(model, opt, scaler=scaler)
    skipped = 0
    for step in range(170):
        step_now[0] = step
        x, y = next(raw if step >= 110 else clean)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += int(scaler.get_scale() < before)
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        x, y = next(raw)
        fp32_ok = bool(torch.isfinite(model(x)).all())
    ctx.check("finite before 110", all(_finite(ctx.losses[:110])))
    ctx.check(
        "first overflow at 110 in the first conv",
        bool(first_bad) and first_bad[0] == (110, "encoder.embedder.dac_encoder.conv1"),
    )
    ctx.check("the same raw batch is finite in float32", fp32_ok)
    ctx.check("scaler kept skipping steps", skipped > 30)


# -- PPO on a hand-written cart-pole --------------------------------------------------------------


class CartPole:
    """Batched classic cart-pole (Barto et al. 1983 constants), Euler steps, auto-reset."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.s = self._reset(n)
        self.t = torch.zeros(n)

    def _reset(self, k: int) -> torch.Tensor:
        return (torch.rand(k, 4, generator=self.gen) - 0.5) * 0.1

    def step(self, action: torch.Tensor):
        x, xd, th, thd = self.s.unbind(-1)
        force = torch.where(action == 1, 10.0, -10.0)
        ct, st = torch.cos(th), torch.sin(th)
        temp = (force + 0.05 * thd**2 * st) / 1.1
        thacc = (9.8 * st - ct * temp) / (0.5 * (4.0 / 3.0 - 0.1 * ct**2 / 1.1))
        xacc = temp - 0.05 * thacc * ct / 1.1
        x, xd = x + 0.02 * xd, xd + 0.02 * xacc
        th, thd = th + 0.02 * thd, thd + 0.02 * thacc
        self.s = torch.stack([x, xd, th, thd], -1)
        self.t += 1
        done = (x.abs() > 2.4) | (th.abs() > 0.2095) | (self.t >= 200)
        reward = torch.ones(self.n)
        if done.any():
            self.s[done] = self._reset(int(done.sum()))
            self.t[done] = 0
        return self.s.clone(), reward, done


class ActorCritic(nn.Module):
    def __init__(self, obs: int = 4, actions: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(obs, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, actions),
        )
        self.critic = nn.Sequential(
            nn.Linear(obs, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )


def _ppo(ctx: Context, opt_fn, seed: int, iters: int, reward_bug_at=None, record=None):
    """One PPO update (clip 0.2, full batch of 16 envs x 32 steps, GAE 0.95) per iteration."""
    gen = seeded(seed)
    model = ActorCritic()
    opt = opt_fn(model.parameters())
    env = CartPole(16, gen)
    obs = env.s.clone()
    ctx.attach(model, opt)
    lengths: list[float] = []
    ep_len = torch.zeros(16)
    for it in range(iters):
        states, acts, logps, rews, dones, vals = [], [], [], [], [], []
        with torch.no_grad():
            for _ in range(32):
                logits = model.actor(obs)
                dist = torch.distributions.Categorical(logits=logits)
                a = dist.sample()
                states.append(obs)
                acts.append(a)
                logps.append(dist.log_prob(a))
                vals.append(model.critic(obs).squeeze(-1))
                obs, r, d = env.step(a)
                ep_len += 1
                if d.any():
                    lengths.extend(ep_len[d].tolist())
                    ep_len[d] = 0
                rews.append(r)
                dones.append(d.float())
            if reward_bug_at is not None and it == reward_bug_at:
                # a time-limit bonus logged in micro-units: one transition reports 1e6
                rews[5][3] = 1.0e6
            last_v = model.critic(obs).squeeze(-1)
            adv = torch.zeros(32, 16)
            gae = torch.zeros(16)
            for t in reversed(range(32)):
                nv = last_v if t == 31 else vals[t + 1]
                delta = rews[t] + 0.99 * nv * (1 - dones[t]) - vals[t]
                gae = delta + 0.99 * 0.95 * (1 - dones[t]) * gae
                adv[t] = gae
            ret = adv + torch.stack(vals)
        s = torch.cat(states)
        a = torch.cat(acts)
        old = torch.cat(logps)
        advf = adv.reshape(-1)
        advf = (advf - advf.mean()) / (advf.std() + 1e-8)
        dist = torch.distributions.Categorical(logits=model.actor(s))
        ratio = torch.exp(dist.log_prob(a) - old)
        pol = -torch.min(ratio * advf, ratio.clamp(0.8, 1.2) * advf).mean()
        vloss = F.mse_loss(model.critic(s).squeeze(-1), ret.reshape(-1))
        loss = pol + 0.5 * vloss - 0.01 * dist.entropy().mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if record is not None:
            record(model, opt)
    return model, opt, lengths


@scenario(
    "h90_ppo_cartpole_handwritten",
    "adam",
    "adam_second_moment_poisoned",
    where="critic",
    diverges=None,
    heldout=True,
    note="one mis-scaled reward (1e6) at iteration 150 fills the critic's Adam second moments",
    onset=150,
)
def h90_ppo_reward_glitch_poisons_critic(ctx: Context) -> None:
    v_sum: list[float] = []
    moves: list[float] = []
    last: list[torch.Tensor] = []

    def record(model: ActorCritic, opt) -> None:
        crit = list(model.critic.parameters())
        v_sum.append(float(sum(opt.state[p]["exp_avg_sq"].sum() for p in crit)))
        now = [p.detach().clone() for p in crit]
        if last:
            moves.append(float(sum((a - b).norm() for a, b in zip(now, last, strict=False))))
        last[:] = now

    _ppo(ctx, lambda p: torch.optim.Adam(p, lr=1e-3), 9006, 260, 150, record)
    pre_v = _median(v_sum[120:150])
    ctx.check("critic second moment jumped over 1000x at 150", v_sum[150] > 1000 * pre_v)
    ctx.check("still over 100x at 255", v_sum[255] > 100 * pre_v)
    pre_move = _median(moves[120:149])
    ctx.check("critic updates shrank over 5x after", _median(moves[160:]) < pre_move / 5)


@scenario(
    "h90_ppo_cartpole_adamw",
    "adamw",
    "healthy",
    heldout=True,
    note="PPO on a hand-written cart-pole; episodes get longer",
)
def h90_ppo_cartpole_healthy(ctx: Context) -> None:
    _, _, lengths = _ppo(ctx, lambda p: torch.optim.AdamW(p, lr=1e-3), 9007, 250)
    ctx.check("losses finite", all(_finite(ctx.losses)))
    ctx.check(
        "episodes got longer",
        sum(lengths[-20:]) / 20 > 2 * sum(lengths[:20]) / 20,
    )


# -- soft actor-critic on a 1-D point mass -------------------------------------------------------


def mlp(i: int, o: int, h: int = 64, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), act(), nn.Linear(h, h), act(), nn.Linear(h, o))


class PointMass:
    """x'' = u, |u| <= 1, dt 0.05; reward -(x^2 + 0.1 v^2 + 0.01 u^2); 100-step episodes."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.s = self._reset(n)
        self.t = torch.zeros(n)

    def _reset(self, k: int) -> torch.Tensor:
        return torch.cat([torch.rand(k, 1, generator=self.gen) * 4 - 2, torch.zeros(k, 1)], -1)

    def step(self, u: torch.Tensor):
        x, v = self.s.unbind(-1)
        u = u.squeeze(-1)
        v = v + 0.05 * u
        x = x + 0.05 * v
        r = -(x**2 + 0.1 * v**2 + 0.01 * u**2)
        self.s = torch.stack([x, v], -1)
        self.t += 1
        done = self.t >= 100
        if done.any():
            self.s[done] = self._reset(int(done.sum()))
            self.t[done] = 0
        return self.s.clone(), r, done


class SACAgent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.actor = mlp(2, 2)
        self.q1 = mlp(3, 1)
        self.q2 = mlp(3, 1)

    def act(self, s: torch.Tensor, gen: torch.Generator | None = None):
        mu, log_std = self.actor(s).chunk(2, -1)
        std = log_std.clamp(-5, 2).exp()
        eps = torch.randn(mu.shape, generator=gen) if gen is not None else torch.randn_like(mu)
        pre = mu + std * eps
        a = torch.tanh(pre)
        logp = (
            -0.5 * eps**2
            - log_std.clamp(-5, 2)
            - 0.5 * math.log(2 * math.pi)
            - torch.log(1 - a**2 + 1e-6)
        ).sum(-1)
        return a, logp


@scenario(
    "h90_sac_pointmass_1d",
    "adamw",
    "update_ratio_out_of_range",
    where=("q1", "q2"),
    diverges=None,
    heldout=True,
    note="critic param group weight_decay typed 1e3 instead of 1e-3 (AdamW, decoupled)",
    onset=0,
)
def h90_sac_critic_weight_decay_typo(ctx: Context) -> None:
    gen = seeded(9008)
    agent = SACAgent()
    target = copy.deepcopy(agent)
    critic = list(agent.q1.parameters()) + list(agent.q2.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": agent.actor.parameters(), "lr": 3e-4},
            {"params": critic, "lr": 3e-4, "weight_decay": 1e3},  # meant 1e-3
        ],
        weight_decay=0.0,
    )
    env = PointMass(16, gen)
    buf_s, buf_a, buf_r, buf_s2 = [], [], [], []
    s = env.s.clone()
    ratios: dict[str, list[float]] = {"actor": [], "critic": []}
    alpha = 0.05
    norms = [float(sum(p.norm() for p in critic))]
    ctx.attach(agent, opt)
    for step in range(250):
        with torch.no_grad():
            a, _ = (
                agent.act(s, gen)
                if step >= 20
                else (torch.rand(16, 1, generator=gen) * 2 - 1, None)
            )
            s2, r, _ = env.step(a)
        buf_s.append(s)
        buf_a.append(a)
        buf_r.append(r)
        buf_s2.append(s2)
        s = s2
        S, A, R, S2 = (torch.cat(b[-200:]) for b in (buf_s, buf_a, buf_r, buf_s2))
        idx = torch.randint(0, len(R), (128,), generator=gen)
        S, A, R, S2 = S[idx], A[idx], R[idx], S2[idx]
        with torch.no_grad():
            a2, logp2 = target.act(S2, gen)
            sa2 = torch.cat([S2, a2], -1)
            q_t = torch.min(target.q1(sa2), target.q2(sa2)).squeeze(-1) - alpha * logp2
            y = R + 0.99 * q_t
        sa = torch.cat([S, A], -1)
        qloss = F.mse_loss(agent.q1(sa).squeeze(-1), y) + F.mse_loss(agent.q2(sa).squeeze(-1), y)
        for p in critic:
            p.requires_grad_(False)
        an, logp = agent.act(S, gen)
        san = torch.cat([S, an], -1)
        ploss = (alpha * logp - torch.min(agent.q1(san), agent.q2(san)).squeeze(-1)).mean()
        for p in critic:
            p.requires_grad_(True)
        loss = qloss + ploss
        before = [p.detach().clone() for p in agent.parameters()]
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for (n, p), b in zip(agent.named_parameters(), before, strict=False):
                if p.dim() == 2:
                    key = "actor" if n.startswith("actor") else "critic"
                    ratios[key].append(float((p - b).norm() / (b.norm() + 1e-12)))
            for p, tp in zip(agent.parameters(), target.parameters(), strict=False):
                tp.mul_(0.995).add_(0.005 * p)
    norms.append(float(sum(p.detach().norm() for p in critic)))
    crit, act = _median(ratios["critic"]), _median(ratios["actor"])
    ctx.check(
        "critic update/weight ratio median over 0.01 and 10x the actor's",
        crit > max(0.01, 10 * act),
    )
    ctx.check("critic weights decayed to under a tenth", norms[1] < 0.1 * norms[0])


# -- recurrent world model on generated trajectories ---------------------------------------------


def trajectory_batches(gen: torch.Generator, batch: int = 32, horizon: int = 40):
    """A damped 2-D oscillator driven by random actions; observations are noisy positions."""
    while True:
        s = torch.randn(batch, 4, generator=gen)
        acts = torch.randn(batch, horizon, 2, generator=gen) * 0.5
        obs = []
        for t in range(horizon):
            pos, vel = s[:, :2], s[:, 2:]
            vel = vel + 0.1 * (-pos - 0.1 * vel + acts[:, t])
            pos = pos + 0.1 * vel
            s = torch.cat([pos, vel], -1)
            obs.append(pos + 0.01 * torch.randn(batch, 2, generator=gen))
        yield acts, torch.stack(obs, 1)


class WorldModel(nn.Module):
    """Encodes nothing but the first observation, then rolls the latent forward open loop."""

    def __init__(self, hidden: int = 48, cell: str = "relu") -> None:
        super().__init__()
        self.encoder = nn.Linear(2, hidden)
        if cell == "gru":
            self.dynamics = nn.GRU(2, hidden, batch_first=True)
        else:
            self.dynamics = nn.RNN(2, hidden, nonlinearity="relu", batch_first=True)
        self.decoder = nn.Linear(hidden, 2)

    def forward(self, first_obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        h0 = torch.tanh(self.encoder(first_obs))[None]
        out, _ = self.dynamics(acts, h0)
        return self.decoder(out)


def _world_model_fit(ctx: Context, model: WorldModel, opt, gen, steps: int, clip=None) -> None:
    batches = trajectory_batches(gen)
    ctx.attach(model, opt)
    for _ in range(steps):
        acts, obs = next(batches)
        pred = model(obs[:, 0], acts)
        loss = F.mse_loss(pred, obs)
        loss.backward()
        grads = [p.grad.norm() for p in model.dynamics.parameters() if p.grad is not None]
        ctx.grad_norms.append(float(torch.stack(grads).norm()))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h90_rnn_world_model_rollouts",
    "sgd_mom",
    "exploding_gradients",
    where="dynamics",
    diverges="auto",
    heldout=True,
    note="IRNN-style ReLU recurrence (identity init), 40-step open-loop rollouts, no clipping",
    onset=0,
)
def h90_world_model_relu_rnn_explodes(ctx: Context) -> None:
    gen = seeded(9009)
    model = WorldModel(cell="relu")
    with torch.no_grad():
        model.dynamics.weight_hh_l0.copy_(torch.eye(48))
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    _world_model_fit(ctx, model, opt, gen, 150)
    g = ctx.grad_norms
    ctx.check("dynamics gradient went non-finite", not all(_finite(g)))
    ctx.check("run ends non-finite", not math.isfinite(ctx.losses[-1]))


@scenario(
    "h90_rnn_world_model_rollouts_gru",
    "sg_ademamix",
    "healthy",
    heldout=True,
    note="GRU world model, clipped at 1.0",
)
def h90_world_model_gru_healthy(ctx: Context) -> None:
    gen = seeded(9010)
    model = WorldModel(hidden=32, cell="gru")
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3)
    _world_model_fit(ctx, model, opt, gen, 150, clip=1.0)
    ctx.check("losses finite", all(_finite(ctx.losses)))
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- TD3 on a hand-written pendulum --------------------------------------------------------------


class Pendulum:
    """Gym-style pendulum: th'' = 3g/(2l) sin th + 3/(ml^2) u, |u| <= 2, dt 0.05."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.s = self._reset(n)
        self.t = torch.zeros(n)

    def _reset(self, k: int) -> torch.Tensor:
        th = (torch.rand(k, generator=self.gen) * 2 - 1) * math.pi
        return torch.stack([th, (torch.rand(k, generator=self.gen) * 2 - 1)], -1)

    def obs(self) -> torch.Tensor:
        th, thd = self.s.unbind(-1)
        return torch.stack([torch.cos(th), torch.sin(th), thd / 8], -1)

    def step(self, u: torch.Tensor):
        th, thd = self.s.unbind(-1)
        u = 2 * u.squeeze(-1)
        ang = (th + math.pi) % (2 * math.pi) - math.pi
        r = -(ang**2 + 0.1 * thd**2 + 0.001 * u**2)
        thd = (thd + (3 * 10.0 / 2 * torch.sin(th) + 3.0 * u) * 0.05).clamp(-8, 8)
        th = th + thd * 0.05
        self.s = torch.stack([th, thd], -1)
        self.t += 1
        done = self.t >= 200
        if done.any():
            self.s[done] = self._reset(int(done.sum()))
            self.t[done] = 0
        return r


class TD3Agent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Sequential(mlp(3, 1), nn.Tanh())
        self.q1 = mlp(4, 1)
        self.q2 = mlp(4, 1)


@scenario(
    "h90_td3_pendulum_handwritten",
    "adam",
    "healthy",
    heldout=True,
    note="TD3 (twin critics, delayed actor, target smoothing) on a hand-written pendulum",
)
def h90_td3_pendulum_healthy(ctx: Context) -> None:
    gen = seeded(9011)
    agent = TD3Agent()
    target = copy.deepcopy(agent)
    critic = list(agent.q1.parameters()) + list(agent.q2.parameters())
    opt = torch.optim.Adam(agent.parameters(), lr=3e-4)
    env = Pendulum(16, gen)
    buf: list[tuple[torch.Tensor, ...]] = []
    rewards: list[float] = []
    ctx.attach(agent, opt)
    for step in range(240):
        with torch.no_grad():
            o = env.obs()
            if step < 30:
                a = torch.rand(16, 1, generator=gen) * 2 - 1
            else:
                a = (agent.actor(o) + 0.1 * torch.randn(16, 1, generator=gen)).clamp(-1, 1)
            r = env.step(a)
            buf.append((o, a, r, env.obs()))
            rewards.append(float(r.mean()))
        S, A, R, S2 = (torch.cat(z) for z in zip(*buf[-300:], strict=False))
        idx = torch.randint(0, len(R), (128,), generator=gen)
        S, A, R, S2 = S[idx], A[idx], R[idx], S2[idx]
        with torch.no_grad():
            noise = (0.2 * torch.randn(128, 1, generator=gen)).clamp(-0.5, 0.5)
            a2 = (target.actor(S2) + noise).clamp(-1, 1)
            sa2 = torch.cat([S2, a2], -1)
            y = R + 0.97 * torch.min(target.q1(sa2), target.q2(sa2)).squeeze(-1)
        sa = torch.cat([S, A], -1)
        loss = F.mse_loss(agent.q1(sa).squeeze(-1), y) + F.mse_loss(agent.q2(sa).squeeze(-1), y)
        total = loss
        if step % 2 == 0:
            for p in critic:
                p.requires_grad_(False)
            total = loss - agent.q1(torch.cat([S, agent.actor(S)], -1)).mean()
            for p in critic:
                p.requires_grad_(True)
        total.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, tp in zip(agent.parameters(), target.parameters(), strict=False):
                tp.mul_(0.995).add_(0.005 * p)
    ctx.check("losses finite", all(_finite(ctx.losses)))
    ctx.check("critic loss bounded", max(ctx.losses) < 1e3)


# -- inverse dynamics of a 2-link arm ------------------------------------------------------------


def arm_batches(gen: torch.Generator, batch: int = 64):
    """Random (q, dq, ddq) of a planar 2-link arm (m=1, l=1, point masses) -> joint torques."""
    m1 = m2 = 1.0
    l1 = l2 = 1.0
    g = 9.81
    while True:
        q = (torch.rand(batch, 2, generator=gen) * 2 - 1) * math.pi
        dq = torch.randn(batch, 2, generator=gen)
        ddq = torch.randn(batch, 2, generator=gen)
        c2, s2 = torch.cos(q[:, 1]), torch.sin(q[:, 1])
        m11 = (m1 + m2) * l1**2 + m2 * l2**2 + 2 * m2 * l1 * l2 * c2
        m12 = m2 * l2**2 + m2 * l1 * l2 * c2
        m22 = torch.full_like(c2, m2 * l2**2)
        h = m2 * l1 * l2 * s2
        g1 = (m1 + m2) * g * l1 * torch.cos(q[:, 0]) + m2 * g * l2 * torch.cos(q.sum(1))
        g2 = m2 * g * l2 * torch.cos(q.sum(1))
        tau1 = (
            m11 * ddq[:, 0] + m12 * ddq[:, 1] - h * (2 * dq[:, 0] * dq[:, 1] + dq[:, 1] ** 2) + g1
        )
        tau2 = m12 * ddq[:, 0] + m22 * ddq[:, 1] + h * dq[:, 0] ** 2 + g2
        x = torch.cat([torch.cos(q), torch.sin(q), dq, ddq], -1)
        yield x, torch.stack([tau1, tau2], -1)


def _arm_loop(ctx: Context, model, opt, gen, steps: int, before=None) -> None:
    batches = arm_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if before is not None:
            before(step)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h90_inverse_dynamics_2link_arm",
    "adamax",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="shrink-and-perturb at step 300 with noise std 0.5 instead of 0.005",
    onset=300,
)
def h90_arm_shrink_perturb_typo(ctx: Context) -> None:
    gen = seeded(9012)
    model = mlp(8, 2, 128, nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        if step == 300:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9).add_(0.5 * torch.randn(p.shape, generator=gen))  # meant 0.005

    _arm_loop(ctx, model, opt, gen, 450, before)
    pre = sum(ctx.losses[280:300]) / 20
    ctx.check("loss at 300 over 10x the mean before", ctx.losses[300] > 10 * pre)
    ctx.check("losses finite", all(_finite(ctx.losses)))
    ctx.check("recovers under 3x by the end", sum(ctx.losses[-20:]) / 20 < 3 * pre)


@scenario(
    "h90_inverse_dynamics_2link_arm_sgd",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR of 0.5 (meant 0.005) on raw-torque MSE",
    onset=0,
)
def h90_arm_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(9013)
    model = mlp(8, 2, 128, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 0.5  # meant 5e-3

    def before(step: int) -> None:
        for group in opt.param_groups:
            group["lr"] = peak * min(1.0, (step + 1) / 200)

    _arm_loop(ctx, model, opt, gen, 300, before)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blew up after falling",
        min(finite) < 0.5 * ctx.losses[0]
        and (len(finite) < len(ctx.losses) or max(finite[20:]) > 100 * min(finite)),
    )


# -- behaviour-cloning transformer on generated demonstrations -----------------------------------


def gridworld_demos(gen: torch.Generator, n: int = 48, length: int = 12, size: int = 8):
    """An expert walking to a goal on a grid (x first, then y); actions 0..4 (stay/+-x/+-y).
    Inputs per step: agent and goal coordinates scaled to [0, 1]."""
    pos = torch.randint(0, size, (n, 2), generator=gen)
    goal = torch.randint(0, size, (n, 2), generator=gen)
    xs, ys = [], []
    for _ in range(length):
        d = goal - pos
        a = torch.where(
            d[:, 0] > 0,
            1,
            torch.where(
                d[:, 0] < 0, 2, torch.where(d[:, 1] > 0, 3, torch.where(d[:, 1] < 0, 4, 0))
            ),
        )
        xs.append(torch.cat([pos, goal], -1).float() / (size - 1))
        ys.append(a)
        step = torch.tensor([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])[a]
        pos = pos + step
    return torch.stack(xs, 1), torch.stack(ys, 1)


class BCTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 5)  # no final norm: the residual stream feeds the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        h = self.blocks(self.embed(x) + self.pos[:t], mask=mask, is_causal=True)
        return self.head(h)


@scenario(
    "h90_bc_transformer_gridworld_demos",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="48 deterministic expert demos memorised full-batch for 500 steps at lr 3e-2, no regularisation",
    onset=0,
)
def h90_bc_transformer_memorises_demos(ctx: Context) -> None:
    gen = seeded(9014)
    x, y = gridworld_demos(gen)
    model = BCTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ctx.attach(model, opt)
    for _ in range(500):
        ctx.targets(y.reshape(-1))
        logits = model(x).reshape(-1, 5)
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(x).reshape(-1, 5), y.reshape(-1))
    ctx.check("over 40% of the training rows exactly one-hot in float32", frac > 0.4)
    ctx.check("loss below 1e-4 at the end", ctx.losses[-1] < 1e-4)


# -- differentiable spring-mass simulator ---------------------------------------------------------


class SpringForce(nn.Module):
    """Hooke springs between consecutive masses: k (L - L0) d / L (no guard for L = 0)."""

    def __init__(self, springs: int) -> None:
        super().__init__()
        self.log_k = nn.Parameter(torch.zeros(springs))
        self.log_rest = nn.Parameter(torch.zeros(springs))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        d = pos[:, 1:] - pos[:, :-1]
        length = torch.sqrt((d**2).sum(-1, keepdim=True))
        f = self.log_k.exp()[:, None] * (length - self.log_rest.exp()[:, None]) * d / length
        out = torch.zeros_like(pos)
        out[:, :-1] += f
        out[:, 1:] -= f
        return out


class SpringMassSim(nn.Module):
    def __init__(self, masses: int = 4) -> None:
        super().__init__()
        self.spring = SpringForce(masses - 1)
        self.drag = nn.Linear(2, 2, bias=False)
        nn.init.zeros_(self.drag.weight)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, steps: int = 20) -> torch.Tensor:
        out = []
        for _ in range(steps):
            acc = self.spring(pos) - self.drag(vel)
            vel = vel + 0.05 * acc
            pos = pos + 0.05 * vel
            out.append(pos)
        return torch.stack(out, 1)


def _true_spring_rollout(pos, vel, steps: int = 20):
    k = torch.tensor([2.0, 3.0, 1.5])[:, None]
    rest = torch.tensor([0.8, 1.2, 1.0])[:, None]
    out = []
    for _ in range(steps):
        d = pos[:, 1:] - pos[:, :-1]
        length = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        f = k * (length - rest) * d / length
        acc = torch.zeros_like(pos)
        acc[:, :-1] += f
        acc[:, 1:] -= f
        acc = acc - 0.1 * vel
        vel = vel + 0.05 * acc
        pos = pos + 0.05 * vel
        out.append(pos)
    return torch.stack(out, 1)


@scenario(
    "h90_diff_spring_mass_sim",
    "adagrad",
    "nonfinite",
    where="spring",
    diverges=140,
    heldout=True,
    note="a recorded collision starts two masses at the same point: d / |d| = 0/0",
    onset=140,
)
def h90_spring_sim_coincident_masses(ctx: Context) -> None:
    gen = seeded(9015)
    model = SpringMassSim()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    first_bad: list[tuple[int, str]] = []
    now = [0]

    def watch(name: str):
        def hook(mod, args, out) -> None:
            if not first_bad and not torch.isfinite(out).all():
                first_bad.append((now[0], name))

        return hook

    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(watch(name))
    ctx.attach(model, opt)
    for step in range(200):
        now[0] = step
        pos = torch.cumsum(0.6 + 0.8 * torch.rand(32, 4, 1, generator=gen), 1)
        pos = torch.cat([pos, 0.3 * torch.randn(32, 4, 1, generator=gen)], -1)
        vel = 0.3 * torch.randn(32, 4, 2, generator=gen)
        if step == 140:  # a logged collision: masses 1 and 2 recorded at the same point
            pos[5, 2] = pos[5, 1]
        target = _true_spring_rollout(pos, vel)
        loss = F.mse_loss(model(pos, vel), target)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = _finite(ctx.losses)
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])
    ctx.check("first non-finite output in the spring module", first_bad[:1] == [(140, "spring")])
    ctx.check("loss fell before 140", ctx.losses[139] < 0.5 * ctx.losses[0])


# -- neural controller with a Lyapunov loss ------------------------------------------------------


class LyapunovController(nn.Module):
    """u = controller(x) for a damped inverted pendulum; V(x) = |phi(x) - phi(0)|^2 + 0.1|x|^2."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.controller = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.lyapunov = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.lyapunov(x) - self.lyapunov(torch.zeros(1, 2))
        return (phi**2).sum(-1) + 0.1 * (x**2).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.controller(x) - self.controller(torch.zeros(1, 2))
        th, thd = x.unbind(-1)
        thd2 = thd + 0.05 * (9.8 * torch.sin(th) - 0.1 * thd + u.squeeze(-1))
        x2 = torch.stack([th + 0.05 * thd2, thd2], -1)
        return F.relu(self.value(x2) - 0.95 * self.value(x)).mean()


@scenario(
    "h90_lyapunov_neural_controller",
    "rmsprop",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="an LR restart at step 150 peaks at 0.5 (meant 5e-3), decays back; the loss jumps",
    onset=150,
)
def h90_lyapunov_lr_restart_loss_jump(ctx: Context) -> None:
    gen = seeded(9016)
    model = LyapunovController()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    for step in range(350):
        if step >= 150:
            for g in opt.param_groups:  # a restart peaking at 0.5 (meant 5e-3), decaying back
                g["lr"] = max(1e-3, 0.5 * 0.8 ** (step - 150))
        x = (torch.rand(256, 2, generator=gen) * 2 - 1) * torch.tensor([1.0, 2.0])
        loss = model(x)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = sum(ctx.losses[130:150]) / 20
    ctx.check(
        "loss jumped over 1000x within 5 steps of the restart",
        max(ctx.losses[150:155]) > 1000 * pre,
    )
    ctx.check("loss finite", all(_finite(ctx.losses)))
