"""MLP, CNN-with-BatchNorm and modular-arithmetic scenarios on bundled / generated data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    MLP,
    BNConvNet,
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    modular_data,
    ramp,
    scenario,
    seeded,
)

# -- learning rate above the stability limit -----------------------------------------------------


@scenario("mlp", "sgd", "sharpness_above_limit", diverges="auto", note="blows up in ~10 steps")
def lr_fast_mlp_sgd(ctx: Context) -> None:
    gen = seeded(11)
    model = MLP([64, 96, 96, 10])
    opt = torch.optim.SGD(model.parameters(), lr=6.0)
    fit(ctx, model, opt, digit_batches(gen), 60)


@scenario("cnn", "sgd_mom", "sharpness_above_limit", diverges="auto")
def lr_fast_cnn_momentum(ctx: Context) -> None:
    gen = seeded(12)
    model = BNConvNet(width=6)
    opt = torch.optim.SGD(model.parameters(), lr=2.5, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen, 48), 60)


@scenario("mlp", "sgd_mom", "sharpness_above_limit", diverges="auto", note="LR ramps past 2/λ")
def lr_slow_mlp_momentum(ctx: Context) -> None:
    gen = seeded(13)
    model = MLP([64, 64, 10], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = ramp(step, 0.01, 4.0, 240)

    fit(ctx, model, opt, digit_batches(gen), 260, before=schedule)


# -- a data outlier ------------------------------------------------------------------------------


def _outlier(at: int, scale: float):
    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == at:  # four corrupted images (a decoding fault): loud noise
            x = x.clone()
            x[:4] = scale * torch.rand(x[:4].shape, generator=torch.Generator().manual_seed(at))
        return x, y

    return alter


@scenario("mlp", "adam", "data_outlier", diverges=140, onset=140)
def outlier_mlp_adam(ctx: Context) -> None:
    gen = seeded(14)
    model = MLP([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, digit_batches(gen), 220, alter=_outlier(140, 50.0))
    ctx.check("loss spiked at 140", ctx.losses[140] > 5 * max(ctx.losses[130:140]))


@scenario("cnn", "sgd_mom", "data_outlier", diverges=95, onset=95)
def outlier_cnn_momentum(ctx: Context) -> None:
    gen = seeded(15)
    model = BNConvNet(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen, 32), 170, alter=_outlier(95, 20.0))
    ctx.check("loss spiked at 95", ctx.losses[95] > 5 * max(ctx.losses[85:95]))


# -- a NaN produced by one module on one bad sample -----------------------------------------------


class LogFeatures(nn.Module):
    """log of strictly positive intensities (a common input transform)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logfeat = LogFeatures()
        self.body = MLP([64, 64, 10])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.logfeat(x + 0.5))


@scenario("mlp", "sgd_mom", "nonfinite", where="logfeat", diverges=137, onset=137)
def nan_log_one_sample_mlp(ctx: Context) -> None:
    gen = seeded(16)
    model = LogMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 137:  # one sample's pixel reads -0.5: the shifted intensity is exactly 0
            x = x.clone()
            x[5, 17] = -0.5
        return x, y

    fit(ctx, model, opt, digit_batches(gen), 170, alter=alter)
    finite = [v == v and abs(v) != float("inf") for v in ctx.losses]
    ctx.check("finite until 137, not after", all(finite[:137]) and not finite[137])


# -- dead units -----------------------------------------------------------------------------------


