"""Held-out set 137 (``h137_``): induced instabilities and healthy controls on Hugging Face
text towers built from tiny configs (Qwen2.5-VL, GLM-Image) and hand-written models of new
fields (fencing, tightrope, hedge mazes, clock escapements, bookbinding, typesetting,
glassware annealing, sailing regattas, candle pouring, bobsleigh, mirror grinding).

Every scenario is held out: none of it is used to tune steadygrad's detectors.
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
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces ---------------------------------------------------------------------------------


def _teacher_batches(seed: int, features: int, outputs: int, batch: int, classify: bool):
    """An endless stream of generated samples labelled by a fixed random teacher network (a
    stand-in for each field's measurements), with mild label noise."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(features, 24, generator=g) / math.sqrt(features)
    w2 = torch.randn(24, outputs, generator=g) / math.sqrt(24)
    while True:
        x = torch.randn(batch, features, generator=g)
        z = torch.tanh(x @ w1) @ w2 * 3.0
        if classify:
            yield x, z.argmax(1)
        else:
            yield x, z + 0.05 * torch.randn(z.shape, generator=g)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


class _TowerLM(nn.Module):
    """A Hugging Face text tower with an untied next-token head on top."""

    def __init__(self, tower: nn.Module, dim: int = 32, vocab: int = 128) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(input_ids=idx).last_hidden_state)


_TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
)


def _qwen25_vl_tower(eager: bool = False) -> _TowerLM:
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    config = Qwen2_5_VLTextConfig(**_TINY)
    if eager:
        config._attn_implementation = "eager"
    return _TowerLM(Qwen2_5_VLTextModel(config))


def _glm_image_tower() -> _TowerLM:
    from transformers import GlmImageTextConfig, GlmImageTextModel

    return _TowerLM(GlmImageTextModel(GlmImageTextConfig(pad_token_id=0, **_TINY)))


def _groups(model: nn.Module, marker: str, lr: float, base: float, **extra):
    """Two parameter groups: the parameters whose name holds ``marker`` at ``lr``, the rest at
    ``base`` (a per-group override)."""
    named = list(model.named_parameters())
    special = [p for n, p in named if marker in n]
    rest = [p for n, p in named if marker not in n]
    return [{"params": rest, "lr": base, **extra}, {"params": special, "lr": lr, **extra}]


def _log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), -1).mean())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _cosine(opt: torch.optim.Optimizer, peak: float, warm: int, total: int):
    def schedule(step: int) -> None:
        if step < warm:
            lr = peak * (step + 1) / warm
        else:
            lr = peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
        for g in opt.param_groups:
            g["lr"] = lr

    return schedule


def _fell(losses: list[float], head: int = 10, tail: int = 10, by: float = 0.8) -> bool:
    a, b = sum(losses[:head]) / head, sum(losses[-tail:]) / tail
    return all(math.isfinite(v) for v in losses) and b < by * a


# -- Hugging Face Qwen2.5-VL text tower ------------------------------------------------------------


@scenario(
    "hf_qwen25_vl_text_tower_lm",
    "adamw",
    "attention_logit_growth",
    where=("tower.layers.0.self_attn", "tower.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a no-decay group at 30x the learning rate; attention saturates",
)
def h137_qwen25_vl_qk_lr_attention(ctx: Context) -> None:
    """A fine-tuning recipe puts the query and key projections in their own group (meant for a
    LoRA run) at 30x the base learning rate and without weight decay: the attention logits
    grow until the softmax rows are nearly one-hot."""
    gen = seeded(13701)
    model = _qwen25_vl_tower(eager=True)
    named = list(model.named_parameters())
    qk = [p for n, p in named if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in named if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1e-3, "weight_decay": 0.01},
            {"params": qk, "lr": 3e-2, "weight_decay": 0.0},
        ]
    )
    probe, _ = next(text_batches(seeded(1)))

    def peak_attention() -> float:
        with torch.no_grad():
            att = model.tower(input_ids=probe, output_attentions=True).attentions
        return float(torch.stack([a.amax(-1)[..., 8:].mean() for a in att]).mean())

    start = peak_attention()
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss)
    end = peak_attention()
    ctx.check("attention rows near one-hot", end > 0.9 and end > start + 0.3)
    ctx.check("loss stayed finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "hf_qwen25_vl_text_tower_lm",
    "nadam",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="the untied head trains at lr 1.0 (a per-group override meant for another run)",
)
def h137_qwen25_vl_head_lr_logits(ctx: Context) -> None:
    gen = seeded(13702)
    model = _qwen25_vl_tower()
    opt = torch.optim.NAdam(_groups(model, "head.", 1.0, 1e-3))
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = _log_partition(model(probe))
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss)
    with torch.no_grad():
        end = _log_partition(model(probe))
    ctx.check("|log Z| drifted by 20", abs(end - start) > 20)


