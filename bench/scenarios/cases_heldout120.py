"""Held-out set 120 (``h120_``): 12 faults and 4 healthy controls, written blind.

Hugging Face text towers built from tiny configs (Music Flamingo, Janus, Qwen3-Omni-MoE, the
Canary decoder, MiniMax-M3 VL, LLaVA-OneVision 1.5) and hand-written models of new fields
(earthquake magnitudes, CAPTCHA glyphs, ship tracks, fall detection, poker hands, power-grid
frequency, RNA pairing, catalyst energies, reef patches, parcel ETAs). Data are generated or
bundled; nothing is downloaded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    MLP,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _tiny_text(config, **extra):
    """Shrink a Hugging Face text config in place to a 2-layer, 32-wide model (vocab 128)."""
    sizes = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    sizes.update(extra)
    for key, value in sizes.items():
        setattr(config, key, value)
    return config


def _causal_lm(config_name: str):
    """The text tower of a multimodal Hugging Face model, from its default config made tiny."""
    import transformers
    from transformers import AutoModelForCausalLM

    text = _tiny_text(getattr(transformers, config_name)().text_config)
    return AutoModelForCausalLM.from_config(text)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _lm_step(ctx, model, opt, x, y, *, clip: float | None = None) -> torch.Tensor:
    out = model(x).logits
    loss = lm_loss(out, y)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)
    return out


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "musicflamingo_text_lm",
    "adam",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="Music Flamingo's Qwen2 text tower fine-tuned for many epochs on a tiny set, ported "
    "without its final RMSNorm and with the head's lr 200x the body's (a muP multiplier "
    "applied the wrong way): the unnormalised output logits grow without bound",
    onset=0,
)
def h120_musicflamingo_text_head_lr(ctx):
    gen = seeded(12001)
    model = _causal_lm("MusicFlamingoConfig")
    model.model.norm = nn.Identity()  # a port that dropped the final RMSNorm before the head
    head = list(model.lm_head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.Adam([{"params": body, "lr": 1e-3}, {"params": head, "lr": 2e-1}])
    ctx.attach(model, opt)
    stream = text_batches(gen, batch=16, length=32)
    fixed = [next(stream) for _ in range(2)]  # a tiny fine-tuning set, many epochs
    peaks = []
    for step in range(260):
        x, y = fixed[step % 2]
        out = _lm_step(ctx, model, opt, x, y)
        peaks.append(float(out.detach().abs().max()))
    ctx.check("output logits grew 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the largest logit passed 80", peaks[-1] > 80)
    ctx.check("and kept growing", peaks[-1] > 1.5 * peaks[130])


class QuakeNet(nn.Module):
    """Magnitude from a 3-component seismogram window (normalised) and its log peak amplitude."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wave, logamp = x[:, :, :-1], x[:, 0, -1:]
        h = F.max_pool1d(F.relu(self.conv1(wave)), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(torch.cat([h, logamp], 1)).squeeze(-1)


def _quake_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        mag = 2 + 4 * torch.rand(batch, generator=gen)
        onset = torch.randint(8, 24, (batch, 1), generator=gen).float()
        decay = 0.05 + 0.1 * torch.rand(batch, 1, generator=gen)
        env = torch.where(t >= onset, torch.exp(-decay * (t - onset).clamp(min=0)), 0.0)
        carrier = torch.sin(t * (0.4 + 0.1 * mag[:, None] / 6))
        comps = []
        for _ in range(3):
            noise = 0.1 * torch.randn(batch, length, generator=gen)
            comps.append(env * carrier * (0.5 + torch.rand(batch, 1, generator=gen)) + noise)
        wave = torch.stack(comps, 1)
        amp = 10 ** (mag - 3) * (1 + 0.2 * torch.randn(batch, generator=gen)).abs()
        wave = wave / wave.std(-1, keepdim=True)
        logamp = torch.log10(amp + 1e-3)[:, None, None].expand(batch, 3, 1)
        yield torch.cat([wave, logamp], -1), mag


@scenario(
    "earthquake_magnitude_cnn",
    "sgd_mom",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="an epoch-end batch takes a code path with reduction='sum' instead of 'mean': one "
    "gradient 32x the norm (the recorded loss is the mean, normal); the run recovers",
    onset=120,
)
def h120_earthquake_magnitude_sum_reduction(ctx):
    gen = seeded(12002)
    model = QuakeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _quake_batches(gen)
    norms = []
    for step in range(200):
        x, y = next(batches)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        bugged = F.mse_loss(pred, y, reduction="sum") if step == 120 else loss
        bugged.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(norms[100:120])[10]
    ctx.check("the onset gradient is 15x the median", norms[120] > 15 * before)
    ctx.check(
        "the recorded loss was normal at the onset",
        ctx.losses[120] < 3 * _mean(ctx.losses[100:120]),
    )
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check(
        "the model trained before the spike",
        _mean(ctx.losses[100:120]) < 0.5 * _mean(ctx.losses[:10]),
    )


@scenario(
    "janus_text_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges="auto",
    heldout=True,
    note="Janus's Llama text tower with an lr override whose regex meant the embeddings but "
    "matched q_proj/k_proj: the query-key logits (no QK-norm) grow until attention saturates",
    onset=0,
)
def h120_janus_text_qk_lr_override(ctx):
    gen = seeded(12003)
    model = _causal_lm("JanusConfig")
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if "q_proj" not in n and "k_proj" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 5e-2}], weight_decay=0.0
    )
    captured: dict[str, torch.Tensor] = {}
    attn0 = model.model.layers[0].self_attn
    attn0.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o.detach()))
    attn0.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o.detach()))

    def qk_max() -> float:
        q = captured["q"].reshape(*captured["q"].shape[:2], 2, 16).transpose(1, 2)
        k = captured["k"].reshape(*captured["k"].shape[:2], 2, 16).transpose(1, 2)
        return float((q @ k.transpose(-1, -2) / 4.0).abs().max())

    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    logits = []
    for _ in range(150):
        x, y = next(batches)
        _lm_step(ctx, model, opt, x, y)
        logits.append(qk_max())
    ctx.check("layer 0's attention logits grew 20x", logits[-1] > 20 * logits[0])
    ctx.check("attention logits above 50", logits[-1] > 50)


