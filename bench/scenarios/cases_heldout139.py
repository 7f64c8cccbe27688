"""Held-out set 139 (``h139_``): Hugging Face BioGPT and OLMo-3 causal LMs from tiny configs,
and hand-written models of trades, crafts, sports and natural phenomena not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs of the same kinds of models (warm-up, schedules, clipping,
label smoothing, gradient accumulation, fp16 autocast with a GradScaler).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
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


def _tabular(gen: torch.Generator, n_in: int, batch: int, noise: float = 0.05, n_out: int = 1):
    """Endless batches of a smooth nonlinear target of ``n_in`` generated features."""
    w = torch.randn(n_in, n_out, generator=gen)
    v = torch.randn(n_in, n_out, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, y + noise * torch.randn(batch, n_out, generator=gen)


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


def _lm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def hf_biogpt_lm(vocab: int = 128, dim: int = 32):
    from transformers import BioGptConfig, BioGptForCausalLM

    config = BioGptConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return BioGptForCausalLM(config)


def hf_olmo3_lm(vocab: int = 128, dim: int = 32):
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return Olmo3ForCausalLM(config)


# -- Hugging Face causal LMs -------------------------------------------------------------------------


@scenario(
    "hf_olmo3_lm",
    "adamw",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="a data-loader bug serves the same 4 windows every step while lm_head sits in a param"
    " group at 30x the lr with weight decay 0: the memorised logits keep growing",
)
def h139_olmo3_repeated_shard_head_logits(ctx: Context) -> None:
    gen = seeded(13901)
    torch.set_num_threads(1)
    model = hf_olmo3_lm()
    head = list(model.lm_head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-4, "weight_decay": 0.01},
            {"params": head, "lr": 3e-2, "weight_decay": 0.0},
        ]
    )
    ctx.attach(model, opt)
    # the one shard (4 tokenised records) served forever
    seq = torch.randint(3, 128, (4, 17), generator=gen)
    x, y = seq[:, :-1], seq[:, 1:]
    w0 = float(model.lm_head.weight.detach().norm())
    peak = []
    for _ in range(200):
        logits = model(input_ids=x).logits
        loss = _lm(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peak.append(float(logits.detach().abs().max()))
    ctx.check("max |logit| grew more than 20x", peak[-1] > 20 * peak[0])
    ctx.check("max |logit| still rising over the last 100 steps", peak[-1] > peak[-100])
    ctx.check(
        "lm_head weight norm grew more than 3x",
        float(model.lm_head.weight.detach().norm()) > 3 * w0,
    )
    ctx.check("the shard is memorised (loss below 0.1)", ctx.losses[-1] < 0.1)


@scenario(
    "hf_olmo3_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="control: OLMo-3 on shuffled text windows, linear warm-up then cosine decay, clipping",
)
def h139_olmo3_control(ctx: Context) -> None:
    gen = seeded(13902)
    torch.set_num_threads(1)
    model = hf_olmo3_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps, warm = 120, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32)
    for _ in range(steps):
        x, y = next(batches)
        loss = _lm(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.75))


@scenario(
    "hf_biogpt_lm",
    "adamw",
    "update_ratio_out_of_range",
    where=("biogpt.layers.1.fc1", "biogpt.layers.1.fc2"),
    diverges=None,
    heldout=True,
    note="param groups from a layer-wise lr config: the second block's MLP group reads"
    " lr_mult=0.0 left over from a freezing experiment, so fc1/fc2 of layer 1 never move",
)
def h139_biogpt_frozen_mlp_group(ctx: Context) -> None:
    gen = seeded(13903)
    torch.set_num_threads(1)
    model = hf_biogpt_lm()
    frozen = [p for n, p in model.named_parameters() if n.startswith("biogpt.layers.1.fc")]
    ids = {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    base = 2e-3
    lr_mult = {"rest": 1.0, "layers.1.mlp": 0.0}  # the typo: meant 1.0
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": base * lr_mult["rest"]},
            {"params": frozen, "lr": base * lr_mult["layers.1.mlp"]},
        ],
        weight_decay=0.01,
    )
    w0 = model.biogpt.layers[1].fc1.weight.detach().clone()
    q0 = model.biogpt.layers[0].fc1.weight.detach().clone()
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32)
    frozen_g = []
    for _ in range(100):
        x, y = next(batches)
        loss = _lm(model(input_ids=x).logits, y)
        loss.backward()
        frozen_g.append(float(model.biogpt.layers[1].fc1.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        moved = float((model.biogpt.layers[1].fc1.weight - w0).norm() / w0.norm())
        other = float((model.biogpt.layers[0].fc1.weight - q0).norm() / q0.norm())
    ctx.check("frozen fc1 moved less than 1e-6 relative", moved < 1e-6)
    ctx.check("layer 0 fc1 moved more than 1e-2 relative", other > 1e-2)
    ctx.check(
        "frozen group has lr 0 while its gradient is nonzero",
        opt.param_groups[1]["lr"] == 0.0 and _median(frozen_g) > 1e-4,
    )
    ctx.check("loss still fell through the other layers", _fell(ctx.losses, ratio=0.9))


@scenario(
    "hf_biogpt_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="control: BioGPT (tied output projection) with gradient accumulation over 2"
    " micro-batches, warm-up, clipping at 1.0",
)
def h139_biogpt_control(ctx: Context) -> None:
    gen = seeded(13904)
    torch.set_num_threads(1)
    model = hf_biogpt_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32)
    for _ in range(80):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = _lm(model(input_ids=x).logits, y) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.as_tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.8))


# -- hurling sliotar flight regressor: a resumed run past the stability limit --------------------------


def _sliotar_batches(gen: torch.Generator, batch: int = 128):
    """Launch speed, angle, spin, wind, altitude -> carry distance (scaled)."""
    yield from _tabular(gen, 5, batch, noise=0.02)


@scenario(
    "hurling_sliotar_flight_regressor",
    "sgd_momentum",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="resumed at step 100 from a checkpoint whose config stores lr as a percentage: 5.0"
    " read as the lr instead of 0.05, far past 2/sharpness for SGD with momentum",
    onset=100,
)
def h139_sliotar_resume_lr_units(ctx: Context) -> None:
    gen = seeded(13905)
    torch.set_num_threads(1)
    model = Regressor(5, 32, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _sliotar_batches(gen)
    for step in range(160):
        if step == 100:  # resume: state_dicts reloaded, then the lr from the run config
            state = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state)
            for g in opt.param_groups:
                g["lr"] = 5.0  # "lr_percent: 5.0" read as the lr itself
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    before = ctx.losses[:100]
    after = ctx.losses[100:]
    ctx.check("trained before the resume", _fell(before, ratio=0.5))
    ctx.check(
        "loss blew up past 100x its pre-resume level after the resume",
        any((not math.isfinite(v)) or v > 100 * _median(before[-20:]) for v in after),
    )


@scenario(
    "hurling_sliotar_flight_regressor",
    "sgd_momentum",
    "healthy",
    heldout=True,
    note="control: the same regressor with OneCycleLR (max lr 0.1) and Nesterov momentum",
)
def h139_sliotar_control(ctx: Context) -> None:
    gen = seeded(13906)
    torch.set_num_threads(1)
    model = Regressor(5, 32, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=160)
    ctx.attach(model, opt)
    batches = _sliotar_batches(gen)
    for _ in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.5))


# -- dragon-boat stroke RNN: recurrent weights initialised with a ReLU gain -----------------------------


class StrokeRNN(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _stroke_batches(gen: torch.Generator, batch: int = 32, length: int = 40):
    """Paddle force, boat speed, heart rate over a race segment -> split time (scaled)."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen) * 0.5
        y = x[:, -10:, 0].mean(1, keepdim=True) - 0.5 * x[:, -5:, 1].mean(1, keepdim=True)
        yield x, y


