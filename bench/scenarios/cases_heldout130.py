"""Held-out set 130 (``h130_``): hand-written models of fields not covered elsewhere.

Sheep-shearing fleece-weight regressor, bonsai-watering scheduler, subway-escalator load
forecaster (GRU), dune-migration recurrent model, tuba-intonation tuner, zeppelin ballast
controller, icicle-growth regressor under fp16 autocast with a GradScaler, kombucha
fermentation model, saffron-grade classifier, canoe-stroke classifier, sled-glide classifier,
mural-fade regressor; 12 faults and 4 controls on the same kinds of models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Context, collapsed_fraction, dead_fraction, fit, ramp, scenario, seeded


def _regression(gen: torch.Generator, d_in: int, d_out: int = 1, batch: int = 64, noise=0.1):
    """Endless batches of a smooth nonlinear regression task (a fixed random teacher)."""
    w1 = torch.randn(d_in, 16, generator=gen) / d_in**0.5
    w2 = torch.randn(16, d_out, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, d_out, generator=gen)
        yield x, y


def _blobs(gen: torch.Generator, d_in: int, classes: int, batch: int = 64, spread=1.0):
    """Endless batches of Gaussian class blobs (overlapping at ``spread`` ~1)."""
    centres = torch.randn(classes, d_in, generator=gen) * 1.2
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn(batch, d_in, generator=gen)
        yield x, y


def _sequences(gen: torch.Generator, batch: int = 32, length: int = 20, d_in: int = 4):
    """Endless batches of noisy sine mixtures: predict the next value of channel 0."""
    while True:
        t = torch.arange(length + 1, dtype=torch.float32)
        f = 0.2 + 0.3 * torch.rand(batch, d_in, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, d_in, 1, generator=gen)
        s = torch.sin(f * t + ph) + 0.05 * torch.randn(batch, d_in, length + 1, generator=gen)
        s = s.transpose(1, 2)
        yield s[:, :-1], s[:, -1, :1]


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return bool(torch.isfinite(torch.tensor(xs)).all())


class FleeceRegressor(nn.Module):
    """Fleece weight from a sheep's body measurements."""

    def __init__(self, d_in: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())
        self.head = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SeqForecaster(nn.Module):
    """A recurrent forecaster: last state to the next value."""

    def __init__(self, cell: str = "gru", d_in: int = 4, hidden: int = 32) -> None:
        super().__init__()
        kind = {"gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = kind(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Classifier(nn.Module):
    def __init__(self, d_in: int, classes: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width))
        self.act = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "fleece_weight_regressor",
    "adam",
    "loss_spike",
    diverges=None,
    heldout=True,
    note="one shearing shed's batch logged in grams instead of kilograms: a spike, then recovery",
    onset=120,
)
def h130_fleece_weight_loss_spike(ctx: Context) -> None:
    gen = seeded(13001)
    model = FleeceRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        return (x, y * 30.0) if step == 120 else (x, y)

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 10),
        220,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    before = _median(ctx.losses[100:120])
    ctx.check("the bad batch spikes the loss", ctx.losses[120] > 20 * before)
    ctx.check("the run recovers", _median(ctx.losses[-20:]) < 3 * before + 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "bonsai_watering_scheduler",
    "sgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="the soil-moisture target drifts (sensor recalibration) faster than SGD tracks it",
    onset=80,
)
def h130_bonsai_watering_loss_divergence(ctx: Context) -> None:
    gen = seeded(13002)
    model = FleeceRegressor(d_in=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def alter(step, x, y):
        return x, y * (1.0 + 0.035 * max(0, step - 80)) + 0.02 * max(0, step - 80)

    fit(
        ctx, model, opt, _regression(gen, 8), 240, loss_fn=F.mse_loss, alter=alter, classifier=False
    )
    best = min(ctx.losses)
    ctx.check("the loss climbs slowly", _median(ctx.losses[-5:]) > max(2 * best, best + 1))
    ctx.check(
        "no single jump: each step within 3x of the last",
        max(b / max(a, 1e-8) for a, b in zip(ctx.losses[80:-1], ctx.losses[81:], strict=True)) < 3,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "escalator_load_forecaster",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="the learning-rate schedule restarts at 20x its peak: far above 2/sharpness",
    onset=100,
)
def h130_escalator_load_sharpness(ctx: Context) -> None:
    gen = seeded(13003)
    model = SeqForecaster("gru")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.05 if step < 100 else 2.0

    fit(ctx, model, opt, _sequences(gen), 160, loss_fn=F.mse_loss, before=before, classifier=False)
    pre = _median(ctx.losses[80:100])
    late = ctx.losses[100:]
    ctx.check("trained before the restart", pre < 0.5 * ctx.losses[0])
    ctx.check(
        "the loss blows up after the restart",
        any(not torch.isfinite(torch.tensor(v)) or v > 20 * pre for v in late),
    )


@scenario(
    "dune_migration_rnn",
    "rmsprop",
    "exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="the recurrent weight is re-initialised orthogonal x2.5 at a warm restart; no clipping",
    onset=60,
)
def h130_dune_migration_exploding_gradients(ctx: Context) -> None:
    gen = seeded(13004)
    model = SeqForecaster("rnn", hidden=32)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def before(step):
        if step == 60:
            with torch.no_grad():
                w = torch.empty(32, 32)
                nn.init.orthogonal_(w, generator=gen)
                model.rnn.weight_hh_l0.copy_(2.5 * w)

    fit(
        ctx,
        model,
        opt,
        _sequences(gen, length=40),
        140,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    pre = _median(ctx.grad_norms[40:60])
    post = ctx.grad_norms[60:]
    ctx.check("gradient norms grow by 30x after the restart", max(post) > 30 * pre)
    ctx.check("they stay high, not one spike", _median(post[:40]) > 5 * pre)


@scenario(
    "tuba_intonation_tuner",
    "adagrad",
    "gradient_spike",
    where=("body.2",),
    diverges=None,
    heldout=True,
    note="a gradient-accumulation bug: one layer's grad summed over 400 micro-batches, once",
    onset=90,
)
def h130_tuba_intonation_gradient_spike(ctx: Context) -> None:
    gen = seeded(13005)
    model = FleeceRegressor(d_in=12)
    step_now = [0]

    def before(step):
        step_now[0] = step

    model.body[2].weight.register_hook(lambda g: g * 400.0 if step_now[0] == 90 else g)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    fit(
        ctx,
        model,
        opt,
        _regression(gen, 12),
        170,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    pre = _median(ctx.grad_norms[70:90])
    ctx.check("one gradient 50x the usual", ctx.grad_norms[90] > 50 * pre)
    ctx.check("the next steps are back to normal", _median(ctx.grad_norms[92:110]) < 5 * pre)
    ctx.check("the loss stays finite", _finite(ctx.losses))


@scenario(
    "zeppelin_ballast_controller",
    "adadelta",
    "nonfinite",
    where=("norm",),
    diverges=70,
    heldout=True,
    note="per-batch standardisation of the gas-cell readings divides by a zero std "
    "when a stuck sensor logs one constant batch",
    onset=70,
)
def h130_zeppelin_ballast_nonfinite(ctx: Context) -> None:
    gen = seeded(13006)

    class BatchStandardise(nn.Module):
        def forward(self, x):
            return (x - x.mean(0)) / x.std(0)

    class Ballast(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = BatchStandardise()
            self.body = nn.Sequential(nn.Linear(6, 32), nn.Tanh())
            self.head = nn.Linear(32, 1)

        def forward(self, x):
            return self.head(self.body(self.norm(x)))

    model = Ballast()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[:, 2] = 3.0  # the stuck sensor
        return x, y

    fit(
        ctx, model, opt, _regression(gen, 6), 100, loss_fn=F.mse_loss, alter=alter, classifier=False
    )
    ctx.check("finite before the stuck batch", _finite(ctx.losses[:70]))
    ctx.check(
        "the loss is nan from the stuck batch on",
        not _finite(ctx.losses[70:71]) and not _finite(ctx.losses[-5:]),
    )
    ctx.check("the weights are poisoned", not bool(torch.isfinite(model.head.weight).all()))


@scenario(
    "icicle_growth_regressor",
    "adamw",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler; a refactor sums the loss over a large batch "
    "instead of averaging: scaled gradients overflow fp16 and the scale collapses",
    onset=80,
)
def h130_icicle_growth_amp_overflow(ctx: Context) -> None:
    gen = seeded(13007)
    model = FleeceRegressor(d_in=8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=20)

    def extra(step, loss):
        return loss * 4e5 if step >= 80 else loss

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 8, batch=128),
        140,
        loss_fn=F.mse_loss,
        extra_loss=extra,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales[79:-1], ctx.scales[80:], strict=True))
    ctx.check("the scale falls repeatedly after the change", drops >= 6)
    ctx.check("the scale ends 100x below where it was", ctx.scales[-1] < ctx.scales[78] / 100)
    ctx.check("the (unscaled) loss stays finite", _finite(ctx.losses))


@scenario(
    "kombucha_ferment_model",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    note="one pH reading logged as 1e8 (a unit bug): a giant gradient fills Adam's slow second moment "
    "(beta2=0.9999) and the head's updates shrink for hundreds of steps",
    onset=60,
)
def h130_kombucha_ferment_adam_poisoned(ctx: Context) -> None:
    gen = seeded(13008)
    model = FleeceRegressor(d_in=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    prev = {}
    moves = []

    def before(step):
        w = model.head.weight.detach().clone()
        if "w" in prev:
            moves.append(w - prev["w"])
        prev["w"] = w

    def alter(step, x, y):
        if step == 60:
            y = y.clone()
            y[0] = 1e8
        return x, y

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 6),
        200,
        loss_fn=F.mse_loss,
        alter=alter,
        before=before,
        classifier=False,
    )
    v = opt.state[model.head.weight]["exp_avg_sq"]
    hit = v > 100 * v.median()  # the coordinates the giant gradient reached
    pre = _median([float(m[hit].norm()) for m in moves[30:58]])
    post = _median([float(m[hit].norm()) for m in moves[70:190]])
    ctx.check("some of the head's coordinates were hit", bool(hit.any()))
    ctx.check("their steps shrink 5x after the reading", post < pre / 5)
    ctx.check("its second moment stays huge", float(v.max()) > 1e2)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "saffron_grade_classifier",
    "adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a temperature divided instead of multiplied (logits x 80): the target's float32 "
    "softmax saturates at exactly 1",
    onset=0,
)
def h130_saffron_grade_softmax_collapse(ctx: Context) -> None:
    gen = seeded(13009)
    model = Classifier(12, 4)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def forward(m, x):
        return m(x) * 80.0

    fit(ctx, model, opt, _blobs(gen, 12, 4, spread=0.6), 150, forward=forward)
    x, y = next(_blobs(seeded(13009), 12, 4, spread=0.6))
    with torch.no_grad():
        share = collapsed_fraction(forward(model, x), y)
    ctx.check("most targets' softmax is exactly 1.0", share > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "canoe_stroke_classifier",
    "radam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="separable stroke types, no weight decay, head at 100x the trunk's learning rate: "
    "the logits grow without bound",
    onset=0,
)
def h130_canoe_stroke_logit_divergence(ctx: Context) -> None:
    gen = seeded(13010)
    model = Classifier(10, 3)
    opt = torch.optim.RAdam(
        [
            {"params": model.trunk.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-1},
        ]
    )
    x0, _ = next(_blobs(seeded(13010), 10, 3, spread=0.3))
    with torch.no_grad():
        start = float(model(x0).abs().max())
    fit(ctx, model, opt, _blobs(gen, 10, 3, spread=0.3), 300)
    with torch.no_grad():
        end = float(model(x0).abs().max())
    ctx.check("the logits grew 20x", end > 20 * start)
    ctx.check("the loss is near zero (separable)", _median(ctx.losses[-10:]) < 0.01)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "sled_glide_classifier",
    "nadam",
    "loss_of_plasticity",
    where=("act",),
    diverges=None,
    heldout=True,
    note="a mistuned warm restart (lr 0.3 for 10 steps) kills most ReLUs; the new snow "
    "condition task that follows cannot be learnt",
    onset=100,
)
def h130_sled_glide_plasticity(ctx: Context) -> None:
    gen = seeded(13011)
    model = Classifier(16, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    perm = torch.tensor([3, 0, 4, 1, 2])

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.3 if 100 <= step < 110 else 2e-3

    def alter(step, x, y):
        return (x, perm[y]) if step >= 100 else (x, y)

    fit(ctx, model, opt, _blobs(gen, 16, 5), 260, alter=alter, before=before)
    x, _ = next(_blobs(seeded(13011), 16, 5))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("most hidden units are dead", dead > 0.6)
    ctx.check(
        "the loss after the switch stays above the level before it",
        _median(ctx.losses[-20:]) > 2 * _median(ctx.losses[80:100]),
    )


@scenario(
    "mural_fade_regressor",
    "sgd_nesterov",
    "update_ratio_out_of_range",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="a parameter-group typo gives the first layer lr 1e-6 (the rest 0.05): "
    "its weights barely move",
    onset=0,
)
def h130_mural_fade_update_ratio(ctx: Context) -> None:
    gen = seeded(13012)
    model = FleeceRegressor(d_in=10)
    first = list(model.body[0].parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("body.0.")]
    opt = torch.optim.SGD(
        [{"params": first, "lr": 1e-6}, {"params": rest, "lr": 0.05}],
        momentum=0.9,
        nesterov=True,
    )
    w0 = model.body[0].weight.detach().clone()
    fit(ctx, model, opt, _regression(gen, 10), 200, loss_fn=F.mse_loss, classifier=False)
    moved = float((model.body[0].weight.detach() - w0).norm() / w0.norm())
    ctx.check("the first layer moved under 1e-4 of its size", moved < 1e-4)
    ctx.check("the rest still trains", _median(ctx.losses[-20:]) < _median(ctx.losses[:10]))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "fleece_weight_regressor",
    "asgd",
    "healthy",
    heldout=True,
    note="ASGD with a step decay and occasional noisy batches",
)
def h130_fleece_weight_healthy(ctx: Context) -> None:
    gen = seeded(13013)
    model = FleeceRegressor()
    opt = torch.optim.ASGD(model.parameters(), lr=0.03)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = 0.03 if step < 120 else 0.01

    def alter(step, x, y):
        return (x, y + 0.3 * torch.randn(y.shape, generator=gen)) if step % 37 == 5 else (x, y)

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 10),
        200,
        loss_fn=F.mse_loss,
        before=before,
        alter=alter,
        classifier=False,
    )
    ctx.check("the loss fell", _median(ctx.losses[-20:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "canoe_stroke_classifier",
    "adamw",
    "healthy",
    heldout=True,
    note="overlapping stroke types, warmup then cosine decay, weight decay",
)
def h130_canoe_stroke_healthy(ctx: Context) -> None:
    gen = seeded(13014)
    model = Classifier(10, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)

    def before(step):
        import math

        lr = 3e-3 * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / 220))
        for g in opt.param_groups:
            g["lr"] = lr

    fit(ctx, model, opt, _blobs(gen, 10, 3, spread=1.0), 220, before=before)
    ctx.check("the loss fell", _median(ctx.losses[-20:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "escalator_load_forecaster",
    "rprop",
    "healthy",
    heldout=True,
    note="a GRU forecaster with Rprop on mini-batches, normal batch noise",
)
def h130_escalator_load_healthy(ctx: Context) -> None:
    gen = seeded(13015)
    model = SeqForecaster("gru", hidden=24)
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3, step_sizes=(1e-6, 0.01))
    fit(ctx, model, opt, _sequences(gen), 150, loss_fn=F.mse_loss, classifier=False)
    ctx.check("the loss fell", _median(ctx.losses[-20:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "sled_glide_classifier",
    "adagrad",
    "healthy",
    heldout=True,
    note="a ReLU classifier with Adagrad and a mid-run lr bump (ramped, not a jump)",
)
def h130_sled_glide_healthy(ctx: Context) -> None:
    gen = seeded(13016)
    model = Classifier(16, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)

    def before(step):
        for g in opt.param_groups:
            g["lr"] = ramp(step, 0.02, 0.04, 200)

    fit(ctx, model, opt, _blobs(gen, 16, 5), 200, before=before)
    x, _ = next(_blobs(seeded(13016), 16, 5))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("the loss fell", _median(ctx.losses[-20:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("few dead units", dead < 0.3)
    ctx.check("finite throughout", _finite(ctx.losses))
