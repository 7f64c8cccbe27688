"""Held-out set 138 (``h138_``): Hugging Face DeepSeek-OCR-2 text tower and PP-FormulaNet text
decoder from tiny configs, and hand-written models of crafts and instruments not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs of the same kinds of models (warmup, schedules, noisy batches).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces ---------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and sum(losses[-k:]) / k < ratio * sum(losses[:k]) / k


class Regressor(nn.Module):
    """Features -> ``body`` (Linear/activation stack) -> ``head``."""

    def __init__(self, n_in: int, width: int, depth: int = 2, act=nn.Tanh, n_out: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _tabular(gen: torch.Generator, n_in: int, batch: int, noise: float = 0.05):
    """Endless batches of a smooth nonlinear target of ``n_in`` generated features."""
    w = torch.randn(n_in, generator=gen)
    v = torch.randn(n_in, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, y[:, None]


class TextTowerLM(nn.Module):
    """A Hugging Face text tower (hidden states) with an untied ``lm_head``."""

    def __init__(self, tower: nn.Module, dim: int, vocab: int) -> None:
        super().__init__()
        self.tower = tower
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.tower(input_ids=idx).last_hidden_state)


def deepseek_ocr2_text_lm(vocab: int = 128, dim: int = 32) -> TextTowerLM:
    from transformers import DeepseekOcr2TextConfig, DeepseekOcr2TextModel

    config = DeepseekOcr2TextConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=dim // 2,
        n_routed_experts=4,
        n_shared_experts=1,
        moe_intermediate_size=dim,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        mlp_layer_types=["dense", "dense"],
    )
    return TextTowerLM(DeepseekOcr2TextModel(config), dim, vocab)


def pp_formulanet_text_lm(vocab: int = 128, dim: int = 32) -> TextTowerLM:
    from transformers import PPFormulaNetTextConfig, PPFormulaNetTextModel

    config = PPFormulaNetTextConfig(
        vocab_size=vocab,
        d_model=dim,
        encoder_layers=1,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_ffn_dim=2 * dim,
        decoder_attention_heads=2,
        max_position_embeddings=64,
        dropout=0.0,
    )
    return TextTowerLM(PPFormulaNetTextModel(config), dim, vocab)


def _lm(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)


# -- Hugging Face text towers ------------------------------------------------------------------------


@scenario(
    "deepseek_ocr2_text_lm",
    "adamw",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="fine-tuning on a tiny fixed corpus with lm_head in a param group at 50x the tower's lr"
    " and no weight decay: the memorised logits keep growing",
    onset=0,
)
def h138_deepseek_ocr2_head_lr_logits(ctx: Context) -> None:
    gen = seeded(13801)
    torch.set_num_threads(1)
    model = deepseek_ocr2_text_lm()
    head = [model.lm_head.weight]
    rest = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 1e-3}, {"params": head, "lr": 5e-2, "weight_decay": 0.0}],
        weight_decay=0.1,
    )
    data = text_batches(gen, batch=8, length=16)
    corpus = [next(data) for _ in range(2)]
    ctx.attach(model, opt)
    tops = []
    for step in range(120):
        x, y = corpus[step % 2]
        logits = model(x)
        loss = _lm(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        tops.append(float(logits.detach().abs().amax()))
    ctx.check("largest logit grew more than 20x", tops[-1] > 20 * tops[0])
    ctx.check("largest logit above 15", tops[-1] > 15)
    ctx.check("still growing in the second half", tops[-1] > 1.1 * tops[60])
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "deepseek_ocr2_text_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="warmup + cosine AdamW, clipped, on byte text",
)
def h138_deepseek_ocr2_healthy(ctx: Context) -> None:
    gen = seeded(13802)
    torch.set_num_threads(1)
    model = deepseek_ocr2_text_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 120
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    data = text_batches(gen, batch=8, length=16)
    ctx.attach(model, opt)
    for _ in range(steps):
        x, y = next(data)
        loss = _lm(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
    ctx.check("loss fell", _fell(ctx.losses))


@scenario(
    "pp_formulanet_text_decoder",
    "adam",
    "gradient_spike",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="one step's loss summed instead of averaged (accumulation bug): a 128x gradient",
    onset=70,
)
def h138_pp_formulanet_sum_reduction_spike(ctx: Context) -> None:
    gen = seeded(13803)
    torch.set_num_threads(1)
    model = pp_formulanet_text_lm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = text_batches(gen, batch=8, length=16)
    ctx.attach(model, opt)
    norms = []
    for step in range(120):
        x, y = next(data)
        logits = model(x)
        loss = _lm(logits, y)
        total = _lm(logits, y, "sum") if step == 70 else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    ctx.check(
        "gradient norm at onset > 30x the median before", norms[70] > 30 * _median(norms[40:70])
    )
    ctx.check("gradient norm back to normal after", max(norms[75:]) < 5 * _median(norms[40:70]))
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "pp_formulanet_text_decoder",
    "adam",
    "healthy",
    heldout=True,
    note="Adam with a step decay, on byte text",
)
def h138_pp_formulanet_healthy(ctx: Context) -> None:
    gen = seeded(13804)
    torch.set_num_threads(1)
    model = pp_formulanet_text_lm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    data = text_batches(gen, batch=8, length=16)
    ctx.attach(model, opt)
    for _ in range(120):
        x, y = next(data)
        loss = _lm(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
    ctx.check("loss fell", _fell(ctx.losses))


# -- hand-written ----------------------------------------------------------------------------------


def _hvp_top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, v)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "lumberjack_saw_cut_timer",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="SGD lr warmed up past 2/sharpness (no cap): the cut-time regressor oscillates out",
    onset=58,
)
def h138_lumberjack_lr_past_sharpness(ctx: Context) -> None:
    gen = seeded(13805)
    torch.set_num_threads(1)
    model = Regressor(6, 32, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = _tabular(gen, 6, 64)
    probe = next(data)
    ctx.attach(model, opt)
    lrs, sharp = [], 0.0
    for step in range(110):
        lr = 0.01 * (1.06**step)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step == 60:
            sharp = _hvp_top_eig(model, lambda: F.mse_loss(model(probe[0]), probe[1]))
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("lr passed 2/sharpness by the end", lrs[-1] * sharp > 2)
    ctx.check("lr below 2/sharpness at step 40", lrs[40] * sharp < 2)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blew up",
        len(finite) < len(ctx.losses) or max(ctx.losses[-10:]) > 20 * min(ctx.losses),
    )


@scenario(
    "tinsmith_seam_strength_net",
    "sgd_mom",
    "exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="12-layer ReLU net with an over-scaled init (1.3x He): gradients grow toward the input"
    " and, under SGD momentum, from step to step",
    onset=0,
)
def h138_tinsmith_overscaled_init(ctx: Context) -> None:
    gen = seeded(13806)
    torch.set_num_threads(1)
    model = Regressor(8, 32, depth=12, act=nn.ReLU)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.3 * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9)
    data = _tabular(gen, 8, 64)
    ctx.attach(model, opt)
    first, last = [], []
    for _ in range(60):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        g0 = model.body[0].weight.grad
        first.append(float(g0.norm()) if g0 is not None else float("nan"))
        last.append(float(model.head.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
    ctx.check("first-layer gradient norm > 100 at step 0", first[0] > 100)
    grown = [v for v in first[1:5] if math.isfinite(v)]
    ctx.check(
        "first-layer gradient grew > 100x within 4 steps", max(grown, default=0) > 100 * first[0]
    )
    bad = [v for v in ctx.losses if not math.isfinite(v)]
    ctx.check("loss blew up", bool(bad) or ctx.losses[-1] > 100 * ctx.losses[0])


class ContourClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@scenario(
    "contour_line_classifier",
    "adamax",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="a hand-rolled decoupled weight decay with its sign flipped (w *= 1 + lr*wd) from step"
    " 40: the weights inflate a little each step and the loss climbs",
    onset=40,
)
def h138_contour_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(13807)
    torch.set_num_threads(1)
    model = ContourClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = digit_batches(gen, 64)
    ctx.attach(model, opt)
    norms = []
    for step in range(200):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 40:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + 2e-3 * 20.0)
        ctx.step(loss)
        norms.append(float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5))
    low = min(ctx.losses[:60])
    ctx.check("weights inflated > 10x after onset", norms[-1] > 10 * norms[39])
    ctx.check("loss climbed > 5x its low", _median(ctx.losses[-10:]) > 5 * low)


class LeadCameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, 1)
        nn.init.constant_(self.head.bias, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    "lead_came_stress_estimator",
    "nadam",
    "nonfinite",
    where=("head",),
    diverges=80,
    heldout=True,
    note="log of a raw linear head (no softplus); a panel with a negative span reading at step 80"
    " drives a prediction negative: log gives NaN and the NaN spreads to every weight",
    onset=80,
)
def h138_lead_came_log_of_negative(ctx: Context) -> None:
    gen = seeded(13808)
    torch.set_num_threads(1)
    model = LeadCameNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    w = torch.rand(5, generator=gen) + 0.2
    ctx.attach(model, opt)
    for step in range(100):
        x = torch.rand(32, 5, generator=gen)
        stress = 2.0 + x @ w + 0.05 * torch.randn(32, generator=gen)
        if step == 80:
            x[3] = -40.0  # a mis-signed span reading in mm
        pred = model(x)[:, 0]
        loss = F.mse_loss(torch.log(pred), torch.log(stress))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("finite before the onset", _finite(ctx.losses[:80]))
    ctx.check("loss NaN at the onset", not math.isfinite(ctx.losses[80]))
    ctx.check("head weights non-finite after", not bool(torch.isfinite(model.head.weight).all()))


@scenario(
    "pinhole_exposure_model",
    "adam",
    "amp_overflow",
    where=("body.0",),
    diverges=50,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 50 raw (unscaled) sensor counts reach the"
    " model: the first layer's fp16 output overflows, every step is skipped",
    onset=50,
)
def h138_pinhole_raw_counts_fp16(ctx: Context) -> None:
    gen = seeded(13809)
    torch.set_num_threads(1)
    model = Regressor(4, 32, depth=2, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    data = _tabular(gen, 4, 32)
    ctx.attach(model, opt, scaler=scaler)
    overflowed = []
    for step in range(90):
        x, y = next(data)
        if step >= 50:
            x = x * 4.0e4  # the normalisation stage was dropped: raw counts
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.body[0](x)
            out = model.head(model.body[1:](h))
        overflowed.append(not bool(torch.isfinite(h).all()))
        loss = F.mse_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        ctx.scales.append(float(scaler.get_scale()))
    ctx.check("no overflow before the onset", not any(overflowed[:50]))
    ctx.check("first layer overflows fp16 after", all(overflowed[50:]))
    ctx.check("scale collapsed", ctx.scales[-1] < 1e-3 * ctx.scales[49])


@scenario(
    "metronome_drift_model",
    "rmsprop",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch at step 60 logs tempo as beat intervals in microseconds: a few huge inputs",
    onset=60,
)
def h138_metronome_microsecond_batch(ctx: Context) -> None:
    gen = seeded(13810)
    torch.set_num_threads(1)
    model = Regressor(6, 32, depth=2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _tabular(gen, 6, 32)
    ctx.attach(model, opt)
    peak = []
    for step in range(120):
        x, y = next(data)
        if step == 60:
            x[:4] = x[:4] * 1e4
            y[:4] = y[:4] * 1e3
        peak.append(float(x.abs().max()))
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    base = _median(ctx.losses[40:60])
    ctx.check("input at onset > 1000x the usual", peak[60] > 1000 * _median(peak[:60]))
    ctx.check("loss at onset > 100x the median before", ctx.losses[60] > 100 * base)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "harpoon_line_tension_controller",
    "nesterov",
    "loss_spike",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a per-group warm restart sets the head's lr 40x for 4 steps at step 70: loss spikes"
    " and comes back",
    onset=70,
)
def h138_harpoon_head_restart_spike(ctx: Context) -> None:
    gen = seeded(13811)
    torch.set_num_threads(1)
    model = Regressor(6, 32, depth=2)
    head = list(model.head.parameters())
    rest = list(model.body.parameters())
    opt = torch.optim.SGD(
        [{"params": rest}, {"params": head}], lr=0.02, momentum=0.9, nesterov=True
    )
    data = _tabular(gen, 6, 32)
    ctx.attach(model, opt)
    for step in range(140):
        opt.param_groups[1]["lr"] = 0.8 if 70 <= step < 74 else 0.02
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    base = _median(ctx.losses[50:70])
    ctx.check("loss spiked > 5x after the onset", max(ctx.losses[70:80]) > 5 * base)
    ctx.check("loss came back", _median(ctx.losses[-10:]) < 2 * base)
    ctx.check("finite", _finite(ctx.losses))


class SnowshoeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.snow_embed = nn.Embedding(12, 8)
        nn.init.normal_(self.snow_embed.weight, std=0.02)
        self.body = nn.Sequential(nn.Linear(12, 32), nn.Tanh())
        self.head = nn.Linear(32, 1)

    def forward(self, snow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([self.snow_embed(snow), x], 1)))


@scenario(
    "snowshoe_grip_regressor",
    "radam",
    "update_ratio_out_of_range",
    where=("snow_embed",),
    diverges=None,
    heldout=True,
    note="the snow-condition embedding's lr typed as 5e-1 instead of 5e-4 from step 40",
    onset=40,
)
def h138_snowshoe_embed_lr_typo(ctx: Context) -> None:
    gen = seeded(13812)
    torch.set_num_threads(1)
    model = SnowshoeNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.snow_embed.parameters(), "lr": 5e-4},
            {"params": list(model.body.parameters()) + list(model.head.parameters())},
        ],
        lr=2e-3,
    )
    effect = torch.randn(12, generator=gen)
    w = torch.randn(4, generator=gen)
    ctx.attach(model, opt)
    ratios = []
    for step in range(100):
        if step == 40:
            opt.param_groups[0]["lr"] = 5e-1
        snow = torch.randint(0, 12, (32,), generator=gen)
        x = torch.randn(32, 4, generator=gen)
        y = (effect[snow] + torch.tanh(x @ w))[:, None]
        before = model.snow_embed.weight.detach().clone()
        loss = F.mse_loss(model(snow, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        ratios.append(float((model.snow_embed.weight - before).norm() / before.norm()))
    ctx.check("embedding update ratio before onset < 0.05", max(ratios[10:40]) < 0.05)
    ctx.check("embedding update ratio after onset > 0.3", max(ratios[40:50]) > 0.3)
    ctx.check("finite", _finite(ctx.losses))


class ShearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(10, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(x)))


@scenario(
    "topiary_shear_cut_classifier",
    "asgd",
    "loss_of_plasticity",
    where=("hidden",),
    diverges=None,
    heldout=True,
    note="ASGD at a high lr on unnormalised blade-gauge readings kills most ReLUs in the first task;"
    " at step 100 a new hedge species arrives and the net cannot learn the new mapping",
    onset=100,
)
def h138_topiary_dead_relus_new_hedge(ctx: Context) -> None:
    gen = seeded(13813)
    torch.set_num_threads(1)
    model = ShearNet()
    opt = torch.optim.ASGD(model.parameters(), lr=1.0, t0=1e6)
    proj_a = torch.randn(10, 4, generator=gen)
    proj_b = torch.randn(10, 4, generator=gen)
    ctx.attach(model, opt)
    dead = []
    for step in range(200):
        x = 3.0 + 2.0 * torch.randn(64, 10, generator=gen)
        proj = proj_a if step < 100 else proj_b
        y = ((x - 3.0) @ proj).argmax(1)
        ctx.targets(y)
        h = model.hidden(x)
        loss = F.cross_entropy(model.head(model.act(h)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        dead.append(float((h.detach() <= 0).all(0).float().mean()))
    ctx.check("most hidden units dead by the onset", dead[99] > 0.6)
    ctx.check(
        "new task not learnt (loss stays near its level at the switch)",
        _median(ctx.losses[-20:]) > 0.8 * _median(ctx.losses[100:110]),
    )


@scenario(
    "tuning_fork_decay_forecaster",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    note="beta2=0.9999; one strike transient at step 60 (a 1e6 target) puts a giant"
    " gradient into the head's second moment: the head barely moves afterwards",
    onset=60,
)
def h138_tuning_fork_poisoned_v(ctx: Context) -> None:
    gen = seeded(13814)
    torch.set_num_threads(1)
    model = Regressor(5, 32, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    data = _tabular(gen, 5, 32)
    ctx.attach(model, opt)
    moves, vs = [], []
    for step in range(150):
        x, y = next(data)
        if step >= 100:
            y = y + 1.5  # the next fork is tuned higher: the head's bias must move
        if step == 60:
            y[0] = 1.0e6
        before = model.head.weight.detach().clone()
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        moves.append(float((model.head.weight - before).norm()))
        vs.append(float(opt.state[model.head.weight]["exp_avg_sq"].max()))
    ctx.check("head second moment up > 1e4x at onset", vs[60] > 1e4 * vs[59])
    ctx.check("head second moment still > 100x at the end", vs[-1] > 100 * vs[59])
    ctx.check("head updates shrank > 3x after", _median(moves[80:]) < 0.33 * _median(moves[30:60]))
    ctx.check(
        "shifted target not tracked", _median(ctx.losses[-10:]) > 3 * _median(ctx.losses[40:60])
    )


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "weaving_shuttle_speed_regressor",
    "adagrad",
    "healthy",
    heldout=True,
    note="Adagrad on noisy shuttle-speed features, with occasional noisier batches",
)
def h138_weaving_shuttle_healthy(ctx: Context) -> None:
    gen = seeded(13815)
    torch.set_num_threads(1)
    model = Regressor(7, 32, depth=2, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    data = _tabular(gen, 7, 32, noise=0.1)
    ctx.attach(model, opt)
    for step in range(150):
        x, y = next(data)
        if step % 37 == 0:
            y = y + 0.3 * torch.randn(y.shape, generator=gen)  # a noisier loom
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))


@scenario(
    "spinning_wheel_yarn_regressor",
    "adadelta",
    "healthy",
    heldout=True,
    note="Adadelta (lr 1.0) on yarn-evenness features, small batches",
)
def h138_spinning_wheel_healthy(ctx: Context) -> None:
    gen = seeded(13816)
    torch.set_num_threads(1)
    model = Regressor(6, 48, depth=2, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    data = _tabular(gen, 6, 16, noise=0.1)
    ctx.attach(model, opt)
    for _ in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