class CosineHead(nn.Module):
    """Prototype head: scaled cosine similarity, the scale learned as a log (CLIP style)."""

    def __init__(self, dim: int, classes: int, clamp: float | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.clamp = clamp

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        log_scale = self.log_scale
        if self.clamp is not None:
            log_scale = log_scale.clamp(max=math.log(self.clamp))
        return log_scale.exp() * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class CaptchaReader(nn.Module):
    """Reads one distorted CAPTCHA glyph (a jittered, noisy 8x8 digit) with a small CNN."""

    def __init__(self, clamp: float | None = 100.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = CosineHead(16 * 16, 10, clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


def _captcha_batches(gen: torch.Generator, batch: int = 64):
    from scenarios.common import digit_batches

    for x, y in digit_batches(gen, batch):
        img = x.reshape(-1, 8, 8)
        shift = int(torch.randint(-1, 2, (1,), generator=gen))
        img = torch.roll(img, shift, dims=2)
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
        lines = torch.rand(batch, 8, 1, generator=gen) < 0.02  # strike-through lines
        yield torch.where(lines, 1.0, img).reshape(-1, 64), y


@scenario(
    "captcha_char_reader",
    "rprop",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a cosine-prototype head whose learned logit scale lost its CLIP-style clamp, trained "
    "full-batch with Rprop on a small labelled set: the scale runs away and float32 softmax "
    "rounds every target probability to exactly 1.0 (the gradient vanishes)",
    onset=0,
)
def h120_captcha_reader_unclamped_logit_scale(ctx):
    gen = seeded(12004)
    model = CaptchaReader(clamp=None)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    x, y = next(_captcha_batches(gen, 256))
    collapsed = []
    for _ in range(150):
        ctx.targets(y)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(out.detach(), y))
    ctx.check("the logit scale grew 100x", float(model.head.log_scale.detach().exp()) > 1000)
    ctx.check("over 90% of rows collapsed to exactly 1.0", collapsed[-1] > 0.9)
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))