@scenario(
    "dragon_boat_stroke_rnn",
    "sgd_momentum",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="recurrent weights initialised orthogonal with gain=calculate_gain('relu')*1.3 copied"
    " from a feed-forward recipe: over 40 strokes the ReLU recurrence amplifies gradients",
)
def h139_dragon_boat_recurrent_gain(ctx: Context) -> None:
    gen = seeded(13907)
    torch.set_num_threads(1)
    model = StrokeRNN()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=nn.init.calculate_gain("relu") * 1.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _stroke_batches(gen)
    rnn_g, head_g = [], []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        rnn_g.append(float(model.rnn.weight_ih_l0.grad.norm()))
        head_g.append(float(model.head.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ctx.check(
        "input-weight gradient over 30x the head's at step 0 (grows back through time)",
        rnn_g[0] > 30 * head_g[0],
    )
    ctx.check(
        "loss blew up (non-finite or over 1e4x the first)",
        any((not math.isfinite(v)) or v > 1e4 * ctx.losses[0] for v in ctx.losses),
    )


# -- farrier shoe-fit classifier: a bias init that kills the ReLUs ---------------------------------------


def _hoof_batches(gen: torch.Generator, batch: int = 64):
    """Hoof width, length, wall angle, ... (standardised) -> does the stock shoe fit (0/1)."""
    w = torch.randn(8, generator=gen)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        logit = x @ w + 0.8 * (x[:, 0] * x[:, 1])
        yield x, (logit > 0).float()[:, None]


@scenario(
    "farrier_shoe_fit_classifier",
    "adagrad",
    "loss_of_plasticity",
    where=("body.2",),
    diverges=None,
    heldout=True,
    note="the second hidden layer's bias initialised to -4 (a 'sparse activations' init meant"
    " for unit-scale inputs, applied to the un-normalised pre-activations): nearly all its ReLUs"
    " are dead from the start and never get a gradient to come back",
)
def h139_farrier_dead_relu_bias_init(ctx: Context) -> None:
    gen = seeded(13908)
    torch.set_num_threads(1)
    model = Regressor(8, 64, depth=2, act=nn.ReLU)
    nn.init.constant_(model.body[2].bias, -4.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _hoof_batches(gen)
    acts = {}
    model.body[3].register_forward_hook(lambda m, i, o: acts.__setitem__("h", o.detach()))
    dead = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        dead.append(dead_fraction(acts["h"]))
    ctx.check("over 90% of layer body.2's units dead at the end", dead[-1] > 0.9)
    ctx.check("no dead unit came back (dead fraction never fell)", min(dead) >= dead[0] - 1e-9)
    ctx.check(
        "loss stuck near chance (last 20 steps above 0.6)",
        min(ctx.losses[-20:]) > 0.6,
    )


# -- cooper barrel-stave bend regressor: one poisoned second moment ----------------------------------


class StaveNet(nn.Module):
    """Stave thickness, moisture, steam time, oak grain -> bend radius mean and log-variance."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU())
        self.mean = nn.Linear(48, 1)
        self.logvar = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.logvar(h)


def _gauss_nll(mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logvar + (y - mean) ** 2 / logvar.exp()).mean()


@scenario(
    "cooper_barrel_stave_regressor",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="the auxiliary smoothness-loss weight comes from a schedule whose restart value at step"
    " 60 was typed 2e4 instead of 2e-1: one giant gradient fills Adam's second"
    " moment (beta2 0.999) and the updates stall for the rest of the run",
    onset=60,
)
def h139_cooper_stave_aux_weight_slip(ctx: Context) -> None:
    gen = seeded(13909)
    torch.set_num_threads(1)
    model = StaveNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    batches = _tabular(gen, 6, 64, noise=0.1)
    upd = []
    for step in range(200):
        x, y = next(batches)
        mean, logvar = model(x)
        loss = _gauss_nll(mean, logvar, y)
        aux_w = 2e4 if step == 60 else 0.2  # the schedule's restart value typed 2e4 for 2e-1
        smooth = (mean[1:] - mean[:-1]).pow(2).mean()
        (loss + aux_w * smooth).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            upd.append(
                float(
                    sum(
                        (p - b).norm() ** 2 for p, b in zip(model.parameters(), before, strict=True)
                    )
                    ** 0.5
                )
            )
    g = ctx.grad_norms
    ctx.check("gradient at step 60 over 1000x the median before", g[60] > 1000 * _median(g[:60]))
    ctx.check(
        "updates after step 120 under a tenth of those before step 60",
        _median(upd[120:]) < 0.1 * _median(upd[20:60]),
    )
    ctx.check(
        "loss stopped improving after the spike",
        sum(ctx.losses[-20:]) / 20 > 0.9 * sum(ctx.losses[50:60]) / 10,
    )


# -- aurora intensity forecaster: a bad shard of raw magnetometer counts -------------------------------


class AuroraNet(nn.Module):
    """Solar-wind speed, density, Bz, Kp over the last 12 hours (conv1d) -> auroral intensity."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.conv(x))).flatten(1))


def _aurora_batches(gen: torch.Generator, batch: int = 32):
    while True:
        x = torch.randn(batch, 4, 12, generator=gen)
        y = torch.tanh(x[:, 2, -4:].mean(1) - 0.5 * x[:, 0, -6:].mean(1))[:, None]
        yield x, y


@scenario(
    "aurora_intensity_forecaster",
    "nadam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one shard at step 90 came from a station that logs raw magnetometer counts (x4000)"
    " and -9999 fill values for missing intensities: a single corrupted batch",
    onset=90,
)
def h139_aurora_raw_count_shard(ctx: Context) -> None:
    gen = seeded(13910)
    torch.set_num_threads(1)
    model = AuroraNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _aurora_batches(gen)
    for step in range(180):
        x, y = next(batches)
        if step == 90:
            x = x * 4000.0
            y = torch.full_like(y, -9999.0)
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 90 over 1000x the median before", ls[90] > 1000 * _median(ls[:90]))
    ctx.check(
        "gradient at step 90 over 20x the median before",
        ctx.grad_norms[90] > 20 * _median(ctx.grad_norms[:90]),
    )
    ctx.check("only that batch: the loss of step 91 under 100x", ls[91] < 100 * _median(ls[:90]))
    ctx.check("run stayed finite", _finite(ls))


# -- darts throw-scatter regressor: one step's loss weighted by the wrong accumulation count ------------


@scenario(
    "darts_throw_scatter_regressor",
    "sgd_nesterov",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="gradient accumulation over 8 micro-batches divides by the count, but at the epoch"
    " boundary (step 75) the count is read from a leftover-batch counter of 1/512: that step's"
    " gradient is 4096x too large; clipping at 1.0 keeps the update bounded",
    onset=75,
)
def h139_darts_accum_divisor_bug(ctx: Context) -> None:
    gen = seeded(13911)
    torch.set_num_threads(1)
    # stance width, release angle, elbow height, grip, ... -> scatter radius (two outputs)
    model = Regressor(7, 48, depth=2, act=nn.GELU, n_out=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _tabular(gen, 7, 16, noise=0.05, n_out=2)
    accum = 8
    for step in range(150):
        divisor = accum if step != 75 else 1 / 512  # the epoch-boundary counter
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss / divisor).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient at step 75 over 1000x the median before", g[75] > 1000 * _median(g[:75]))
    ctx.check("next step's gradient back under 10x", g[76] < 10 * _median(g[:75]))
    ctx.check(
        "the batch itself was ordinary (loss at 75 under 3x)",
        ctx.losses[75] < 3 * _median(ctx.losses[60:75]),
    )
    ctx.check("run stayed finite", _finite(ctx.losses))


# -- oboe reed-scrape classifier: 0/0 in a per-sample normalisation without a clamp ---------------------


class UnitNorm(nn.Module):
    """Scales each spectrum to unit length (the clamp_min(eps) was left out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)


class ReedNet(nn.Module):
    """A reed's tap-tone spectrum (32 bins) -> scrape style (5 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.prep = UnitNorm()
        self.body = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.prep(x) * 5.0))


def _reed_batches(gen: torch.Generator, batch: int = 32):
    centres = torch.rand(5, 32, generator=gen)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        x = (2 * centres[y] + 0.3 * torch.rand(batch, 32, generator=gen)).clamp_min(0)
        yield x, y


@scenario(
    "oboe_reed_scrape_classifier",
    "radam",
    "nonfinite",
    where=("prep",),
    diverges=70,
    heldout=True,
    note="at step 70 a recording with the microphone muted (an all-zero spectrum) reaches the"
    " per-sample normalisation, which has no clamp: 0/0 gives NaN in the forward pass",
    onset=70,
)
def h139_oboe_zero_spectrum_norm(ctx: Context) -> None:
    gen = seeded(13912)
    torch.set_num_threads(1)
    model = ReedNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _reed_batches(gen)
    prep_nan = []
    model.prep.register_forward_hook(
        lambda m, i, o: prep_nan.append(bool(torch.isnan(o).any()) and _finite([float(i[0].sum())]))
    )
    for step in range(150):
        x, y = next(batches)
        if step == 70:
            x[3] = 0.0  # the muted take
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ctx.check("loss finite before step 70", _finite(ctx.losses[:70]))
    ctx.check("loss NaN at step 70", len(ctx.losses) == 71 and math.isnan(ctx.losses[70]))
    ctx.check(
        "the NaN first appears in prep's output from a finite input",
        prep_nan[70] and not any(prep_nan[:70]),
    )
    ctx.check("it was learning before (loss fell)", _fell(ctx.losses[:70], ratio=0.7))


# -- blacksmith quench-hardness regressor: a logger switched to degrees under fp16 autocast --------------


class Square(nn.Module):
    """Quadratic features (an energy-like term of the quench): h * h."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * h


class QuenchNet(nn.Module):
    """Bath temperature, steel temperature, carbon, thickness, soak time, agitation -> hardness."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.energy = Square()
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.energy(self.inp(x)))


