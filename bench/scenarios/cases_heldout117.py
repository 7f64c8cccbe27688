"""Held-out set 117 (``h117_``): induced instabilities and healthy controls written blind.

Hugging Face MiniCPM5-MoE, Mistral Large 4 text tower and GLM-5 Next text tower (a control) as
byte LMs from tiny configs (no download); hand-written off-policy TD critic on Baird's star,
stock-return direction MLP, drone-attitude imitation MLP, Braille cell CNN, sign-language
keypoint RNN, beehive acoustic classifier, tide-gauge exceedance Poisson regressor, podcast two-tower recommender, protection-relay trip
classifier, smart-meter load disaggregator (fp16 autocast with a GradScaler) and weather-station
temperature GRU nowcaster, all on generated data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers ------------------------------------------------------------------------------


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(x) for x in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


class TextLM(nn.Module):
    """A Hugging Face text tower (hidden states only) with an untied byte head."""

    def __init__(self, tower: nn.Module, dim: int, vocab: int = 128) -> None:
        super().__init__()
        self.model = tower
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids=idx).last_hidden_state)


def _minicpm5(seed: int) -> nn.Module:
    from transformers import MiniCPM5MoeConfig, MiniCPM5MoeForCausalLM

    torch.manual_seed(seed)
    cfg = MiniCPM5MoeConfig(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=24,
        moe_intermediate_size=24,
        num_experts_per_tok=2,
        n_routed_experts=4,
        max_position_embeddings=64,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    cfg._attn_implementation = "eager"
    return MiniCPM5MoeForCausalLM(cfg)


def _mistral_large4(seed: int) -> TextLM:
    from transformers import MistralLarge4TextConfig, MistralLarge4TextModel

    torch.manual_seed(seed)
    cfg = MistralLarge4TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        head_dim=16,
        index_topk=16,
        index_head_dim=8,
        index_n_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    return TextLM(MistralLarge4TextModel(cfg), 32)


def _glm5_next(seed: int) -> TextLM:
    from transformers import Glm5NextTextConfig, Glm5NextTextModel

    torch.manual_seed(seed)
    cfg = Glm5NextTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        kv_lora_rank=16,
        q_lora_rank=16,
        v_head_dim=16,
        qk_nope_head_dim=16,
        index_topk=16,
        index_head_dim=8,
        index_n_heads=2,
        linear_head_dim=16,
        linear_num_heads=2,
        hc_mult=2,
        max_position_embeddings=64,
        pad_token_id=None,
    )
    return TextLM(Glm5NextTextModel(cfg), 32)


def _lm_loop(ctx: Context, model, opt, gen, steps, schedule=None, batch=16, length=32):
    batches = text_batches(gen, batch=batch, length=length)
    ctx.attach(model, opt)
    for step in range(steps):
        if schedule is not None:
            for g in opt.param_groups:
                g["lr"] = g.setdefault("base_lr", g["lr"]) * schedule(step)
        x, y = next(batches)
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        loss = lm_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- Hugging Face MiniCPM5-MoE: attention-logit growth -------------------------------------------


def _minicpm_attention_spread(model: nn.Module, idx: torch.Tensor) -> tuple[float, float]:
    """(largest causal logit spread max-min over a row, mean attention entropy) over layers,
    read back from the eager attention probabilities."""
    with torch.no_grad():
        atts = model(input_ids=idx, output_attentions=True).attentions
    spread, ent = 0.0, []
    t = idx.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for a in atts:
        logp = a.clamp_min(1e-30).log()
        hi = logp.masked_fill(~mask, -1e9).amax(-1)
        lo = logp.masked_fill(~mask, 1e9).amin(-1)
        spread = max(spread, float((hi - lo)[..., 4:].amax()))
        ent.append(float(-(a * logp).sum(-1)[..., 4:].mean()))
    return spread, _mean(ent)


@scenario(
    "h117_hf_minicpm5_moe_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="no QK-norm and the query/key projections on a 25x learning-rate group",
    onset=0,
)
def h117_minicpm5_qk_lr_attention_growth(ctx: Context) -> None:
    """A MiniCPM5-MoE byte LM (no QK-norm) whose query-gate and key projections sit in a
    parameter group meant for the embeddings (lr 2.5e-2 against 1e-3, no weight decay): the
    attention logits grow and attention entropy collapses while the loss stalls."""
    gen = seeded(11701)
    model = _minicpm5(11701)
    fast = [p for n, p in model.named_parameters() if "q_gate_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_gate_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": fast, "lr": 2.5e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1), batch=8))
    s0, e0 = _minicpm_attention_spread(model, probe)
    _lm_loop(ctx, model, opt, gen, 160)
    s1, e1 = _minicpm_attention_spread(model, probe)
    ctx.check("attention logit spread grew 8x", s1 > 8 * s0)
    ctx.check("attention entropy fell below a third", e1 < e0 / 3)
    ctx.check("loss finite", _finite(ctx.losses))


# -- Hugging Face Mistral Large 4 text tower: output-logit divergence, and a control --------------


def _log_z(model: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.logsumexp(model(idx).float(), -1).mean())


@scenario(
    "h117_hf_mistral_large4_text_lm",
    "adamax",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="untied byte head (no softcap, no z-loss) on a 200x learning-rate group",
    onset=0,
)
def h117_mistral_large4_head_logit_drift(ctx: Context) -> None:
    """A Mistral Large 4 text tower with its own untied byte head; the head's parameter group
    has lr 1.0 (a per-group override left from a linear-probe run) and there is neither logit
    softcapping nor a z-loss: the log-partition drifts up and the loss climbs."""
    gen = seeded(11702)
    model = _mistral_large4(11702)
    head = list(model.lm_head.parameters())
    rest = list(model.model.parameters())
    opt = torch.optim.Adamax([{"params": rest, "lr": 5e-3}, {"params": head, "lr": 1.0}])
    probe, _ = next(text_batches(seeded(1), batch=8))
    z0 = _log_z(model, probe)
    _lm_loop(ctx, model, opt, gen, 150)
    z1 = _log_z(model, probe)
    ctx.check("log-partition drifted up by 15", z1 - z0 > 15)
    ctx.check("loss peaked above twice its first value", max(ctx.losses) > 2 * ctx.losses[0])
    ctx.check("loss ended 0.2 nats above its best", _mean(ctx.losses[-10:]) > min(ctx.losses) + 0.2)


# -- Hugging Face GLM-5 Next text tower: slow loss divergence ------------------------------------


@scenario(
    "h117_hf_glm5_next_text_lm",
    "nadam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: warmup then cosine decay, gradient clipping",
)
def h117_glm5_next_healthy(ctx: Context) -> None:
    """A GLM-5 Next text tower (linear-attention and MoE layers) byte LM with a short warmup,
    cosine decay and clipping: an ordinary noisy pre-training curve."""
    gen = seeded(11704)
    model = _glm5_next(11704)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    steps = 120

    def sched(s: int) -> float:
        if s < 12:
            return (s + 1) / 12
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 12) / (steps - 12)))

    batches = text_batches(gen, batch=8, length=16)
    ctx.attach(model, opt)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 5e-3 * sched(step)
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell by 30%", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("loss finite", _finite(ctx.losses))


# -- Baird-star off-policy TD critic: slow loss divergence ----------------------------------------


@scenario(
    "h117_baird_star_td_critic",
    "sgd",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="off-policy semi-gradient TD with linear features (the deadly triad): slow climb",
    onset=0,
)
def h117_baird_td_deadly_triad(ctx: Context) -> None:
    """A linear value critic evaluated off-policy with semi-gradient TD(0) and importance
    ratios on Baird's seven-state star (function approximation + bootstrapping + off-policy
    data): no bad batch, no spike, no overflow; the weights and the TD loss grow steadily."""
    gen = seeded(11717)
    feats = torch.zeros(7, 8)
    for i in range(6):
        feats[i, i], feats[i, 7] = 2.0, 1.0
    feats[6, 6], feats[6, 7] = 1.0, 2.0
    critic = nn.Module()
    critic.value = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        critic.value.weight.copy_(torch.tensor([[1.0, 1, 1, 1, 1, 1, 10, 1]]))
    opt = torch.optim.SGD(critic.parameters(), lr=2e-2)
    ctx.attach(critic, opt)
    w0 = float(critic.value.weight.norm())
    for _ in range(400):
        s = torch.randint(0, 7, (64,), generator=gen)
        solid = torch.rand(64, generator=gen) < 1 / 7  # behaviour: dashed 6/7, solid 1/7
        nxt = torch.where(solid, 6, torch.randint(0, 6, (64,), generator=gen))
        rho = torch.where(solid, 7.0, 0.0)  # target policy: always solid
        v = critic.value(feats[s]).squeeze(-1)
        with torch.no_grad():
            target = 0.99 * critic.value(feats[nxt]).squeeze(-1)
        loss = (rho * (target - v) ** 2).mean() / 2
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss climbed 10x", _mean(ctx.losses[-20:]) > 10 * _mean(ctx.losses[:20]))
    ctx.check("critic weights grew 5x", float(critic.value.weight.norm()) > 5 * w0)


# -- stock-return direction MLP: a bad batch, and a control ---------------------------------------


def _stock_batches(gen: torch.Generator, batch: int = 64, noise: float = 1.0):
    """20 days of standardised returns and volume changes; the label is the sign of a weak
    linear signal plus heavy noise (next-day direction)."""
    w = torch.randn(40, generator=gen) / math.sqrt(40)
    while True:
        x = torch.randn(batch, 40, generator=gen)
        score = x @ w + noise * torch.randn(batch, generator=gen)
        yield x, (score > 0).long()


class StockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    "h117_stock_return_direction_mlp",
    "sgd_mom",
    "data_outlier",
    where=(),
    diverges="auto",
    heldout=True,
    note="one batch of raw prices (x100) instead of standardised returns",
    onset=140,
)
def h117_stock_raw_price_batch(ctx: Context) -> None:
    """A direction classifier trained on standardised returns; at step 140 the loader serves
    one batch straight from the raw price table (prices ~100 in place of z-scores)."""
    gen = seeded(11705)
    model = StockNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = 100.0 + 15.0 * x.abs()
        return x, y

    fit(ctx, model, opt, _stock_batches(gen, noise=0.6), 220, alter=alter)
    before = ctx.losses[120:140]
    ctx.check("loss finite before the batch", _finite(before))
    ctx.check(
        "the bad batch's loss is 10x the recent median", ctx.losses[140] > 10 * _median(before)
    )


@scenario(
    "h117_stock_return_direction_mlp",
    "adam",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: heavy label noise, small learning rate with step decay",
)
def h117_stock_direction_healthy(ctx: Context) -> None:
    gen = seeded(11706)
    model = StockNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    fit(
        ctx,
        model,
        opt,
        _stock_batches(gen, noise=0.8),
        240,
        before=lambda s: sched.step() if s > 0 else None,
    )
    ctx.check("loss fell", _mean(ctx.losses[-30:]) < _mean(ctx.losses[:30]) - 0.03)
    ctx.check("loss finite", _finite(ctx.losses))
    x, y = next(_stock_batches(seeded(11706), batch=2000, noise=0.8))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("direction accuracy above 60%", acc > 0.6)


# -- drone attitude imitation MLP: learning rate above the sharpness limit ----------------------


def _drone_batches(gen: torch.Generator, batch: int = 128):
    """State (roll, pitch, yaw errors, body rates, velocities) -> the PD expert's four motor
    commands (tanh-saturated mixer)."""
    kp = torch.tensor([4.0, 4.0, 2.0])
    kd = torch.tensor([0.8, 0.8, 0.4])
    mix = torch.tensor(
        [[1, 1, 1, 1], [1, -1, -1, 1], [1, 1, -1, -1], [1, -1, 1, -1]], dtype=torch.float32
    )
    while True:
        s = torch.randn(batch, 12, generator=gen) * 0.5
        torque = kp * s[:, 0:3] + kd * s[:, 3:6]
        thrust = 0.5 - 0.3 * s[:, 8:9]
        u = torch.tanh(torch.cat([thrust, torque], 1) @ mix.T * 0.5)
        yield s, u


@scenario(
    "h117_drone_attitude_imitation_mlp",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a learning-rate 'range test' left on: lr ramps 4% per step past 2/lambda_max",
    onset=100,
)
def h117_drone_lr_ramp_past_edge(ctx: Context) -> None:
    """Behaviour cloning of a PD attitude controller; after 100 steps at lr 0.05 the learning
    rate grows 4% per step (a range test left in the config) until lr x lambda_max passes 2 and
    the loss oscillates and blows up."""
    gen = seeded(11707)
    torch.manual_seed(11707)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lrs: list[float] = []

    def before(step: int) -> None:
        lr = 0.05 if step < 100 else 0.05 * 1.04 ** (step - 100)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)

    fixed = next(_drone_batches(seeded(3), batch=512))
    sharp: list[float] = []

    def alter(step: int, x, y):
        if step in (100, 160):
            sharp.append(_top_hessian_eig(model, fixed))
        return x, y

    fit(
        ctx,
        model,
        opt,
        _drone_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
        before=before,
    )
    lam = max(sharp)
    ctx.check("loss fell before the ramp", ctx.losses[99] < 0.5 * ctx.losses[0])
    ctx.check("lr x lambda_max passed 2", lrs[-1] * lam > 2)
    ctx.check(
        "loss ended 5x above its best",
        _mean(ctx.losses[-5:]) > 5 * min(ctx.losses) or not _finite(ctx.losses[-5:]),
    )


def _top_hessian_eig(model: nn.Module, batch) -> float:
    x, y = batch
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(20):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        loss = F.mse_loss(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v, strict=False)), params)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=False))
        v = [h.detach() for h in hv]
    return abs(lam)


# -- Braille cell CNN: softmax collapse, and a control -------------------------------------------

_BRAILLE = [
    "100000", "110000", "100100", "100110", "100010", "110100", "110110", "110010", "010100",
    "010110", "101000", "111000", "101100", "101110", "101010", "111100", "111110", "111010",
    "011100", "011110", "101001", "111001", "010111", "101101", "101111", "101011",
]  # fmt: skip


def _braille_batches(
    gen: torch.Generator, batch: int = 64, noise: float = 0.25, jitter: float = 0.6
):
    """12x8 images of embossed Braille cells (dots at 3 rows x 2 columns), with position
    jitter, blur-like dot spread and scanner noise; 26 letters."""
    pats = torch.tensor([[int(c) for c in p] for p in _BRAILLE], dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(8.0), indexing="ij")
    centres = [(2.5 + 3.5 * r, 2.0 + 4.0 * c) for c in range(2) for r in range(3)]
    while True:
        y = torch.randint(0, 26, (batch,), generator=gen)
        shift = torch.randn(batch, 2, generator=gen) * jitter
        img = torch.zeros(batch, 12, 8)
        for k, (cy, cx) in enumerate(centres):
            d2 = (yy - cy - shift[:, 0, None, None]) ** 2 + (xx - cx - shift[:, 1, None, None]) ** 2
            img += pats[y, k][:, None, None] * torch.exp(-d2 / 1.5)
        img += noise * torch.randn(batch, 12, 8, generator=gen)
        yield img[:, None], y


class BrailleCNN(nn.Module):
    def __init__(self, cosine_scale: float | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 6 * 4, 64)
        self.head = nn.Linear(64, 26, bias=cosine_scale is None)
        self.cosine_scale = cosine_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        h = F.relu(self.fc(x.flatten(1)))
        if self.cosine_scale is None:
            return self.head(h)
        w = F.normalize(self.head.weight, dim=1)
        return self.cosine_scale * F.normalize(h, dim=1) @ w.T


@scenario(
    "h117_braille_cell_cnn",
    "adagrad",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine head with a fixed scale of 600 (meant 16): float32 softmax saturates to 1.0",
    onset=0,
)
def h117_braille_cosine_scale_collapse(ctx: Context) -> None:
    """A Braille cell recogniser with a cosine classifier whose scale was typed as 600 rather
    than 16: once the margins reach ~0.03 the float32 softmax gives the target exactly 1.0 and
    those samples stop contributing gradient."""
    gen = seeded(11708)
    torch.manual_seed(11708)
    model = BrailleCNN(cosine_scale=600.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    fit(ctx, model, opt, _braille_batches(gen, noise=0.05, jitter=0.3), 200)
    x, y = next(_braille_batches(seeded(5), batch=512, noise=0.05, jitter=0.3))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 40% of rows softmax to exactly 1.0", frac > 0.4)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "h117_braille_cell_cnn",
    "sgd_nesterov",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: Nesterov momentum with cosine decay, light weight decay",
)
def h117_braille_healthy(ctx: Context) -> None:
    gen = seeded(11709)
    torch.manual_seed(11709)
    model = BrailleCNN()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    steps = 200

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * step / steps))

    fit(ctx, model, opt, _braille_batches(gen), steps, before=before)
    x, y = next(_braille_batches(seeded(5), batch=512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell by 70%", _mean(ctx.losses[-10:]) < 0.3 * _mean(ctx.losses[:5]))
    ctx.check("accuracy above 90%", acc > 0.9)
    ctx.check("loss finite", _finite(ctx.losses))


# -- sign-language keypoint RNN: exploding gradients ---------------------------------------------


def _sign_batches(gen: torch.Generator, batch: int = 32, frames: int = 40):
    """21 hand keypoints (x, y) over 40 frames; each of 10 signs is a distinct trajectory of
    the hand centre and finger spread, plus tracking jitter."""
    base = torch.randn(21, 2, generator=torch.Generator().manual_seed(0)) * 0.3
    freq = torch.linspace(0.5, 2.0, 10)
    phase = torch.linspace(0, math.pi, 10)
    t = torch.linspace(0, 1, frames)
    while True:
        y = torch.randint(0, 10, (batch,), generator=gen)
        cx = torch.sin(2 * math.pi * freq[y, None] * t + phase[y, None])
        cy = torch.cos(2 * math.pi * freq[y, None] * t)
        spread = 1 + 0.3 * torch.sin(2 * math.pi * (y[:, None] % 3 + 1) * t)
        pts = base[None, None] * spread[..., None, None]
        pts = pts + torch.stack([cx, cy], -1)[:, :, None]
        pts = pts + 0.05 * torch.randn(batch, frames, 21, 2, generator=gen)
        yield pts.reshape(batch, frames, 42), y


class SignRNN(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(42, 64, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0)
            self.rnn.weight_hh_l0.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "h117_sign_language_keypoint_rnn",
    "rmsprop",
    "exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="ReLU recurrence initialised orthogonal x2 over 40 frames, no clipping",
    onset=0,
)
def h117_sign_rnn_gradients_explode(ctx: Context) -> None:
    """An IRNN-style keypoint classifier whose recurrent matrix was initialised as 2 x
    orthogonal (a gain meant for the input weights) with no gradient clipping: across 40 frames
    the backpropagated gradient grows by orders of magnitude."""
    gen = seeded(11710)
    torch.manual_seed(11710)
    model = SignRNN(gain=2.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    rnn_norms: list[float] = []

    batches = _sign_batches(gen)
    ctx.attach(model, opt)
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        rnn_norms.append(float(model.rnn.weight_hh_l0.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ok = [g for g in rnn_norms if math.isfinite(g)]
    head = _median([float(g) for g in ctx.grad_norms])
    ctx.check(
        "recurrent gradient above 1e3 on 90% of steps", _mean([float(g > 1e3) for g in ok]) > 0.9
    )
    ctx.check("gradient norm median above 1e3", head > 1e3)
    ctx.check("loss still above 5 at the end", _mean(ctx.losses[-10:]) > 5)


# -- beehive acoustic classifier: Adam second moment poisoned --------------------------------------


class HiveNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _hive_batches(gen: torch.Generator, batch: int = 64):
    """32 log-band energies of a hive recording -> queenright / queenless / pre-swarm."""
    protos = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        x = 0.6 * protos[y] + torch.randn(batch, 32, generator=gen)
        yield x, y


@scenario(
    "h117_beehive_acoustic_classifier",
    "adam",
    "adam_second_moment_poisoned",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="one clipped recording (x5e4 energies) gives one giant gradient; v then freezes learning",
    onset=60,
)
def h117_hive_clipped_recording_poisons_v(ctx: Context) -> None:
    """At step 60 one recording in the batch is a clipped microphone burst (band energies
    5e4x): its single giant first-layer gradient enters Adam's second moment, which with
    beta2=0.999 dominates for thousands of steps; the poisoned first-layer weights (the rows of
    units active on that recording) all but stop moving."""
    gen = seeded(11711)
    torch.manual_seed(11711)
    model = HiveNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = model.body[0].weight
    snap: dict[str, torch.Tensor] = {}

    def alter(step: int, x, y):
        if step == 60:
            x = x.clone()
            x[0] = 5e4 * x[0].abs()
            snap["v0"] = opt.state[w]["exp_avg_sq"].clone()
        if step == 61:
            snap["v1"] = opt.state[w]["exp_avg_sq"].clone()
        if step in (40, 150):
            snap[f"w{step}"] = w.detach().clone()
        if step in (41, 151):
            snap[f"d{step - 1}"] = (w.detach() - snap[f"w{step - 1}"]).abs()
        return x, y

    fit(ctx, model, opt, _hive_batches(gen), 200, alter=alter)
    poisoned = snap["v1"] > 1e3 * snap["v0"]
    ctx.check(
        "v of over 30% of first-layer weights grew 1000x", float(poisoned.float().mean()) > 0.3
    )
    moved_before = float(snap["d40"][poisoned].mean())
    moved_after = float(snap["d150"][poisoned].mean())
    ctx.check("those weights' steps shrank 10x", moved_after < moved_before / 10)
    ctx.check("loss finite", _finite(ctx.losses))


# -- tide-gauge exceedance Poisson regressor: non-finite ------------------------------------------


class TideNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.Tanh())
        self.rate_head = nn.Linear(32, 1)
        nn.init.constant_(self.rate_head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.rate_head(self.body(x))).squeeze(-1)  # bug: relu, not softplus


def _tide_batches(gen: torch.Generator, batch: int = 64):
    """Tidal constituent phases (M2, S2, K1, O1, N2 as sin/cos) -> count of high-water
    threshold exceedances in the day (Poisson, many zero days)."""
    amp = torch.tensor([1.2, 0.5, 0.4, 0.3, 0.25])
    while True:
        ph = torch.rand(batch, 5, generator=gen) * 2 * math.pi
        x = torch.cat([ph.sin(), ph.cos()], 1)
        level = (amp * ph.cos()).sum(1)
        rate = torch.exp(1.5 * level - 1.0)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (rate - y * torch.log(rate)).mean()


@scenario(
    "h117_tide_gauge_exceedance_poisson",
    "radam",
    "nonfinite",
    where=("rate_head",),
    diverges="auto",
    heldout=True,
    note="Poisson rate through a ReLU (softplus intended) and log(rate): a zero rate gives inf/NaN",
    onset=0,
)
def h117_tide_relu_rate_log_zero(ctx: Context) -> None:
    """An exceedance-count regressor whose rate head ends in a ReLU (the softplus was dropped
    in a refactor) and whose loss takes log(rate): as low-water days push rates down, one rate
    reaches exactly 0 and the loss becomes inf, the gradients NaN."""
    gen = seeded(11712)
    torch.manual_seed(11712)
    model = TideNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)
    fit(ctx, model, opt, _tide_batches(gen), 200, loss_fn=_poisson_nll, classifier=False)
    first = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("the loss became non-finite", first is not None)
    ctx.check("finite for the first 20 steps", first is not None and first >= 20)
    after = ctx.losses[first:] if first is not None else []
    ctx.check(
        "non-finite on most steps after", _mean([float(not math.isfinite(v)) for v in after]) > 0.5
    )


# -- podcast two-tower recommender: a loss spike on resume -----------------------------------------


class TwoTower(nn.Module):
    def __init__(self, users: int = 200, items: int = 100, dim: int = 16) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.user_mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, dim))
        self.item_mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, dim))
        for e in (self.user, self.item):
            nn.init.normal_(e.weight, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.user_mlp(self.user(x[:, 0]))
        v = self.item_mlp(self.item(x[:, 1]))
        return (u * v).sum(-1)


def _listen_batches(gen: torch.Generator, batch: int = 256):
    """(listener, episode) pairs -> completed-the-episode, from latent tastes; episode
    popularity is Zipf-like."""
    g0 = torch.Generator().manual_seed(2)
    uf, itf = torch.randn(200, 8, generator=g0), torch.randn(100, 8, generator=g0)
    pop = 1.0 / torch.arange(1, 101).float() ** 0.8
    while True:
        u = torch.randint(0, 200, (batch,), generator=gen)
        i = torch.multinomial(pop, batch, replacement=True, generator=gen)
        p = torch.sigmoid((uf[u] * itf[i]).sum(1))
        y = (torch.rand(batch, generator=gen) < p).float()
        yield torch.stack([u, i], 1), y


@scenario(
    "h117_podcast_two_tower_recommender",
    "adam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resumed from a checkpoint without optimizer or scheduler state: fresh Adam at 10x lr",
    onset=150,
)
def h117_podcast_resume_without_optimizer_state(ctx: Context) -> None:
    """A two-tower recommender trained with Adam and a decayed learning rate; at step 150 the
    job is resumed from a weights-only checkpoint: Adam's moments restart from zero and the
    scheduler restarts at its 10x peak, so the first steps move every parameter by ~lr and
    the loss spikes, then recovers."""
    gen = seeded(11713)
    torch.manual_seed(11713)
    model = TwoTower()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = _listen_batches(gen)
    ctx.attach(model, opt)
    for step in range(300):
        if step == 150:  # the resumed job: same objects, state wiped, schedule restarted
            opt.state.clear()
        lr = 1e-2 * 0.985**step if step < 150 else 1e-1 * 0.97 ** (step - 150)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _mean(ctx.losses[140:150])
    peak = max(ctx.losses[150:170])
    ctx.check("loss spiked 1.5x within 20 steps of the resume", peak > 1.5 * pre)
    ctx.check("loss recovered below the spike", _mean(ctx.losses[-10:]) < 0.8 * peak)
    ctx.check("loss finite", _finite(ctx.losses))


# -- protection-relay trip classifier: update ratio out of range -----------------------------------


def _relay_batches(gen: torch.Generator, batch: int = 64):
    """One cycle (16 samples) of three phase currents and voltages -> normal / phase-to-ground
    / phase-to-phase / three-phase fault."""
    t = torch.arange(16) * 2 * math.pi / 16
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        amp_i = torch.ones(batch, 3)
        amp_i[y == 1, 0] = 4.0
        amp_i[y == 2, :2] = 3.0
        amp_i[y == 3] = 5.0
        amp_v = 1.0 - 0.15 * (amp_i - 1)
        shift = torch.tensor([0.0, -2 * math.pi / 3, 2 * math.pi / 3])
        ph = torch.rand(batch, 1, 1, generator=gen) * 2 * math.pi
        cur = amp_i[..., None] * torch.sin(t + shift[:, None] + ph)
        vol = amp_v[..., None] * torch.sin(t + shift[:, None] + ph + 0.3)
        x = torch.cat([cur, vol], 1).flatten(1) + 0.8 * torch.randn(batch, 96, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.2  # mislabelled event records
        yield x, torch.where(flip, torch.randint(0, 4, (batch,), generator=gen), y)


class RelayNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Linear(96, 64)
        self.hidden = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.hidden(F.relu(self.feat(x)))))


@scenario(
    "h117_fault_relay_trip_classifier",
    "adamw",
    "update_ratio_out_of_range",
    where=("feat",),
    diverges="auto",
    heldout=True,
    note="the feature layer's param group has lr 0.5 (typo for 5e-4)",
    onset=0,
)
def h117_relay_feature_group_lr_typo(ctx: Context) -> None:
    """A relay trip classifier with per-layer learning rates; the feature layer's group reads
    lr=0.5 where 5e-4 was meant: each step changes its weights by a large fraction of their
    norm while the other layers move ~1e-3 per step."""
    gen = seeded(11714)
    torch.manual_seed(11714)
    model = RelayNet()
    opt = torch.optim.AdamW(
        [
            {"params": model.feat.parameters(), "lr": 0.5},
            {"params": list(model.hidden.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
        weight_decay=0.01,
    )
    ratios_feat: list[float] = []
    ratios_head: list[float] = []
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        for name, w in (("feat", model.feat.weight), ("head", model.head.weight)):
            if name in prev and torch.isfinite(w).all():
                r = float((w.detach() - prev[name]).norm() / (prev[name].norm() + 1e-12))
                (ratios_feat if name == "feat" else ratios_head).append(r)
            prev[name] = w.detach().clone()

    fit(ctx, model, opt, _relay_batches(gen), 150, before=before)
    ctx.check("feature layer update ratio median above 0.02", _median(ratios_feat) > 0.02)
    ctx.check("head update ratio median below 0.01", _median(ratios_head) < 0.01)
    ctx.check(
        "feature layer moves 5x faster than the head",
        _median(ratios_feat) > 5 * _median(ratios_head),
    )


# -- smart-meter load disaggregator: fp16 overflow under a GradScaler ------------------------------


class MeterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, 16, 9, padding=4), nn.ReLU(), nn.Conv1d(16, 32, 9, padding=4), nn.ReLU()
        )
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x[:, None])
        return self.head(h.sum(-1) / 16.0)  # sum pooling over the window (scaled)


def _meter_batches(gen: torch.Generator, batch: int = 16, scale: list | None = None):
    """128 one-second readings of a home's total load -> kettle / fridge / washer on (multi-
    label). ``scale[0]`` is the unit the feed reports in (1.0: kW)."""
    t = torch.arange(128.0)
    while True:
        on = (torch.rand(batch, 3, generator=gen) < 0.4).float()
        kettle = on[:, 0:1] * 2.5 * ((t > 40) & (t < 90)).float()
        fridge = on[:, 1:2] * 0.15 * (1 + 0.2 * torch.sin(t / 5))
        washer = on[:, 2:3] * (0.5 + 0.4 * torch.sign(torch.sin(t / 9)))
        x = 0.2 + kettle + fridge + washer + 0.03 * torch.randn(batch, 128, generator=gen)
        yield x * (scale[0] if scale else 1.0), on


@scenario(
    "h117_smart_meter_disaggregator",
    "asgd",
    "amp_overflow",
    where=("encoder",),
    diverges="auto",
    heldout=True,
    note="the feed switches from kW to W at step 60: fp16 activations overflow, every step skipped",
    onset=60,
)
def h117_meter_watts_fp16_overflow(ctx: Context) -> None:
    """A conv disaggregator trained under fp16 autocast with a GradScaler; at step 60 a meter
    firmware update makes the feed report watts instead of kilowatts: the sum-pooled encoder
    activations exceed fp16's 65504, the loss is inf and the scaler skips every step and keeps
    halving its scale."""
    gen = seeded(11715)
    torch.manual_seed(11715)
    model = MeterNet()
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    unit = [1.0]

    def before(step: int) -> None:
        unit[0] = 1.0 if step < 60 else 1000.0

    overflowed: list[bool] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = m.encoder(x[:, None])
        overflowed.append(bool(not torch.isfinite(h.sum(-1) / 16.0).all()))
        return m.head(h.sum(-1) / 16.0)

    fit(
        ctx,
        model,
        opt,
        _meter_batches(gen, scale=unit),
        100,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        before=before,
        scaler=scaler,
        amp=True,
        forward=forward,
    )
    ctx.check(
        "finite and falling before the unit change",
        _finite(ctx.losses[:60]) and _mean(ctx.losses[50:60]) < _mean(ctx.losses[:10]),
    )
    ctx.check(
        "fp16 activations overflowed on most steps after",
        _mean([float(o) for o in overflowed[-40:]]) > 0.9,
    )
    ctx.check("the scaler's scale collapsed 1000x", min(ctx.scales) < 2.0**12 / 1000)


# -- weather-station temperature GRU nowcaster: a control ----------------------------------------


@scenario(
    "h117_weather_station_temp_gru",
    "rprop",
    "healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: full-batch Rprop on a fixed set of station windows",
)
def h117_weather_station_healthy(ctx: Context) -> None:
    """Nowcasts the next hour's temperature from the last 24 hourly readings (temperature,
    humidity, pressure tendency) of 12 stations: diurnal cycle, synoptic drift and sensor
    noise. Full-batch Rprop over a fixed training set, as is usual for such small sets."""
    gen = seeded(11716)
    torch.manual_seed(11716)
    n, t = 384, 25
    hours = torch.rand(n, 1, generator=gen) * 24 + torch.arange(t)
    drift = torch.cumsum(0.3 * torch.randn(n, t, generator=gen), 1)
    temp = 12 + 6 * torch.sin(2 * math.pi * (hours - 9) / 24) + drift
    temp = temp + 0.3 * torch.randn(n, t, generator=gen)
    hum = 70 - 2 * (temp - 12) + 3 * torch.randn(n, t, generator=gen)
    pres = torch.cumsum(0.2 * torch.randn(n, t, generator=gen), 1)
    feats = torch.stack([(temp - 12) / 6, (hum - 70) / 12, pres / 2], -1)
    x, y = feats[:, :24], (temp[:, 24] - 12) / 6

    class Nowcaster(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(z)
            return self.head(out[:, -1]).squeeze(-1)

    model = Nowcaster()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3, step_sizes=(1e-6, 0.05))
    ctx.attach(model, opt)
    for _ in range(150):
        idx = torch.randint(0, n, (n,), generator=gen)[: n - 32]  # a little resampling noise
        loss = F.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell by 80%", _mean(ctx.losses[-10:]) < 0.2 * _mean(ctx.losses[:3]))
    ctx.check("loss finite", _finite(ctx.losses))