class ShipTracker(nn.Module):
    """A GRU over a vessel's last AIS fixes (dx, dy, speed, heading sin/cos) -> next displacement."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _ship_batches(gen: torch.Generator, batch: int = 32, steps: int = 12):
    while True:
        heading = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        speed = 0.5 + torch.rand(batch, 1, generator=gen)
        turn = 0.15 * torch.randn(batch, 1, generator=gen)
        k = torch.arange(steps + 1, dtype=torch.float32)
        h = heading + turn * k
        dx = speed * torch.cos(h) + 0.05 * torch.randn(batch, steps + 1, generator=gen)
        dy = speed * torch.sin(h) + 0.05 * torch.randn(batch, steps + 1, generator=gen)
        feats = torch.stack([dx, dy, speed.expand_as(dx), torch.sin(h), torch.cos(h)], -1)
        yield feats[:, :-1], torch.stack([dx[:, -1], dy[:, -1]], -1)


@scenario(
    "ship_trajectory_gru",
    "nesterov",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a linear lr warmup to 8.0 (set for a normalised-gradient optimizer) under SGD with "
    "Nesterov momentum: the lr passes the edge of stability, 2(1-mu)/lambda, and the run blows up",
    onset=40,
)
def h120_ship_trajectory_lr_warmup_past_edge(ctx):
    gen = seeded(12005)
    model = ShipTracker()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _ship_batches(gen)
    probe_batch = next(batches)

    def probe(m, b):
        return F.mse_loss(m(b[0]), b[1])

    ctx.attach(model, opt, probe=(probe, probe_batch))
    for step in range(160):
        if step >= 40:
            opt.param_groups[0]["lr"] = 0.02 + (8.0 - 0.02) * min((step - 40) / 100, 1.0)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(ctx.losses[:60])
    ctx.check("the model learned during the flat phase", best < 0.5 * ctx.losses[0])
    tail = [v if math.isfinite(v) else 1e9 for v in ctx.losses[-10:]]
    ctx.check("the run blew up once the lr passed the edge", min(tail) > 10 * best)


def _fall_batches(gen: torch.Generator, batch: int = 64, length: int = 32):
    """Wrist accelerometer windows (3 axes): daily activity, or a fall (free-fall dip, impact
    spike, then lying still with gravity on another axis)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        fall = torch.rand(batch, generator=gen) < 0.5
        walk = 0.3 * torch.sin(t * (0.5 + 0.3 * torch.rand(batch, 1, generator=gen)))
        acc = torch.zeros(batch, 3, length)
        acc[:, 2] = 1.0 + walk
        acc[:, 0] = 0.5 * walk
        at = torch.randint(8, 20, (batch,), generator=gen)
        for i in torch.nonzero(fall).flatten().tolist():
            k = int(at[i])
            acc[i, :, k - 3 : k] *= 0.2
            acc[i, :, k] += torch.tensor([2.5, 1.5, 3.0])
            acc[i, 2, k + 1 :] = 0.1
            acc[i, 0, k + 1 :] = 1.0
        acc = acc + 1.0 * torch.randn(acc.shape, generator=gen)
        yield acc.flatten(1), fall.long()


@scenario(
    "fall_detection_mlp",
    "rmsprop",
    "loss_of_plasticity",
    where=("0", "2"),
    diverges=None,
    heldout=True,
    note="a warm restart misconfigured to lr 0.1 (100x) for 5 steps kills the ReLU units of both "
    "hidden layers; the net never recovers at the normal lr",
    onset=80,
)
def h120_fall_detection_restart_kills_relus(ctx):
    gen = seeded(12006)
    model = MLP([96, 64, 64, 2])
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _fall_batches(gen)
    for step in range(200):
        opt.param_groups[0]["lr"] = 0.1 if 80 <= step < 85 else 1e-3
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        h1 = model[1](model[0](x))
        h2 = model[3](model[2](h1))
    ctx.check("the net learned before the restart", _mean(ctx.losses[70:80]) < 0.2)
    ctx.check("most hidden units are dead", max(dead_fraction(h1), dead_fraction(h2)) > 0.8)
    ctx.check("the loss stayed high after", _mean(ctx.losses[-20:]) > 3 * _mean(ctx.losses[70:80]))