@scenario(
    "blacksmith_quench_hardness_regressor",
    "adam",
    "amp_overflow",
    where=("energy",),
    diverges=80,
    heldout=True,
    note="from step 80 the furnace logger is swapped for one that reports temperatures in degrees"
    " Celsius instead of the standardised units: under fp16 autocast the quadratic features"
    " overflow 65504, the loss is non-finite and the GradScaler skips every step from then on",
    onset=80,
)
def h139_blacksmith_logger_celsius_fp16(ctx: Context) -> None:
    gen = seeded(13913)
    torch.set_num_threads(1)
    model = QuenchNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _tabular(gen, 6, 64, noise=0.05)
    fp32_ok = []
    for step in range(130):
        x, y = next(batches)
        if step >= 80:  # the new logger: columns 0 and 1 in degrees Celsius
            x = x.clone()
            x[:, 0] = 850.0 + 40.0 * x[:, 0]
            x[:, 1] = 60.0 + 10.0 * x[:, 1]
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 90:
            with torch.no_grad():
                fp32_ok.append(math.isfinite(float(F.mse_loss(model(x), y))))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite and falling before step 80", _fell(ls[:80], ratio=0.7))
    ctx.check("loss non-finite at every step from 80", not any(math.isfinite(v) for v in ls[80:]))
    ctx.check("the same batch in fp32 gives a finite loss", bool(fp32_ok) and all(fp32_ok))
    ctx.check(
        "scaler scale fell by over 2^20 after step 80", ctx.scales[-1] < ctx.scales[79] / 2**20
    )


