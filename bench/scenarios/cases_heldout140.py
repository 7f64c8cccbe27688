"""Held-out set 140 (``h140_``): Hugging Face MarkupLM (sequence classifier) and FocalNet
(image classifier on digits) from tiny configs, and hand-written models of trades, crafts,
sports and natural phenomena not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs of the same kinds of models (OneCycleLR with clipping, gradient
accumulation with ReduceLROnPlateau, label smoothing, fp16 autocast with a GradScaler).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)

# -- shared pieces ---------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen: torch.Generator, n_in: int, batch: int, noise: float = 0.05, scale: float = 1.0):
    """Endless batches of a smooth nonlinear target of ``n_in`` generated features."""
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, scale * (y + noise * torch.randn(batch, 1, generator=gen))


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


def _train(
    ctx: Context,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    scale=None,
    clip=None,
    sched=None,
):
    """A plain loop: ``before(step)`` for injected bugs, ``alter(step, x, y)`` for bad batches,
    ``scale(step)`` multiplies the backpropagated loss (a loss-weight bug)."""
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = loss * scale(step) if scale is not None else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- Hugging Face MarkupLM: a param-group typo on the attention projections -------------------


def hf_markuplm_cls(vocab: int = 128, dim: int = 32):
    from transformers import MarkupLMConfig, MarkupLMForSequenceClassification

    config = MarkupLMConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        max_depth=8,
        xpath_unit_hidden_size=8,
    )
    return MarkupLMForSequenceClassification(config)


def _qk_probe(model, layer: int = 0):
    """Hooks the layer's query/key Linears; returns a function giving max |q.k|/sqrt(d_head)."""
    att = model.markuplm.encoder.layer[layer].attention.self
    seen: dict[str, torch.Tensor] = {}
    att.query.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach()))
    att.key.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach()))
    heads = model.config.num_attention_heads

    def logit_max() -> float:
        q, k = seen["q"], seen["k"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        return float((q @ k.transpose(-1, -2)).abs().max() / math.sqrt(d // heads))

    return logit_max


@scenario(
    "hf_markuplm_cls",
    "AdamW",
    "attention_logit_growth",
    where=(
        "markuplm.encoder.layer.0.attention.self",
        "markuplm.encoder.layer.1.attention.self",
    ),
    diverges=None,
    heldout=True,
    note="A per-module learning-rate table gives the query/key projections lr=3e-2 (typed for "
    "3e-4) and no weight decay; the q.k/sqrt(d) logits of the self-attention grow without bound "
    "while the rest of the model trains at 3e-4.",
)
def h140_hf_markuplm_qk_lr_typo(ctx: Context) -> None:
    gen = seeded(14001)
    model = hf_markuplm_cls()
    qk = [
        p
        for n, p in model.named_parameters()
        if ".attention.self.query" in n or ".attention.self.key" in n
    ]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-4}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    probe = _qk_probe(model)
    batches = bert_batches(gen, batch=32, length=16)
    ctx.attach(model, opt)
    maxes = []
    for _ in range(160):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(input_ids=x).logits
        maxes.append(probe())
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("attention logit max grew at least 20x", maxes[-1] > 20 * maxes[0])
    ctx.check("attention logit max above 50 at the end", maxes[-1] > 50)
    ctx.check("loss stayed finite", _finite(ctx.losses))


# -- Hugging Face FocalNet on digits: the stem frozen by a param-group typo ---------------------


def hf_focalnet_digits():
    from transformers import FocalNetConfig, FocalNetForImageClassification

    config = FocalNetConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        embed_dim=16,
        depths=[1, 1],
        focal_levels=[2, 2],
        num_labels=10,
        hidden_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return FocalNetForImageClassification(config)


@scenario(
    "hf_focalnet_digits",
    "AdamW",
    "update_ratio_out_of_range",
    where="focalnet.embeddings.patch_embeddings.projection",
    diverges=None,
    heldout=True,
    note="A fine-tuning recipe's param groups were copied into a from-scratch run: the patch "
    "embedding's group keeps lr=0.0 (meant for a frozen pretrained stem), so the randomly "
    "initialised stem never moves while the rest trains.",
)
def h140_hf_focalnet_frozen_stem(ctx: Context) -> None:
    gen = seeded(14002)
    model = hf_focalnet_digits()
    stem = model.focalnet.embeddings.patch_embeddings.projection
    ids = {id(p) for p in stem.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": list(stem.parameters()), "lr": 0.0}, {"params": rest, "lr": 3e-3}]
    )
    w0 = stem.weight.detach().clone()
    other = model.classifier.weight.detach().clone()
    batches = ((x.reshape(-1, 1, 8, 8), y) for x, y in digit_batches(gen, 64))
    _train(
        ctx,
        model,
        opt,
        batches,
        150,
        lambda out, y: F.cross_entropy(out.logits, y),
        classifier=True,
    )
    ctx.check("stem weights never changed", bool(torch.equal(stem.weight.detach(), w0)))
    ctx.check(
        "classifier weights did change",
        float((model.classifier.weight.detach() - other).abs().max()) > 1e-3,
    )
    ctx.check("loss fell", _fell(ctx.losses))


# -- javelin flight regressor: a resume that drops the optimizer state -------------------------


@scenario(
    "javelin_flight_regressor",
    "Adam",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=120,
    note="A preempted job resumes at step 120 from a checkpoint whose optimizer state was not "
    "saved: Adam restarts with empty moments at the full lr, its first updates are sign steps "
    "on every weight, the loss jumps once and the run recovers.",
)
def h140_javelin_flight_resume_drops_adam_state(ctx: Context) -> None:
    gen = seeded(14003)
    model = Regressor(8, 64, depth=2, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def before(step: int) -> None:
        if step == 120:
            opt.state.clear()

    _train(ctx, model, opt, _tabular(gen, 8, 64), 220, F.mse_loss, before=before)
    pre = _median(ctx.losses[100:120])
    ctx.check("loss jumped 3x within 5 steps of the resume", max(ctx.losses[120:126]) > 3 * pre)
    spike = max(ctx.losses[120:126])
    ctx.check("loss recovered to within 1.5x", _mean(ctx.losses[-10:]) < 1.5 * pre)
    ctx.check("no jump of the same size before the resume", 2 * max(ctx.losses[80:120]) < spike)


# -- rope-bridge sag regressor: a warm-up with its factors swapped -----------------------------


@scenario(
    "rope_bridge_sag_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="Full-batch gradient descent with a LambdaLR warm-up written 1 + 39 t "
    "(meant (1 + 39 t) / 40): the lr climbs from 0.02 to 0.8 over 120 steps and "
    "passes 2/sharpness, the loss oscillates and blows up.",
)
def h140_rope_bridge_sag_warmup_swapped(ctx: Context) -> None:
    gen = seeded(14004)
    model = Regressor(6, 32, depth=2, act=nn.Tanh)
    x, y = next(_tabular(gen, 6, 256))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 + 39.0 * min(s, 120) / 120)

    def batches():
        while True:
            yield x, y

    _train(ctx, model, opt, batches(), 200, F.mse_loss, sched=sched)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    low = min(finite)
    ctx.check("loss fell first", low < 0.5 * ctx.losses[0])
    ctx.check(
        "loss then blew up 100x past its minimum or went non-finite",
        not _finite(ctx.losses) or max(finite) > 100 * low,
    )


# -- chainsaw carving depth net: init std typed as an absolute value ---------------------------


class DeepTanh(nn.Module):
    def __init__(self, n_in: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    "chainsaw_carving_depth_net",
    "SGD momentum",
    "exploding_gradients",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="The init helper takes std=1.0 as an absolute value instead of a gain (Kaiming std "
    "for width 64 is 0.18): the 8 tanh layers sit in the chaotic phase and each multiplies the "
    "backward signal, so the first layer's gradient is orders larger than the last one's.",
)
def h140_chainsaw_carving_init_std(ctx: Context) -> None:
    gen = seeded(14005)
    model = DeepTanh(10, 64, 8)
    for m in model.body:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = next(_tabular(gen, 10, 64))
    out = model(x)
    F.huber_loss(out, y).backward()
    g_first = float(model.body[0].weight.grad.norm())
    g_last = float(model.body[14].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, _tabular(gen, 10, 64), 120, F.huber_loss)
    ctx.check("first layer's gradient 20x the last hidden layer's at init", g_first > 20 * g_last)
    F.huber_loss(model(x), y).backward()
    ratio_end = float(model.body[0].weight.grad.norm()) / float(model.body[14].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient still 10x the last hidden layer's at the end", ratio_end > 10)


# -- surf swell-period LSTM: a buoy shard with the 99.9 fill value -----------------------------


class SwellLSTM(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _swell(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Buoy heave traces (height, slope) whose dominant period (5..15 s) is the target /10."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        period = 5 + 10 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        h = torch.sin(6.2832 * t / period + phase) + 0.1 * torch.randn(batch, length, generator=gen)
        x = torch.stack([h, torch.diff(h, prepend=h[:, :1])], -1)
        yield x, period / 10


@scenario(
    "surf_swell_period_lstm",
    "Adam",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=150,
    note="One shard from a buoy that logs missing periods as the fill value 99.9 s was not "
    "filtered: at step 150 half the batch's targets are 9.99 (scaled) instead of 0.5-1.5.",
)
def h140_surf_swell_fill_value_shard(ctx: Context) -> None:
    gen = seeded(14006)
    model = SwellLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 150:
            y = y.clone()
            y[::2] = 9.99
        return x, y

    _train(ctx, model, opt, _swell(gen), 240, F.mse_loss, alter=alter)
    ctx.check(
        "gradient at the bad shard 10x the median before",
        ctx.grad_norms[150] > 10 * _median(ctx.grad_norms[100:150]),
    )
    ctx.check(
        "loss at the bad shard 20x the median before",
        ctx.losses[150] > 20 * _median(ctx.losses[100:150]),
    )
    ctx.check("loss recovered", _mean(ctx.losses[-10:]) < 3 * _median(ctx.losses[100:150]))


@scenario(
    "surf_swell_period_lstm",
    "Adam",
    "healthy",
    diverges=None,
    heldout=True,
    note="Control: the same LSTM with OneCycleLR and gradient clipping at 1.0, filtered shards.",
)
def h140_surf_swell_onecycle_control(ctx: Context) -> None:
    gen = seeded(14007)
    model = SwellLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=240)
    _train(ctx, model, opt, _swell(gen), 240, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


# -- show-jumping rail-fault GRU: a loss weight in percent for one step ------------------------


class ApproachGRU(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _approach(gen: torch.Generator, batch: int = 16, length: int = 20):
    """Stride length, speed, take-off distance per stride; a rail falls when the last strides
    are short and fast."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        score = x[:, -5:, 1].mean(1) - x[:, -5:, 0].mean(1) + 0.3 * x[:, :, 2].mean(1)
        yield x, (score > 0).float()


def _accumulated(ctx, model, opt, gen, steps, weight, sched=None, accum: int = 4):
    batches = _approach(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * weight(step) / accum).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        mean = torch.tensor(total)
        if sched is not None:
            sched.step(mean)
        ctx.step(mean)
        opt.zero_grad(set_to_none=True)


@scenario(
    "showjumping_rail_fault_gru",
    "SGD Nesterov",
    "gradient_spike",
    diverges=None,
    heldout=True,
    onset=100,
    note="Gradient accumulation over 4 micro-batches; at step 100 the curriculum moves to its "
    "second stage and the stage's loss weight is read as 100 (a percentage) instead of 1.0 "
    "for that one step: one accumulated gradient 100x the usual.",
)
def h140_showjumping_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(14008)
    model = ApproachGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    _accumulated(ctx, model, opt, gen, 180, lambda s: 100.0 if s == 100 else 1.0)
    ctx.check(
        "gradient at step 100 is 50x the median before",
        ctx.grad_norms[100] > 50 * _median(ctx.grad_norms[60:100]),
    )
    ctx.check(
        "no gradient above 5x the median before step 100",
        max(ctx.grad_norms[20:100]) < 5 * _median(ctx.grad_norms[60:100]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "showjumping_rail_fault_gru",
    "SGD Nesterov",
    "healthy",
    diverges=None,
    heldout=True,
    note="Control: the same accumulated GRU with ReduceLROnPlateau on the step loss.",
)
def h140_showjumping_plateau_control(ctx: Context) -> None:
    gen = seeded(14009)
    model = ApproachGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _accumulated(ctx, model, opt, gen, 180, lambda s: 1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses))


# -- firefly flash-count model: Poisson rate without its softplus ------------------------------


@scenario(
    "firefly_flash_count_model",
    "Adagrad",
    "nonfinite",
    where=("head",),
    diverges=4,
    heldout=True,
    note="Poisson NLL written by hand as rate - y*log(rate) on the head's raw output: the "
    "softplus that kept the rate positive was dropped in a refactor, and once a prediction "
    "crosses zero log() gives NaN.",
)
def h140_firefly_rate_missing_softplus(ctx: Context) -> None:
    gen = seeded(14010)
    model = Regressor(6, 32, depth=2, act=nn.Tanh)
    nn.init.constant_(model.head.bias, 3.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def counts():
        for x, y in _tabular(gen, 6, 64):
            yield x, torch.poisson(torch.exp(1.2 * y), generator=gen)

    def nll(rate, y):
        return (rate - y * torch.log(rate)).mean()

    _train(ctx, model, opt, counts(), 250, nll)
    ctx.check("loss went NaN", not _finite(ctx.losses))
    ctx.check(
        "finite for the first 4 steps, NaN at step 4",
        _finite(ctx.losses[:4]) and len(ctx.losses) == 5,
    )


# -- cave drip-rate counter: exp of the log-rate under fp16 autocast ---------------------------


def _drips(gen: torch.Generator, scale: float):
    for x, y in _tabular(gen, 6, 64):
        yield x, torch.exp(10.0 + 1.2 * y) / scale


def _drip_run(ctx, model, opt, gen, steps, scale: float, fp32_loss: bool):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _drips(gen, scale)
    fp32_at_break = float("nan")
    for _ in range(steps):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            log_rate = model(x)
            if not fp32_loss:
                loss = (torch.exp(log_rate) - y * log_rate).mean()
        if fp32_loss:
            loss = F.poisson_nll_loss(log_rate.float(), y, log_input=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            with torch.no_grad():
                lr32 = model(x).float()
                fp32_at_break = float((torch.exp(lr32) - y * lr32).mean())
            break
    return fp32_at_break


@scenario(
    "cave_drip_rate_counter",
    "NAdam",
    "amp_overflow",
    where=("head",),
    diverges=20,
    heldout=True,
    note="Drip counts per hour (~2e4-8e4) are fitted with a hand-written Poisson NLL inside "
    "the fp16 autocast region: exp(log_rate) overflows fp16 (max 65504) once the log-rate "
    "passes 11.09, the loss is inf and the GradScaler skips steps.",
)
def h140_cave_drip_exp_in_fp16(ctx: Context) -> None:
    gen = seeded(14011)
    model = Regressor(6, 32, depth=2, act=nn.Tanh)
    nn.init.constant_(model.head.bias, 8.0)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    fp32 = _drip_run(ctx, model, opt, gen, 250, 1.0, fp32_loss=False)
    ctx.check(
        "loss became inf under fp16 at step 20", not _finite(ctx.losses) and len(ctx.losses) == 21
    )
    ctx.check("the same forward in fp32 is finite at the break", math.isfinite(fp32))


@scenario(
    "cave_drip_rate_counter",
    "NAdam",
    "healthy",
    diverges=None,
    heldout=True,
    note="Control: counts in thousands, the Poisson NLL computed in fp32 outside autocast, "
    "fp16 autocast with a GradScaler.",
)
def h140_cave_drip_fp16_control(ctx: Context) -> None:
    gen = seeded(14012)
    model = Regressor(6, 32, depth=2, act=nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    _drip_run(ctx, model, opt, gen, 250, 1000.0, fp32_loss=True)
    ctx.check("loss fell", _fell(ctx.losses))


# -- hot-spring mineral regressor: ReLUs killed by an unscaled conductivity feature -----------


@scenario(
    "hot_spring_mineral_regressor",
    "RAdam",
    "loss_of_plasticity",
    where=("body.2",),
    diverges=None,
    heldout=True,
    note="RAdam at lr 0.3 (a sweep's upper value left in the launch script) on a ReLU "
    "regressor: the second hidden layer's units are pushed negative on every input and stay "
    "dead, and the loss stalls.",
)
def h140_hot_spring_relu_death(ctx: Context) -> None:
    gen = seeded(14013)
    model = Regressor(8, 64, depth=2, act=nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=0.3)
    probe_x, _ = next(_tabular(gen, 8, 512))
    d0 = dead_fraction(model.body[:4](probe_x).detach())
    _train(ctx, model, opt, _tabular(gen, 8, 64), 200, F.mse_loss)
    d1 = dead_fraction(model.body[:4](probe_x).detach())
    ctx.check("under 10% dead at init", d0 < 0.1)
    ctx.check("over half of body.2's units dead at the end", d1 > 0.5)


# -- semaphore flag reader: a temperature in the wrong units ----------------------------------


class FlagReader(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) / self.temperature


@scenario(
    "semaphore_flag_reader",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The softmax temperature is read from a config that gives it in hundredths "
    "(0.1 written as 0.001): logits are scaled by 1000, softmax rounds to exactly 0/1.",
)
def h140_semaphore_temperature_units(ctx: Context) -> None:
    gen = seeded(14014)
    model = FlagReader(0.001)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    _train(ctx, model, opt, digit_batches(gen, 64), 150, F.cross_entropy, classifier=True)
    x, y = next(digit_batches(gen, 256))
    ctx.check(
        "over half the rows' target probability is exactly 1.0",
        collapsed_fraction(model(x).detach(), y) > 0.5,
    )


@scenario(
    "semaphore_flag_reader",
    "Adadelta",
    "healthy",
    diverges=None,
    heldout=True,
    note="Control: temperature 1.0, label smoothing 0.1, Adadelta at lr 1.0.",
)
def h140_semaphore_label_smoothing_control(ctx: Context) -> None:
    gen = seeded(14015)
    model = FlagReader(1.0)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))


# -- sandcastle collapse regressor: weight decay with its sign flipped --------------------------


@scenario(
    "sandcastle_collapse_regressor",
    "RMSprop",
    "loss_divergence",
    diverges=None,
    heldout=True,
    note="Decoupled weight decay applied by hand as p *= 1 + lr*wd (sign flipped) before "
    "each RMSprop step: the weights grow every step and the loss climbs slowly.",
)
def h140_sandcastle_decay_sign(ctx: Context) -> None:
    gen = seeded(14016)
    model = Regressor(6, 32, depth=2, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    lr, wd = 1e-3, 8.0
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def before(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _tabular(gen, 6, 64), 250, F.huber_loss, before=before)
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    windows = [_mean(ctx.losses[i : i + 20]) for i in range(0, len(ctx.losses) - 19, 10)]
    ctx.check("weight norm grew 3x", norm1 > 3 * norm0)
    ctx.check("last 20 steps' loss 2x the best 20-step window", windows[-1] > 2 * min(windows))