class MoeTextLM(nn.Module):
    """A text model with its own untied head (the thinker's head lives outside the text model)."""

    def __init__(self, model: nn.Module, dim: int = 32, vocab: int = 128) -> None:
        super().__init__()
        self.model = model
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, x: torch.Tensor):
        class Out:
            pass

        out = Out()
        out.logits = self.lm_head(self.model(input_ids=x).last_hidden_state)
        return out


@scenario(
    "qwen3_omni_moe_text_lm",
    "nadam",
    "adam_second_moment_poisoned",
    where=("lm_head", "model.embed_tokens"),
    diverges=None,
    heldout=True,
    note="Qwen3-Omni-MoE's thinker text model: one step backpropagates the loss still "
    "multiplied by a 2^16 loss scale (the unscale was skipped); NAdam's second moment keeps "
    "that gradient and the updates shrink ~1000x, so training stalls",
    onset=100,
)
def h120_qwen3_omni_moe_unscaled_step(ctx):
    from transformers import Qwen3OmniMoeTextConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeThinkerTextModel,
    )

    gen = seeded(12007)
    config = _tiny_text(
        Qwen3OmniMoeTextConfig(),
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )
    model = MoeTextLM(Qwen3OmniMoeThinkerTextModel(config))
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    snaps = {}
    for step in range(220):
        if step in (90, 100, 150, 160):
            snaps[step] = model.lm_head.weight.detach().clone()
        x, y = next(batches)
        loss = lm_loss(model(x).logits, y)
        (loss * 65536.0 if step == 100 else loss).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    v = opt.state[model.lm_head.weight]["exp_avg_sq"]
    ctx.check("the head's second moment holds the giant gradient", float(v.max()) > 1e3)
    moved_before = float((snaps[100] - snaps[90]).norm())
    moved_after = float((snaps[160] - snaps[150]).norm())
    ctx.check("the head's updates shrank 10x after the onset", moved_after < 0.1 * moved_before)
    ctx.check("the loss fell before the onset", ctx.losses[99] < 0.7 * ctx.losses[0])
    ctx.check("it never got back", _mean(ctx.losses[-10:]) > _mean(ctx.losses[90:100]))
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))


def _poker_batches(gen: torch.Generator, batch: int = 64, raw_stacks: bool = False):
    """Five-card hands (rank/12 and a suit one-hot per card) plus the stack-to-pot ratio;
    the target is a hand-strength score (pairs, trips, flush, high card) in [0, 1]."""
    while True:
        cards = torch.stack([torch.randperm(52, generator=gen)[:5] for _ in range(batch)])
        rank, suit = cards % 13, cards // 13
        feats = torch.cat([rank.float() / 12, F.one_hot(suit, 4).flatten(1).float()], 1)
        counts = F.one_hot(rank, 13).sum(1)
        pairs = (counts == 2).sum(1).float()
        trips = (counts >= 3).sum(1).float()
        flush = (suit == suit[:, :1]).all(1).float()
        high = rank.max(1).values.float() / 12
        score = (0.1 * high + 0.25 * pairs + 0.45 * trips + 0.6 * flush).clamp(max=1.0)
        stack = 1 + 20 * torch.rand(batch, 1, generator=gen)  # in big blinds
        if raw_stacks:
            stack = stack * 100 * 250  # a table feed in cents, not big blinds
        yield torch.cat([feats, stack / 20], 1), score


class HandStrengthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.card = nn.Linear(5, 16)  # shared per-card encoder
        self.mix = nn.Linear(5 * 16 + 1, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ranks, suits, stack = x[:, :5], x[:, 5:25].reshape(-1, 5, 4), x[:, 25:]
        cards = F.relu(self.card(torch.cat([ranks[..., None], suits], -1))).flatten(1)
        return self.out(F.relu(self.mix(torch.cat([cards, stack], 1)))).squeeze(-1)


@scenario(
    "poker_hand_strength",
    "radam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch from a second table feed carries stacks in cents, 25000x the others: the "
    "loss jumps on that batch and the run recovers",
    onset=150,
)
def h120_poker_hand_strength_cents_batch(ctx):
    gen = seeded(12008)
    model = HandStrengthNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    normal = _poker_batches(gen)
    raw = _poker_batches(gen, raw_stacks=True)
    for step in range(230):
        x, y = next(raw) if step == 150 else next(normal)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _mean(ctx.losses[130:150])
    ctx.check("the model learned before the outlier", before < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("the outlier batch's loss is 5x the run's", ctx.losses[150] > 5 * before)
    ctx.check("the run recovered", _mean(ctx.losses[-20:]) < 2 * before)


class CanaryTranscriber(nn.Module):
    """Canary's transformer decoder cross-attending to projected acoustic frames."""

    def __init__(self, vocab: int = 40) -> None:
        super().__init__()
        from transformers.models.canary.configuration_canary import CanaryDecoderConfig
        from transformers.models.canary.modeling_canary import CanaryDecoder

        config = _tiny_text(CanaryDecoderConfig(), vocab_size=vocab, pad_token_id=0)
        self.frames = nn.Linear(20, 32)
        self.frame_pos = nn.Embedding(64, 32)
        self.decoder = CanaryDecoder(config)
        self.head = nn.Linear(32, vocab)

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        memory = self.frames(frames) + self.frame_pos(torch.arange(frames.shape[1]))
        h = self.decoder(input_ids=tokens, encoder_hidden_states=memory).last_hidden_state
        return self.head(h)


def _speech_batches(gen: torch.Generator, batch: int = 16, tokens: int = 10, vocab: int = 40):
    """Acoustic frames (two per token: a fixed token signature plus noise), the transcript
    shifted right behind a start token, and the targets (-100 past each transcript's end)."""
    signature = torch.randn(vocab, 20, generator=torch.Generator().manual_seed(7))
    while True:
        text = torch.randint(3, vocab, (batch, tokens), generator=gen)
        length = torch.randint(4, tokens + 1, (batch, 1), generator=gen)
        frames = signature[text].repeat_interleave(2, 1)
        frames = frames + 0.3 * torch.randn(frames.shape, generator=gen)
        inputs = torch.cat([torch.full((batch, 1), 1), text[:, :-1]], 1)
        targets = torch.where(torch.arange(tokens) < length, text, -100)
        yield frames, inputs, targets


@scenario(
    "canary_decoder",
    "adam",
    "nonfinite",
    where=(),
    diverges=150,
    heldout=True,
    note="a batch of empty transcripts (silence clips after filtering) masks every target "
    "out: the token-averaged loss (nll * mask).sum() / mask.sum() is 0/0 = NaN, and Adam "
    "writes the NaN gradient into its moments and every weight",
    onset=150,
)
def h120_canary_decoder_empty_transcripts(ctx):
    gen = seeded(12009)
    model = CanaryTranscriber()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _speech_batches(gen)
    for step in range(170):
        frames, inputs, targets = next(batches)
        if step == 150:
            targets = torch.full_like(targets, -100)
        logits = model(frames, inputs)
        mask = (targets != -100).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
        loss = (nll * mask).sum() / mask.sum()  # a token-averaged loss: 0/0 on that batch
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the model learned before", _mean(ctx.losses[140:150]) < 0.7 * ctx.losses[0])
    ctx.check(
        "the loss was finite before the onset", all(math.isfinite(v) for v in ctx.losses[:150])
    )
    ctx.check("the onset loss is NaN", math.isnan(ctx.losses[150]))
    ctx.check("the weights are no longer finite", not _finite(model))


def _grid_batches(gen: torch.Generator, batch: int = 64, lags: int = 24):
    """Grid frequency deviation (mHz / 100): a daily load cycle, an inter-area oscillation and
    AR(1) noise; 24 past readings -> the next."""
    length = 4096
    t = torch.arange(length, dtype=torch.float32)
    noise = torch.zeros(length)
    eps = 0.15 * torch.randn(length, generator=gen)
    for i in range(1, length):
        noise[i] = 0.9 * noise[i - 1] + eps[i]
    series = 0.8 * torch.sin(2 * math.pi * t / 96) + 0.3 * torch.sin(2 * math.pi * t / 7) + noise
    while True:
        start = torch.randint(0, length - lags - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(lags + 1)
        win = series[idx]
        yield win[:, :-1], win[:, -1]


@scenario(
    "power_grid_freq_forecaster",
    "adagrad",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="an L2 prior added to the loss with its strength negated (a config refactor turned "
    "'prior precision' into a log-prior sign): the weights grow a little each step and the loss climbs slowly, no spike",
    onset=0,
)
def h120_power_grid_negated_l2_prior(ctx):
    gen = seeded(12010)
    model = MLP([24, 64, 64, 1])
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = _grid_batches(gen)
    for _ in range(450):
        x, y = next(batches)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        l2 = sum(p.pow(2).sum() for p in model.parameters())
        (loss - 0.3 * l2).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(ctx.losses)
    ctx.check("the model learned first", best < 0.5 * ctx.losses[0])
    ctx.check("the loss then climbed past its best + 1", _mean(ctx.losses[-10:]) > best + 1)
    ctx.check(
        "slowly: no step jumped 5x its predecessor",
        all(b < 5 * a + 0.5 for a, b in zip(ctx.losses[:-1], ctx.losses[1:], strict=False)),
    )


class RnaPairScorer(nn.Module):
    """Scores an RNA sequence's pairing (stem) potential: an Elman ReLU RNN over one-hot bases."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 32)
        self.rnn = nn.RNN(32, 32, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(32, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
            self.rnn.bias_hh_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1]).squeeze(-1)


def _rna_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Sequences with a planted hairpin (a stem and its reverse complement) or none; the
    target is the fraction of Watson-Crick pairs between the sequence and its reverse."""
    comp = torch.tensor([3, 2, 1, 0])  # A-U, C-G
    while True:
        seq = torch.randint(0, 4, (batch, length), generator=gen)
        stem = torch.randint(0, 4, (batch, 8), generator=gen)
        hairpin = torch.rand(batch, generator=gen) < 0.5
        seq[hairpin, 4:12] = stem[hairpin]
        seq[hairpin, -12:-4] = comp[stem[hairpin]].flip(1)
        pairs = (comp[seq] == seq.flip(1)).float().mean(1)
        yield F.one_hot(seq, 4).float(), 4 * pairs


@scenario(
    "rna_pair_rnn",
    "asgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="the recurrent matrix initialised orthogonal with gain 1.6 (a value tuned for a tanh cell) "
    "under ReLU over 40 bases: the backward pass grows geometrically and the first "
    "gradient is ~4e3; the first step breaks the run",
    onset=0,
)
def h120_rna_pair_rnn_orthogonal_gain(ctx):
    gen = seeded(12011)
    model = RnaPairScorer(gain=1.6)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = _rna_batches(gen)
    norms = []
    for _ in range(60):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = [n for n in norms[:3] if math.isfinite(n)]
    ctx.check("the first gradients are huge", bool(first) and max(first) > 1e3)
    tail = [v if math.isfinite(v) else 1e30 for v in ctx.losses[-5:]]
    ctx.check("the run blew up", min(tail) > 100 * min(ctx.losses[:3]))


class CatalystEnergyNet(nn.Module):
    """Slab + adsorbate descriptors -> total DFT energy, reported in meV by the head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MLP([16, 64, 64], act=nn.SiLU)
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eV -> meV inside the model: under fp16 autocast this product overflows past 65.5 eV
        return (self.head(F.silu(self.body(x))) * 1000.0).squeeze(-1)


def _catalyst_batches(gen: torch.Generator, batch: int = 64):
    """Descriptors (coordination numbers, d-band centre, electronegativities, slab size...) and
    a total energy (eV) that is mostly the slab's size times a per-atom energy."""
    w = torch.randn(16, generator=torch.Generator().manual_seed(11))
    while True:
        x = torch.randn(batch, 16, generator=gen)
        atoms = 24 + 8 * x[:, 0].clamp(-2, 2)  # slab size
        energy = -4.0 * atoms + 0.8 * (x @ w) / 4 + 0.3 * torch.sin(2 * x[:, 1])
        yield x, energy * 1000.0  # targets in meV


@scenario(
    "catalyst_energy_regressor",
    "adamax",
    "amp_overflow",
    where=("head",),
    diverges=28,
    heldout=True,
    note="fp16 autocast with a GradScaler on total energies: the head's eV -> meV conversion "
    "happens in fp16, so once predictions pass 65.5 eV the output is inf (nearly) every step; "
    "the scaler skips those steps and its scale collapses",
    onset=28,
)
def h120_catalyst_energy_fp16_mev(ctx):
    gen = seeded(12012)
    model = CatalystEnergyNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _catalyst_batches(gen)
    overflow = []
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        overflow.append(not bool(torch.isfinite(out).all()))
        loss = F.mse_loss(out.float() / 1000.0, y / 1000.0)  # in eV^2
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("no fp16 overflow before the onset", not any(overflow[:28]))
    ctx.check("the output overflows on 90% of steps from the onset", _mean(overflow[28:]) > 0.9)
    ctx.check("the loss is inf at the end", not math.isfinite(ctx.losses[-1]))
    ctx.check("the loss fell before the onset", ctx.losses[27] < 0.9 * ctx.losses[0])
    ctx.check("the scaler's scale collapsed", ctx.scales[-1] < 1e-10 * max(ctx.scales[:28]))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "minimax_m3_vl_text_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="MiniMax-M3 VL's text tower (a dense layer, then a routed-expert layer with shared "
    "experts) on byte text: AdamW, linear warmup then cosine decay, clipping at 1.0",
)
def h120_minimax_m3_vl_text_cosine(ctx):
    import transformers

    gen = seeded(12013)
    config = _tiny_text(
        transformers.MiniMaxM3VLTextConfig(),
        num_local_experts=4,
        num_experts_per_tok=2,
        mlp_layer_types=["dense", "sparse"],
        layer_types=["full_attention"] * 2,
        dense_intermediate_size=64,
        shared_intermediate_size=32,
        rotary_dim=8,
        index_n_heads=2,
        index_head_dim=16,
        index_block_size=8,
        index_topk_blocks=2,
    )
    model = transformers.MiniMaxM3VLForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    steps = 240
    for step in range(steps):
        warm = min(1.0, (step + 1) / 20)
        cos = 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.param_groups[0]["lr"] = 3e-3 * warm * (0.1 + 0.9 * cos)
        x, y = next(batches)
        _lm_step(ctx, model, opt, x, y, clip=1.0)
    ctx.check("the loss fell by a third", _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "llava_onevision15_text_lm",
    "adam",
    "healthy",
    heldout=True,
    note="LLaVA-OneVision 1.5's Qwen3 text tower (QK-norm) on byte text, Adam at 2e-3 with "
    "clipping; every 60 steps a batch of denser code text (a shift of distribution, normal)",
)
def h120_llava_onevision15_text_mixed_stream(ctx):
    gen = seeded(12014)
    model = _causal_lm("LlavaOnevision15Config")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    dense = text_batches(gen, batch=16, length=32, vocab=64)  # folded bytes: a harder mix
    for step in range(220):
        x, y = next(dense) if step % 60 == 59 else next(batches)
        _lm_step(ctx, model, opt, x, y, clip=1.0)
    ctx.check("the loss fell by a third", _mean(ctx.losses[-20:]) < 0.67 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))


class ReefPatchNet(nn.Module):
    """Classifies 16x16 benthic patches (coral, algae, sand, rubble...) with a BN CNN."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def _reef_batches(gen: torch.Generator, batch: int = 32, classes: int = 5):
    """Textures per class: a grating of its own frequency and orientation, its own colour
    cast, random phase, under water-like blue haze, caustic brightness and noise."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    freq = torch.tensor([0.3, 0.6, 0.9, 1.2, 1.6])
    angle = torch.tensor([0.0, 0.7, 1.4, 2.1, 2.8])
    colour = torch.tensor(
        [[0.9, 0.5, 0.4], [0.3, 0.7, 0.3], [0.9, 0.85, 0.6], [0.6, 0.6, 0.6], [0.7, 0.3, 0.7]]
    )
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        jitter = 0.3 * torch.randn(batch, generator=gen)
        a = angle[y] + jitter
        phase = 2 * math.pi * torch.rand(batch, generator=gen)
        proj = xx * torch.cos(a)[:, None, None] + yy * torch.sin(a)[:, None, None]
        tex = torch.sin(freq[y][:, None, None] * proj + phase[:, None, None])
        img = colour[y][:, :, None, None] * (0.6 + 0.4 * tex[:, None])
        haze = 0.3 * torch.rand(batch, 1, 1, 1, generator=gen)
        img = (1 - haze) * img + haze * torch.tensor([0.1, 0.4, 0.7])[None, :, None, None]
        img = img * (0.7 + 0.6 * torch.rand(batch, 1, 1, 1, generator=gen))
        yield img + 0.15 * torch.randn(img.shape, generator=gen), y


@scenario(
    "reef_benthic_classifier",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="a BN CNN on generated benthic patches, SGD momentum 0.9 at 0.05 with a step decay "
    "(x0.2 at step 150) and light weight decay",
)
def h120_reef_benthic_step_decay(ctx):
    gen = seeded(12015)
    model = ReefPatchNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ctx.attach(model, opt)
    batches = _reef_batches(gen)
    for step in range(220):
        if step == 150:
            opt.param_groups[0]["lr"] = 0.01
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))