@scenario(
    "hf_qwen25_vl_text_tower_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="warm-up + cosine schedule with weight decay",
)
def h137_qwen25_vl_healthy(ctx: Context) -> None:
    gen = seeded(13703)
    model = _qwen25_vl_tower()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = _cosine(opt, 3e-3, 20, 200)
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, before=sched)
    ctx.check("loss fell, finite", _fell(ctx.losses, by=0.75))


# -- Hugging Face GLM-Image text tower -------------------------------------------------------------


@scenario(
    "hf_glm_image_text_tower_lm",
    "radam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=60,
    note="one step's loss summed over 1000 micro-batches instead of averaged",
)
def h137_glm_image_radam_poisoned(ctx: Context) -> None:
    """A gradient-accumulation bug sums instead of averaging for one step (x1e3) at step 60:
    RAdam's second moment absorbs it and the updates that follow are far too small."""
    gen = seeded(13704)
    model = _glm_image_tower()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    snaps = []

    def track(step: int) -> None:
        if step in (25, 55, 120, 150):
            snaps.append(_flat(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e3 if step == 60 else loss

    fit(ctx, model, opt, text_batches(gen), 170, loss_fn=lm_loss, before=track, extra_loss=bug)
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


@scenario(
    "hf_glm_image_text_tower_lm",
    "adam",
    "healthy",
    heldout=True,
    note="constant learning rate after a short warm-up; normal minibatch noise",
)
def h137_glm_image_healthy(ctx: Context) -> None:
    gen = seeded(13705)
    model = _glm_image_tower()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def warm(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 15)

    fit(ctx, model, opt, text_batches(gen), 180, loss_fn=lm_loss, before=warm)
    ctx.check("loss fell, finite", _fell(ctx.losses, by=0.75))


# -- fencing touch predictor: learning rate above the stability limit ------------------------------


@scenario(
    "fencing_touch_predictor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD at lr 4 (a config copied from a normalised-feature run)",
)
def h137_fencing_lr_too_high(ctx: Context) -> None:
    """Which fencer scores the touch, from blade speed, distance and footwork features; the
    learning rate is far above 2/sharpness and the loss blows up within a few dozen steps."""
    seeded(13706)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    fit(ctx, model, opt, _teacher_batches(13706, 20, 3, 64, True), 60)
    worst = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blew up 10x", worst > 10 * ctx.losses[0])


# -- tightrope balance controller: exploding gradients through a long unroll -----------------------


class _BalanceRNN(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.cell = nn.RNN(4, hidden, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.cell(x)
        return self.head(out[:, -1])


@scenario(
    "tightrope_balance_controller",
    "sgd_mom",
    "exploding_gradients",
    where="cell",
    diverges="auto",
    heldout=True,
    onset=20,
    note="a stale spectral-norm renormalisation lets the recurrent gain creep up 2% a step",
)
def h137_tightrope_rnn_exploding(ctx: Context) -> None:
    """A ReLU recurrent controller reads 60 steps of pole-angle and sway readings; from step 20
    its recurrent matrix is "renormalised" each step by a stale spectral-norm estimate, which
    scales it up 2% a step: the gradients through the unroll grow geometrically."""
    seeded(13707)
    model = _BalanceRNN()
    with torch.no_grad():
        model.cell.weight_hh_l0.copy_(0.9 * torch.eye(32))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(13707)

    def batches():
        while True:
            x = torch.randn(32, 60, 4, generator=g) * 0.3
            yield x, x[:, -10:, :2].sum((1, 2))[:, None]

    def renorm(step: int) -> None:
        if step >= 20:
            with torch.no_grad():
                model.cell.weight_hh_l0.mul_(1.02)

    fit(ctx, model, opt, batches(), 45, loss_fn=_mse, before=renorm, classifier=False)
    norms = [v if math.isfinite(v) else float("inf") for v in ctx.grad_norms]
    early = max(norms[5:20])
    ctx.check("gradient norm grew 100x after step 20", max(norms[20:]) > 100 * early)
    ctx.check("finite before the bug", all(math.isfinite(v) for v in ctx.losses[:20]))


# -- hedge maze route classifier: dead ReLUs after a bad checkpoint merge --------------------------


class _MazeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(36, 96)
        self.mid = nn.Linear(96, 96)
        self.out = nn.Linear(96, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.mid(F.relu(self.enc(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@scenario(
    "hedge_maze_route_classifier",
    "adagrad",
    "loss_of_plasticity",
    where=("mid",),
    diverges=None,
    heldout=True,
    onset=80,
    note="a checkpoint merge at step 80 writes the biases of 'mid' in the wrong units",
)
def h137_hedge_maze_dead_relu(ctx: Context) -> None:
    """Which exit a walker takes from a 6x6 hedge-maze patch; at step 80 a checkpoint merge
    writes mid's biases scaled by -30: every unit after it is dead and cannot recover."""
    seeded(13708)
    model = _MazeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def merge(step: int) -> None:
        if step == 80:
            with torch.no_grad():
                model.mid.bias.copy_(-30.0 * model.mid.bias.abs() - 20.0)

    data = _teacher_batches(13708, 36, 4, 64, True)
    fit(ctx, model, opt, data, 200, before=merge)
    x, _ = next(_teacher_batches(7, 36, 4, 256, True))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("mid all dead", dead == 1.0)
    ctx.check("loss fell before the merge", ctx.losses[75] < ctx.losses[0])


# -- clock escapement drift model: a layer that never moves ----------------------------------------


@scenario(
    "clock_escapement_drift_model",
    "rmsprop",
    "update_ratio_out_of_range",
    where="temp_branch",
    diverges=None,
    heldout=True,
    note="layer-wise lr multiplier typed as 1e-7 for the temperature branch",
)
def h137_escapement_frozen_branch(ctx: Context) -> None:
    """Daily drift of a pendulum clock from temperature, humidity and beat-error readings;
    the temperature branch's learning-rate multiplier is 1e-7 instead of 1e-1: its updates are
    a vanishing fraction of its weights while the rest trains."""
    seeded(13709)

    class Drift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temp_branch = nn.Linear(12, 32)
            self.other_branch = nn.Linear(12, 32)
            self.head = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x[:, :12], x[:, 12:]
            return self.head(
                torch.cat([torch.tanh(self.temp_branch(a)), torch.tanh(self.other_branch(b))], 1)
            )

    model = Drift()
    opt = torch.optim.RMSprop(_groups(model, "temp_branch.", 1e-3 * 1e-7, 1e-3))
    before = model.temp_branch.weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        _teacher_batches(13709, 24, 1, 64, False),
        200,
        loss_fn=_mse,
        classifier=False,
    )
    moved = float((model.temp_branch.weight.detach() - before).norm() / before.norm())
    head_moved = float((model.head.weight.detach() - head_before).norm() / head_before.norm())
    ctx.check("temperature branch moved < 1e-6", moved < 1e-6)
    ctx.check("the head moved > 5%", head_moved > 0.05)


# -- bookbinding glue-cure regressor: a batch in the wrong units -----------------------------------


@scenario(
    "bookbinding_glue_cure_regressor",
    "adam",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=110,
    note="one batch of humidity readings logged in per-mille instead of standardised units",
)
def h137_bookbinding_outlier_batch(ctx: Context) -> None:
    seeded(13710)
    model = nn.Sequential(
        nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 48), nn.GELU(), nn.Linear(48, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 110:
            x = x.clone()
            x[:, 3] = x[:, 3] * 1000.0
        return x, y

    data = _teacher_batches(13710, 16, 1, 64, False)
    fit(ctx, model, opt, data, 200, loss_fn=_mse, alter=alter, classifier=False)
    ctx.check("loss spiked 10x at 110", ctx.losses[110] > 10 * max(ctx.losses[100:110]))
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- typesetting kerning model: log of a zero advance width ----------------------------------------


class _LogWidth(nn.Module):
    """Log of the glyph advance widths (no floor: the bug)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.log(w)


class _Kerning(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_width = _LogWidth()
        self.body = nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([self.log_width(x[:, :2]), x[:, 2:]], 1))


@scenario(
    "typesetting_kerning_model",
    "adadelta",
    "nonfinite",
    where="log_width",
    diverges=90,
    heldout=True,
    onset=90,
    note="a combining mark with zero advance width reaches log() at step 90",
)
def h137_kerning_log_zero_width(ctx: Context) -> None:
    seeded(13711)
    model = _Kerning()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(13711)

    def batches():
        while True:
            widths = 0.3 + torch.rand(64, 2, generator=g)
            rest = torch.randn(64, 8, generator=g)
            y = (0.4 * torch.log(widths[:, :1] / widths[:, 1:]) + 0.2 * rest[:, :1]) * 2
            yield torch.cat([widths, rest], 1), y

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:
            x = x.clone()
            x[5, 1] = 0.0
        return x, y

    fit(ctx, model, opt, batches(), 120, loss_fn=_mse, alter=alter, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 90, not at 90", all(finite[:90]) and not finite[90])


# -- glassware annealing stress estimator: a slow climb from drifting targets ----------------------


@scenario(
    "glassware_annealing_stress_estimator",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=60,
    note="the polariscope calibration gain drifts 2.5% a step from step 60",
)
def h137_glassware_target_drift(ctx: Context) -> None:
    """Residual stress in annealed glassware from the cooling curve; from step 60 the stress
    labels come from a polariscope whose calibration gain compounds every batch: the targets
    run away and the loss climbs steadily without any one bad step."""
    seeded(13712)
    model = nn.Sequential(nn.Linear(14, 48), nn.Tanh(), nn.Linear(48, 1))
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 60:
            y = y * 1.025 ** (step - 60)
        return x, y

    data = _teacher_batches(13712, 14, 1, 64, False)
    fit(ctx, model, opt, data, 240, loss_fn=_mse, alter=alter, classifier=False)
    early = sum(ctx.losses[40:60]) / 20
    late = sum(ctx.losses[-20:]) / 20
    ctx.check("loss fell before 60", early < ctx.losses[0])
    ctx.check("loss climbed 100x by the end", late > 100 * early)
    jumps = [b / a for a, b in zip(ctx.losses[60:], ctx.losses[61:], strict=False) if a > 0]
    ctx.check("no single step jumped 5x", max(jumps) < 5)


# -- sailing regatta tack classifier: a softmax that saturates -------------------------------------


@scenario(
    "sailing_regatta_tack_classifier",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="logits divided by a temperature of 0.02 (meant for distillation, left in)",
)
def h137_regatta_low_temperature(ctx: Context) -> None:
    """When a boat tacks (port, starboard, hold, bear away, luff), from wind shift and
    heading features; a distillation temperature of 0.02 left on the head saturates the
    float32 softmax on the training rows."""
    seeded(13713)

    class Tack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(18, 64), nn.ReLU())
            self.head = nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x)) / 0.02

    model = Tack()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(13713)
    centres = torch.randn(5, 18, generator=g) * 1.5

    def batches(n: int):
        while True:
            y = torch.randint(0, 5, (n,), generator=g)
            yield centres[y] + 0.5 * torch.randn(n, 18, generator=g), y

    fit(ctx, model, opt, batches(64), 200)
    x, y = next(batches(256))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("half the rows collapsed to p == 1", frac > 0.5)


# -- candle wax pour regressor: fp16 overflow under a GradScaler -----------------------------------


@scenario(
    "candle_wax_pour_regressor",
    "adamw",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler started at 2**24; it backs off on overflow",
)
def h137_candle_amp_overflow(ctx: Context) -> None:
    """Pour temperature of a candle batch from wax blend and ambient features, trained under
    fp16 autocast; the scaler's initial scale overflows the fp16 gradients and the scaler
    skips steps while it backs off (benign)."""
    seeded(13714)
    model = nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=50)
    data = _teacher_batches(13714, 12, 1, 64, False)
    fit(ctx, model, opt, data, 160, loss_fn=_mse, classifier=False, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**24) >= 2)
    ctx.check("loss fell", _fell(ctx.losses, by=0.8))


# -- healthy controls of hand-written fields -------------------------------------------------------


@scenario(
    "bobsled_split_time_regressor",
    "rprop",
    "healthy",
    heldout=True,
    note="full-batch Rprop on start-push and curve features",
)
def h137_bobsled_healthy(ctx: Context) -> None:
    seeded(13715)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    x, y = next(_teacher_batches(13715, 10, 1, 512, False))
    fit(ctx, model, opt, iter(lambda: (x, y), None), 150, loss_fn=_mse, classifier=False)
    ctx.check("loss fell, finite", _fell(ctx.losses, by=0.5))


@scenario(
    "mirror_grinding_figure_estimator",
    "sgd_nesterov",
    "healthy",
    heldout=True,
    note="Nesterov SGD, step decay, minibatch noise and occasional harder batches",
)
def h137_mirror_grinding_healthy(ctx: Context) -> None:
    """Surface-figure error of a ground mirror blank from stroke and grit features; every
    fifth batch comes from a coarser grit stage with noisier labels (normal bursts)."""
    seeded(13716)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(5)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step % 5 == 4:
            y = y + 0.5 * torch.randn(y.shape, generator=g)
        return x, y

    def decay(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.02 * (0.5 ** (step // 80))

    data = _teacher_batches(13716, 16, 1, 64, False)
    fit(ctx, model, opt, data, 240, loss_fn=_mse, alter=alter, before=decay, classifier=False)
    ctx.check("loss fell, finite", _fell(ctx.losses, by=0.6))