# -- telegraph operator 'fist' classifier: output pooled after the per-frame Linear ----------------------


class Temperature(nn.Module):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.t


class FistNet(nn.Module):
    """Key-down/key-up durations of a Morse stream -> which of 6 operators sent it.

    The per-frame ``frame_head`` Linear is followed by mean pooling over time and a
    temperature: the classifier's output is not its last Linear.
    """

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 32, 5, padding=2)
        self.frame_head = nn.Linear(32, 6)
        self.temp = Temperature(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.temp(self.frame_head(h).mean(1))


def _fist_batches(gen: torch.Generator, batch: int = 48, length: int = 30):
    style = torch.randn(6, 2, generator=gen)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        x = style[y][:, None, :] + 0.8 * torch.randn(batch, length, 2, generator=gen)
        yield x, y


@scenario(
    "telegraph_fist_classifier",
    "rmsprop",
    "softmax_collapse",
    where=("temp",),
    diverges=None,
    heldout=True,
    note="the softmax temperature 0.002 from the distillation config (meant for sharpening the"
    " teacher) is picked up by the student classifier: pooled logits are divided by 0.002 and the"
    " softmax saturates to exactly 1.0 for most rows",
)
def h139_telegraph_temperature_slip(ctx: Context) -> None:
    gen = seeded(13914)
    torch.set_num_threads(1)
    model = FistNet(t=0.002)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _fist_batches(gen)
    collapsed = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed.append(collapsed_fraction(logits.detach(), y))
    ctx.check(
        "over half the rows' target probability is exactly 1.0 at the end", collapsed[-1] > 0.5
    )
    ctx.check(
        "the collapsed share grew by over 0.3 during the run",
        collapsed[-1] > collapsed[0] + 0.3,
    )


@scenario(
    "telegraph_fist_classifier",
    "adam",
    "healthy",
    heldout=True,
    note="control: temperature 1.0, label smoothing 0.1, ReduceLROnPlateau on the loss",
)
def h139_telegraph_control(ctx: Context) -> None:
    gen = seeded(13915)
    torch.set_num_threads(1)
    model = FistNet(t=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _fist_batches(gen)
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))


# -- bowling-lane oil-pattern regressor: decoupled weight decay with its sign flipped --------------------


@scenario(
    "bowling_lane_oil_regressor",
    "sgd",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a hand-rolled decoupled weight decay multiplies the weights by (1 + lr*wd) instead of"
    " (1 - lr*wd) after each SGD step: the weights creep up and the loss climbs slowly",
)
def h139_bowling_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(13916)
    torch.set_num_threads(1)
    # oil volume per board, lane length, ball speed, rev rate, ... -> hook point (scaled)
    model = Regressor(8, 32, depth=2, act=nn.Tanh)
    lr, wd = 0.05, 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _tabular(gen, 8, 64, noise=0.05)
    norms = []
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: should be 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        norms.append(float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5))
    ls = ctx.losses
    best = min(sum(ls[i : i + 10]) / 10 for i in range(0, len(ls) - 10))
    ctx.check("last 20 steps' loss over 3x the best 10-step mean", sum(ls[-20:]) / 20 > 3 * best)
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("still finite (a slow climb, no blow-up)", _finite(ls))