def _parcel_batches(gen: torch.Generator, batch: int = 64):
    """Parcel features (route km, stops before it, hour of day, weekday, rain, van load) ->
    delivery time in hours, with heavy-tailed delays (missed doors, traffic)."""
    while True:
        km = 2 + 40 * torch.rand(batch, generator=gen)
        stops = torch.randint(0, 60, (batch,), generator=gen).float()
        hour = 8 + 10 * torch.rand(batch, generator=gen)
        weekday = torch.randint(0, 6, (batch,), generator=gen).float()
        rain = (torch.rand(batch, generator=gen) < 0.3).float()
        load = torch.rand(batch, generator=gen)
        rush = torch.exp(-((hour - 17) ** 2) / 2)
        eta = 0.04 * km + 0.08 * stops + 0.5 * rush + 0.3 * rain + 0.2 * (weekday == 5).float()
        delay = -torch.log(torch.rand(batch, generator=gen)) / 4.0
        delay = delay * (torch.rand(batch, generator=gen) < 0.1)
        x = torch.stack(
            [
                km / 40,
                stops / 60,
                torch.sin(2 * math.pi * hour / 24),
                torch.cos(2 * math.pi * hour / 24),
                weekday / 5,
                rain,
                load,
            ],
            1,
        )
        yield x, eta + delay + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    "parcel_eta_regressor",
    "sgd",
    "healthy",
    heldout=True,
    note="an MLP on parcel features with heavy-tailed delays, plain SGD at 0.05 and a Huber "
    "loss; the occasional missed-door batch is normal noise",
)
def h120_parcel_eta_huber_sgd(ctx):
    gen = seeded(12016)
    model = MLP([7, 64, 32, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _parcel_batches(gen)
    for _ in range(300):
        x, y = next(batches)
        loss = F.huber_loss(model(x).squeeze(-1), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("the run stayed finite", all(math.isfinite(v) for v in ctx.losses))
