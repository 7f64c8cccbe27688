"""Held-out set 679 (``h679_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face PP-LCNet v4 convolutional backbone
built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    grad_norm,
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class _Regressor(nn.Module):
    def __init__(self, n_in: int, hidden: int, act: type[nn.Module], n_out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 30) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        v = [h / norm for h in hv]
    return eig


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sailmaker_luff_batten_camber_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="a sailmaker's luff-batten camber regressor, SiLU MLP, plain SGD with a MultiStepLR "
    "decay at step 60; the decay factor was typed gamma=10 instead of 0.1, so at step 60 the "
    "learning rate goes from 0.1 to 1.0, past 2/sharpness of the loss surface, and the loss "
    "oscillates and blows up; data and init are clean",
)
def h679_sailmaker_multistep_gamma_typo(ctx: Context) -> None:
    gen = seeded(6791)
    model = _Regressor(8, 32, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60], gamma=10.0)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe = next(data)
    eig = None
    for step in range(140):
        if step == 60:
            eig = _top_hessian_eig(model, lambda m: F.mse_loss(m(probe[0]), probe[1]))
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("lr 0.1 below 2/sharpness at step 60", eig is not None and 0.1 * eig < 2.0)
    ctx.check("lr 1.0 past 2/sharpness at step 60", eig is not None and 1.0 * eig > 2.0)
    ctx.check("loss fell before step 60", _median(ls[50:60]) < 0.7 * _median(ls[:10]))
    ctx.check(
        "loss after step 60 blows up past 100x its level at steps 50-59",
        max(v if math.isfinite(v) else float("inf") for v in ls[60:]) > 100 * _median(ls[50:60]),
    )


@scenario(
    family="farrier_hoof_pastern_angle_accum_tanh_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="a farrier's hoof-pastern angle regressor, tanh MLP, 4-micro-batch accumulation with a "
    "hand-rolled static loss scale of 256 (multiplied into the loss, divided out of the gradients "
    "before the step), clipping at 1.0, SGD momentum; on the first step after the checkpoint "
    "reload (step 70) the unscale was skipped, so that one step's gradient is 256x; the data are "
    "clean, the logged loss is ordinary, the clip holds the update and the run carries on",
)
def h679_farrier_static_scale_not_unscaled(ctx: Context) -> None:
    gen = seeded(6792)
    model = _Regressor(8, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=16)
    accum, scale = 4, 256.0
    for step in range(150):
        total = 0.0
        for _ in range(accum):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            (scale * loss / accum).backward()
            total += float(loss.detach()) / accum
        if step != 70:  # the reload path forgot the unscale
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 70 over 50x the median of steps 50-69", g[70] > 50 * _median(g[50:70])
    )
    ctx.check("gradient back to ordinary by step 75", g[75] < 5 * _median(g[50:70]))
    ctx.check("logged loss at step 70 ordinary (< 3x steps 60-69)", ls[70] < 3 * max(ls[60:70]))
    ctx.check("loss of the last 20 steps below its first 10", _median(ls[-20:]) < _median(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


class _GaussHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = _Regressor(8, 32, nn.SiLU, n_out=32)
        self.mean_head = nn.Linear(32, 1)
        self.var_head = nn.Linear(32, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.trunk(x))
        return self.mean_head(h), self.var_head(h)  # variance used raw: softplus forgotten


@scenario(
    family="shoal_sounding_echo_gaussian_nll_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("var_head",),
    diverges=35,
    heldout=True,
    note="a shoal-sounding echo-depth regressor with a Gaussian NLL head, Adamax; the variance "
    "head's output is used raw (the softplus was dropped in a refactor), with its bias set to 1 "
    "so it starts positive; as the NLL pushes the variance down towards the small noise level "
    "some rows cross zero and log(variance) of a negative number gives a NaN loss",
)
def h679_shoal_sounding_raw_variance(ctx: Context) -> None:
    gen = seeded(6793)
    model = _GaussHead()
    opt = torch.optim.Adamax(model.parameters(), lr=0.003)
    ctx.attach(model, opt)
    data = _readings(gen, noise=0.05)
    min_var = []
    for _ in range(200):
        x, y = next(data)
        mu, var = model(x)
        min_var.append(float(var.detach().min()))
        loss = (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    k = len(ls) - 1
    ctx.check("loss NaN at the last step", math.isnan(ls[-1]))
    ctx.check("loss finite before it", _finite(ls[:-1]))
    ctx.check("variance negative at the NaN step", min_var[k] < 0)
    ctx.check("variance positive at the start", min_var[0] > 0)
    ctx.check("NaN at step 35 (the truth's diverges)", k == 35)


@scenario(
    family="barograph_drum_pascal_head_fp16_silu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a barograph-drum station-pressure regressor predicting in pascals (head bias set to "
    "the 101325 Pa mean, loss on Pa differences), SiLU MLP, Adam; trained in fp32 until the "
    "job was resumed at step 60 on a config with fp16 autocast and a GradScaler: the head's fp16 "
    "output cannot hold ~1e5 (max 65504), so it overflows to inf, every loss from step 60 is "
    "inf, the scaler skips every step and its scale collapses",
)
def h679_barograph_fp16_resume(ctx: Context) -> None:
    gen = seeded(6794)
    model = _Regressor(8, 32, nn.SiLU)
    with torch.no_grad():
        model.head.bias.fill_(101325.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    for step in range(120):
        x, y = next(data)
        y_pa = 101325.0 + 10.0 * y
        amp = step >= 60
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            pred = model(x)
        loss = F.mse_loss(pred.float() - 101325.0, y_pa - 101325.0)
        if amp:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            loss.backward()
            ctx.grad_norms.append(grad_norm(model))
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss finite before step 60", _finite(ls[:60]))
    ctx.check("loss fell before step 60", _median(ls[50:60]) < 0.7 * _median(ls[:10]))
    ctx.check("loss non-finite at every step from 60", all(not math.isfinite(v) for v in ls[60:]))
    ctx.check("GradScaler scale below 1e-3 of its start at the end", ctx.scales[-1] < 65536e-3)


@scenario(
    family="cooperage_stave_steam_bend_adadelta_regressor",
    optimizer="Adadelta",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a cooperage stave steam-bend springback regressor, ReLU MLP, Adadelta; the shard read "
    "at step 90 holds one stave logged by the older kiln controller in tenths of a degree and "
    "raw counts (its readings x1000): that batch's loss jumps over 100x and its gradient over "
    "50x, then the run goes on and recovers on clean batches",
)
def h679_cooperage_one_stave_units(ctx: Context) -> None:
    gen = seeded(6795)
    model = _Regressor(8, 32, nn.ReLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32)
    for step in range(180):
        x, y = next(data)
        if step == 90:
            x = x.clone()
            x[5] *= 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "loss at step 90 over 100x the median of steps 70-89", ls[90] > 100 * _median(ls[70:90])
    )
    ctx.check(
        "gradient at step 90 over 50x the median of steps 70-89", g[90] > 50 * _median(g[70:90])
    )
    ctx.check(
        "loss of the last 20 steps under 3x steps 70-89", _median(ls[-20:]) < 3 * _median(ls[70:90])
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="glassworks_annealing_lehr_adagrad_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="a glassworks annealing-lehr residual-stress regressor, ReLU MLP, Adagrad; the init "
    "helper applied the gate-bias constant -4 (meant for a gated variant) to fc2's bias, so "
    "every fc2 ReLU is dead from the first step, no gradient reaches fc1 or fc2's weights, and "
    "the loss stalls at the mean-prediction level that the head's bias alone can reach",
)
def h679_glassworks_lehr_gate_bias_init(ctx: Context) -> None:
    gen = seeded(6796)
    model = _Regressor(8, 48, nn.ReLU)
    with torch.no_grad():
        model.fc2.bias.fill_(-4.0)  # gate-bias constant applied to the wrong layer
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _readings(gen)
    dead = []
    fc1_grads = []
    for _ in range(150):
        x, y = next(data)
        h2 = model.features(x)
        dead.append(dead_fraction(h2.detach()))
        loss = F.mse_loss(model.head(h2), y)
        loss.backward()
        fc1_grads.append(float(model.fc1.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    var = float(torch.cat([next(data)[1] for _ in range(10)]).var())
    ctx.check("over 90% of fc2 units dead at every step", min(dead) > 0.9)
    ctx.check("fc1 gets (almost) no gradient", max(fc1_grads) < 1e-6)
    ctx.check(
        "loss of the last 20 steps above 0.8x the target variance", _median(ls[-20:]) > 0.8 * var
    )
    ctx.check("loss finite throughout", _finite(ls))


def _stroke_batches(gen: torch.Generator, batch: int = 32, steps: int = 40):
    """Endless (x, y): 40 readings of 4 channels; y is a smoothed mean of channel 0."""
    while True:
        x = torch.randn(batch, steps, 4, generator=gen)
        y = x[:, :, 0].mean(1, keepdim=True) + 0.5 * x[:, -5:, 1].mean(1, keepdim=True)
        yield x, y


@scenario(
    family="rowing_scull_stroke_rate_relu_elman_regressor",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a rowing-scull stroke-rate regressor over 40 oarlock-force readings, ReLU Elman RNN "
    "cell (nn.RNNCell unrolled), NAdam; the recurrent weights were initialised orthogonal with gain 2.0 (the gain meant for "
    "the input weights), so the backward gradient grows through time: the gradient at the first "
    "reading's hidden state is orders of magnitude above the last's and the loss sits "
    "around 1e4 and more, far above the target's unit variance, without ever training",
)
def h679_rowing_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6797)

    class StrokeRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNNCell(4, 32, nonlinearity="relu")
            self.head = nn.Linear(32, 1)
            nn.init.orthogonal_(self.rnn.weight_hh, gain=2.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            h = torch.zeros(x.shape[0], 32)
            states = []
            for t in range(x.shape[1]):
                h = self.rnn(x[:, t], h)
                h.retain_grad()
                states.append(h)
            return self.head(h), states

    model = StrokeRNN()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _stroke_batches(gen)
    ratio = []
    for _ in range(100):
        x, y = next(data)
        pred, states = model(x)
        loss = F.mse_loss(pred, y)
        loss.backward()
        ratio.append(float(states[0].grad.norm() / (states[-1].grad.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at the first reading over 100x the last's at step 0", ratio[0] > 100)
    ctx.check("still over 100x at step 50", ratio[50] > 100)
    ctx.check(
        "loss of the last 10 steps over 100x its target's variance",
        _median(ctx.losses[-10:]) > 100 * float(y.var()),
    )


@scenario(
    family="ski_wax_glide_grade_cosine_rmsprop_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a ski-wax glide-grade classifier on 8x8 base-structure scans (the digits), cosine "
    "classifier head with temperature, RMSprop; the temperature was read from a config in "
    "milliseconds-style units, 0.0005 instead of 0.05, so logits reach +-2000: the float32 "
    "softmax gives the target exactly 1.0 on a large share of rows and their gradient is 0",
)
def h679_ski_wax_temperature_units(ctx: Context) -> None:
    gen = seeded(6798)

    class CosineNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.head = nn.Linear(64, 10, bias=False)
            self.temperature = 0.0005  # meant 0.05

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.normalize(F.relu(self.fc1(x)), dim=-1)
            w = F.normalize(self.head.weight, dim=-1)
            return h @ w.T / self.temperature

    model = CosineNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    frac = []
    for _ in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        frac.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 30% of rows at p = 1.0 in the last 20 steps", _median(frac[-20:]) > 0.3)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="curling_stone_curl_learnable_scale_rprop_classifier",
    optimizer="Rprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a curling-stone curl-direction classifier (10 ice-path classes on the digits, full batch), ReLU "
    "trunk and a linear head with a CLIP-style learnable logit scale exp(s), Rprop; the clamp on "
    "s at log(100) was left out, the scale's gradient sign never changes so Rprop keeps growing "
    "its step, and the head's logits grow without bound",
)
def h679_curling_unclamped_logit_scale(ctx: Context) -> None:
    seeded(6799)

    class ScaledHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 10)
            self.log_scale = nn.Parameter(torch.zeros(()))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.fc(h) * self.log_scale.exp()  # clamp(max=log 100) forgotten

    class CurlNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.head = ScaledHead()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x)))

    model = CurlNet()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    xa, ya = digits()
    peak = []
    for _ in range(200):
        x, y = xa, ya  # Rprop is a full-batch method: the whole set every step
        ctx.targets(y)
        logits = model(x)
        peak.append(float(logits.detach().abs().max()))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("peak |logit| grew over 20x from step 10 to the end", peak[-1] > 20 * peak[10])
    ctx.check("peak |logit| over 200 at the end", peak[-1] > 200)
    ctx.check("logit scale over 20", float(model.head.log_scale.exp()) > 20)


def _tiny_pp_lcnet_v4():
    from transformers import PPLCNetV4Backbone, PPLCNetV4Config

    config = PPLCNetV4Config(
        num_channels=1,
        stem_channels=[1, 8, 16],
        block_configs=[
            [[3, 16, 16, 1, True]],
            [[3, 16, 16, 1, False]],
            [[3, 16, 32, [2, 1], False]],
            [[3, 32, 32, 1, True]],
        ],
        reduction=4,
    )
    return PPLCNetV4Backbone(config)


@scenario(
    family="hallmark_assay_punch_pp_lcnet_v4_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("lcnet.encoder.blocks.2",),
    diverges=None,
    heldout=True,
    note="an assay-office hallmark punch classifier on 16x16 punch scans (the digits upsampled): "
    "a tiny Hugging Face PP-LCNet v4 backbone (PPLCNetV4Backbone from a config) with a linear "
    "head, AdamW with one param group per stage; stage 3's lr was read from lr_stage3, which a "
    "YAML typo set to 0e-4, so encoder.blocks.2 never moves while the stem, the other stages and "
    "the head train and the loss falls",
)
def h679_hallmark_pp_lcnet_v4_stage_lr_typo(ctx: Context) -> None:
    gen = seeded(67910)

    class HallmarkNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lcnet = _tiny_pp_lcnet_v4()
            self.head = nn.Linear(32 * 2 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear")
            fmap = self.lcnet(img).feature_maps[-1]
            return self.head(fmap.flatten(1))

    model = HallmarkNet()
    stage3 = model.lcnet.encoder.blocks[2]
    s3_ids = {id(p) for p in stage3.parameters()}
    rest = [p for p in model.parameters() if id(p) not in s3_ids]
    lr_stage3 = 0e-4  # typo for 5e-4
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": list(stage3.parameters()), "lr": lr_stage3}],
        weight_decay=0.01,
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in stage3.parameters()]
    other = model.lcnet.encoder.blocks[1]
    other_before = [p.detach().clone() for p in other.parameters()]
    data = digit_batches(gen, batch=32)
    s3_grads = []
    for _ in range(80):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        s3_grads.append(grad_norm(stage3))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    moved = max(
        float((p - b).abs().max()) for p, b in zip(stage3.parameters(), before, strict=False)
    )
    moved_other = max(
        float((p - b).abs().max()) for p, b in zip(other.parameters(), other_before, strict=False)
    )
    ctx.check("stage 3 weights unchanged", moved == 0.0)
    ctx.check("stage 2 weights moved", moved_other > 1e-3)
    ctx.check("stage 3 got a nonzero gradient every step", min(s3_grads) > 0)
    ctx.check(
        "loss of the last 10 steps below 0.6x its first 10",
        _median(ls[-10:]) < 0.6 * _median(ls[:10]),
    )


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="falconry_lure_swing_dropout_schedule_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a falconry lure-swing pattern classifier (the digits), ReLU MLP with dropout, label "
    "smoothing 0.1, SGD Nesterov; the regularisation schedule raises dropout from 0 to 0.5 at "
    "step 100, so the training loss jumps up there (alarming at a glance) while the eval loss "
    "keeps improving: a healthy run",
)
def h679_falconry_dropout_raise(ctx: Context) -> None:
    gen = seeded(67911)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.0), nn.Linear(128, 128), nn.ReLU(),
        nn.Dropout(0.0), nn.Linear(128, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    xa, ya = digits()
    evals = []
    for step in range(200):
        if step == 100:
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.5
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step in (99, 199):
            model.eval()
            with torch.no_grad():
                evals.append(float((model(xa).argmax(1) == ya).float().mean()))
            model.train()
    ls = ctx.losses
    ctx.check(
        "train loss jumped at step 100 (over 1.2x steps 90-99)",
        _median(ls[100:110]) > 1.2 * _median(ls[90:100]),
    )
    ctx.check("loss fell from its start", _median(ls[-10:]) < 0.5 * _median(ls[:10]))
    ctx.check("eval accuracy over 0.9 at the end", evals[-1] > 0.9)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="sheep_shearing_fleece_weight_onecycle_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a sheep-shearing fleece-weight regressor, GELU MLP, Huber loss, ASGD with OneCycleLR, "
    "2-micro-batch accumulation, clipping at 1.0, noisy labels: an ordinary run",
)
def h679_sheep_shearing_onecycle(ctx: Context) -> None:
    gen = seeded(67912)
    model = _Regressor(8, 48, nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=steps, cycle_momentum=False
    )
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.1)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss of the last 20 steps below 0.6x its first 10",
        _median(ls[-20:]) < 0.6 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="quilting_stitch_density_tied_denoising_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a quilting stitch-density denoising autoencoder on the digits, encoder and decoder with "
    "tied weights (decoder uses the encoder's transpose), MSE, Gaussian input noise, RAdam with "
    "param groups (no weight decay on biases) and ReduceLROnPlateau: an ordinary run",
)
def h679_quilting_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(67913)

    class TiedAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(64, 24)
            self.dec_bias = nn.Parameter(torch.zeros(64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(
                F.linear(torch.relu(self.enc(x)), self.enc.weight.T, self.dec_bias)
            )

    model = TiedAE()
    opt = torch.optim.RAdam(
        [
            {"params": [model.enc.weight], "weight_decay": 1e-4},
            {"params": [model.enc.bias, model.dec_bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = digit_batches(gen)
    for _ in range(200):
        x, _y = next(data)
        noisy = x + 0.1 * torch.randn(x.shape, generator=gen)
        loss = F.mse_loss(model(noisy), x)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss of the last 20 steps below 0.5x its first 10",
        _median(ls[-20:]) < 0.5 * _median(ls[:10]),
    )
    ctx.check("loss finite throughout", _finite(ls))