@scenario("mlp", "sgd", "loss_of_plasticity", where=("2", "3"), diverges=None)
def dead_relu_bias_shift_mlp(ctx: Context) -> None:
    """A bad partial checkpoint load at step 90 shifts layer 2's biases far negative: every
    unit of the ReLU after it is dead from then on."""
    gen = seeded(17)
    model = MLP([64, 96, 96, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.3)

    def shift(step: int) -> None:
        if step == 90:
            with torch.no_grad():
                model[2].bias.sub_(25.0)

    fit(ctx, model, opt, digit_batches(gen), 200, before=shift)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        h = model[3](model[2](model[1](model[0](x))))
    ctx.check("layer 2 all dead", dead_fraction(h) == 1.0)


@scenario("cnn", "adam", "loss_of_plasticity", where=("bn2", "conv2"), diverges="auto", onset=60)
def dead_relu_creeping_cnn(ctx: Context) -> None:
    """From step 60 a hand-written "bias regulariser" with the wrong sign moves bn2's shift
    down a little every step: the channels of the functional ReLU after it die one by one (a
    dead channel gets no gradient to recover) and the loss climbs."""
    gen = seeded(18)
    model = BNConvNet(width=8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def bug(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.bn2.bias.sub_(0.08)

    fit(ctx, model, opt, digit_batches(gen, 48), 260, before=bug)
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        h = F.relu(model.bn2(model.conv2(F.relu(model.bn1(model.conv1(x.reshape(-1, 1, 8, 8)))))))
    ctx.check("a quarter of bn2's channels dead", dead_fraction(h) >= 0.25)


# -- a frozen layer -------------------------------------------------------------------------------


@scenario("mlp", "adam", "update_ratio_out_of_range", where="2", diverges=None)
def frozen_lr0_group_mlp(ctx: Context) -> None:
    gen = seeded(19)
    model = MLP([64, 96, 96, 10])
    opt = torch.optim.Adam(
        [
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": 0.0},  # meant to be a warm-up factor
            {"params": model[4].parameters()},
        ],
        lr=1e-3,
    )
    before = model[2].weight.detach().clone()
    fit(ctx, model, opt, digit_batches(gen), 150)
    ctx.check("layer 2 unchanged", torch.equal(before, model[2].weight))


@scenario("cnn", "sg_lion", "update_ratio_out_of_range", where="conv1", diverges=None)
def frozen_lr0_conv_lion(ctx: Context) -> None:
    gen = seeded(20)
    model = BNConvNet(width=8)
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv1.")]
    opt = sgo.Lion(
        [{"params": model.conv1.parameters(), "lr": 0.0}, {"params": rest}], lr=3e-4, fused=False
    )
    before = model.conv1.weight.detach().clone()
    fit(ctx, model, opt, digit_batches(gen, 48), 150)
    ctx.check("conv1 unchanged", torch.equal(before, model.conv1.weight))


# -- slow divergence ------------------------------------------------------------------------------


@scenario("mlp", "adam", "loss_divergence", diverges="auto", note="weight decay sign bug", onset=60)
def slow_divergence_wd_sign_mlp(ctx: Context) -> None:
    """A regression MLP (MSE) with hand-written decoupled weight decay whose sign is flipped:
    from step 60 the weights grow by 2% a step, faster than Adam can pull them back, and the
    loss creeps up over ~100 steps (no softmax to collapse: the climb is all there is)."""
    gen = seeded(22)

    model = MLP([10, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    decay = 0.02

    def grow(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + decay)  # meant: 1 - lr * decay

    fit(
        ctx,
        model,
        opt,
        _diabetes_batches(gen),
        240,
        loss_fn=F.mse_loss,
        classifier=False,
        before=grow,
    )


def _diabetes_batches(gen: torch.Generator, batch: int = 32):
    """Endless shuffled batches of scikit-learn's bundled diabetes regression set, standardised."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)[:, None]
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


# -- Adam's second moment poisoned by one huge gradient -------------------------------------------


@scenario("mlp", "adam", "adam_second_moment_poisoned", diverges=None)
def adam_poisoned_mlp(ctx: Context) -> None:
    """One step's loss is multiplied by 1e3 (a loss-scale bug): once the spike's momentum has
    decayed, v (which forgets over ~1000 steps) still holds the squared spike and the updates
    are ~30x too small; learning stalls."""
    gen = seeded(23)
    model = MLP([64, 96, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e3 if step == 60 else loss

    moved = []

    def track(step: int) -> None:
        if step in (20, 50, 120, 150):
            moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    fit(ctx, model, opt, digit_batches(gen), 200, extra_loss=bug, before=track)
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- softmax collapse -----------------------------------------------------------------------------


class ModularMLP(nn.Module):
    def __init__(self, p: int, dim: int = 64, hidden: int = 256, logit_scale: float = 1.0):
        super().__init__()
        self.embed = nn.Embedding(p, dim)
        self.hidden = nn.Linear(2 * dim, hidden)
        self.out = nn.Linear(hidden, p)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(1)
        return self.out(F.relu(self.hidden(h))) * self.logit_scale


def _full_batch(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


@scenario("modular", "adamw", "softmax_collapse", where="out", diverges=None)
def softmax_collapse_modular_adamw(ctx: Context) -> None:
    """(a + b) mod 23 without weight decay and with logits scaled up 30x: within ~60 steps a
    sixth of the training rows' float32 softmax rounds to exactly one-hot, their gradient to
    exactly zero (Prieto et al. 2025), and the rest creep there."""
    gen = seeded(24)
    p = 23
    (xt, yt), _ = modular_data(p, gen, 0.4)
    model = ModularMLP(p, logit_scale=30.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    fit(ctx, model, opt, _full_batch(xt, yt), 250)
    with torch.no_grad():
        ctx.check("a tenth of the train rows collapsed", collapsed_fraction(model(xt), yt) > 0.1)


@scenario("mlp", "adam", "softmax_collapse", where="4", diverges=None)
def softmax_collapse_digits_temperature(ctx: Context) -> None:
    """Fine-tuning on a small fixed set of 128 digits with logits divided by a temperature of
    0.1 (a config typo for 10): the float32 softmax of most rows saturates within ~50 steps."""
    seeded(25)
    x, y = digits()
    x, y = x[:128], y[:128]
    model = MLP([64, 128, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, _full_batch(x, y), 200, forward=lambda m, x: m(x) / 0.1)
    with torch.no_grad():
        ctx.check("half the rows collapsed", collapsed_fraction(model(x) / 0.1, y) > 0.5)


# -- benign AMP overflow --------------------------------------------------------------------------


@scenario("mlp", "sgd_mom", "amp_overflow", diverges=None)
def amp_overflow_mlp_fp16(ctx: Context) -> None:
    """float16 autocast with a GradScaler that starts at 2**28 and grows every 30 steps: it
    overflows a few times, skips those steps and lowers its scale; training is fine."""
    gen = seeded(26)
    model = MLP([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28, growth_interval=30)
    fit(ctx, model, opt, digit_batches(gen), 160, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**28) >= 2)
    ctx.check("loss stayed finite and fell", ctx.losses[-1] < ctx.losses[0])


# -- healthy controls -----------------------------------------------------------------------------


@scenario("mlp", "sgd", "healthy")
def healthy_mlp_sgd(ctx: Context) -> None:
    gen = seeded(31)
    model = MLP([64, 128, 10])
    fit(ctx, model, torch.optim.SGD(model.parameters(), lr=0.1), digit_batches(gen), 200)


@scenario("mlp", "adam", "healthy", note="Adam from step 0, no warm-up")
def healthy_mlp_adam_no_warmup(ctx: Context) -> None:
    gen = seeded(32)
    model = MLP([64, 128, 128, 10], act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, digit_batches(gen, 32), 200)


@scenario("cnn", "sgd_mom", "healthy")
def healthy_cnn_momentum(ctx: Context) -> None:
    gen = seeded(33)
    model = BNConvNet(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(ctx, model, opt, digit_batches(gen, 32), 160)


@scenario("mlp", "adamw", "healthy", note="regression head (MSE), not a classifier")
def healthy_regression_mlp(ctx: Context) -> None:
    gen = seeded(34)

    model = MLP([10, 64, 64, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _diabetes_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)


@scenario("modular", "adamw", "healthy", note="weight decay 1.0 keeps the logits in range")
def healthy_modular_adamw_wd(ctx: Context) -> None:
    gen = seeded(35)
    p = 37
    (xt, yt), _ = modular_data(p, gen, 0.5)
    model = ModularMLP(p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    fit(ctx, model, opt, _full_batch(xt, yt), 250)


@scenario("cnn", "sg_adabelief", "healthy")
def healthy_cnn_adabelief(ctx: Context) -> None:
    gen = seeded(36)
    model = BNConvNet(width=6)
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3, fused=False)
    fit(ctx, model, opt, digit_batches(gen, 48), 150)
