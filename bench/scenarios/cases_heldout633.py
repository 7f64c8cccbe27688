"""Held-out set 633 (``h633_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


class Net(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.gelu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _plain_loop(ctx: Context, model, opt, batches, steps, loss_fn, classifier=False):
    for _ in range(steps):
        x, y = next(batches)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="petanque_boule_carreau_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="a preemption at step 120; the checkpoint was saved from a DataParallel wrapper (keys "
    "prefixed 'module.') and the resume loads it with strict=False, so no weight is restored and "
    "the rebuilt model restarts from a fresh init (optimizer state kept); the loss jumps back up "
    "once and the run recovers",
)
def h633_petanque_resume_prefix_mismatch(ctx: Context) -> None:
    gen = seeded(6331)
    model = Net(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 120
    for step in range(240):
        if step == onset:
            ckpt = {"module." + k: v.clone() for k, v in model.state_dict().items()}
            fresh = Net(8, 32)
            with torch.no_grad():
                for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
                    p.copy_(q)  # the process restarted: the model is built anew
            res = model.load_state_dict(ckpt, strict=False)
            ctx.check("no key restored", len(res.missing_keys) == len(ckpt))
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    pre = _median(ls[onset - 10 : onset])
    ctx.check("loss at onset over 3x the 10 before", ls[onset] > 3 * pre)
    ctx.check("recovers: last 20 under 1.5x pre-onset", _median(ls[-20:]) < 1.5 * pre)
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class ElmanRelu(nn.Module):
    """A hand-written ReLU Elman RNN reading a sequence of sensor frames."""

    def __init__(self, n_in: int = 4, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rec.weight, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
        return self.head(h)


def _sequences(gen: torch.Generator, batch: int = 32, length: int = 24):
    while True:
        x = torch.randn(batch, length, 4, generator=gen) * 0.5
        y = x[:, -6:, 0].mean(1, keepdim=True) + 0.5 * x[:, -3:, 1].mean(1, keepdim=True)
        yield x, y


@scenario(
    family="change_ringing_rope_sally_relu_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="the recurrent weight's orthogonal init gain was typed 1.6 for 0.6 in the config; the "
    "back-propagated gradient grows through the 24 time steps of the rope-pull frames, the input "
    "weight's gradient is far over what gain 1 gives; clipping at 1.0 keeps the run alive",
)
def h633_change_ringing_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6332)
    model = ElmanRelu(4, 32, gain=1.6)  # meant 0.6
    sane = ElmanRelu(4, 32, gain=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _sequences(gen)
    x0, y0 = next(batches)
    for m in (model, sane):
        F.mse_loss(m(x0), y0).backward()
    ratio = float(model.inp.weight.grad.norm() / sane.inp.weight.grad.norm())
    model.zero_grad(set_to_none=True)
    ctx.check("input-weight gradient over 100x the gain-1 init", ratio > 100)
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("raw gradient norm over 100 at some step", max(ctx.grad_norms) > 100)


@scenario(
    family="thatch_reed_bundle_density_relu_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="three param groups (fc1, fc2, head); the head's lr was typed 2e-9 for 2e-3, so the head "
    "barely moves while the body trains; the loss still falls a little through the body",
)
def h633_thatch_head_lr_typo(ctx: Context) -> None:
    gen = seeded(6333)
    model = Net(16, 48, 4, act=F.relu)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": model.fc2.parameters(), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-9},  # meant 2e-3
        ]
    )
    ctx.attach(model, opt)
    w_head = model.head.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    _plain_loop(ctx, model, opt, _classes(gen), 200, F.cross_entropy, classifier=True)
    rel_head = float((model.head.weight.detach() - w_head).norm() / w_head.norm())
    rel1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("head moved under 1e-5 relative", rel_head < 1e-5)
    ctx.check("fc1 moved over 5e-2 relative", rel1 > 5e-2)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="coracle_paddle_yaw_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=40,
    heldout=True,
    note="plain SGD with a step schedule whose second milestone multiplies by gamma typed 30 for "
    "0.3 at step 40: lr goes from 0.05 to 1.5, lr x top Hessian eigenvalue passes 2 and the loss "
    "blows up",
)
def h633_coracle_step_gamma_typo(ctx: Context) -> None:
    gen = seeded(6334)
    model = Net(8, 32, act=torch.tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[40], gamma=30.0)  # meant 0.3
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 40
    lam = 0.0
    for step in range(150):
        x, y = next(batches)
        if step == onset:
            lam = _top_eig(model, x, y)
            ctx.check("lr x top eigenvalue over 2 at onset", opt.param_groups[0]["lr"] * lam > 2)
            ctx.check("old lr x top eigenvalue under 2", 0.05 * lam < 2)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0])
    ctx.check("loss blows up over 100x pre-onset", max(ls[onset:]) > 100 * ls[onset - 1])


@scenario(
    family="hurdy_gurdy_wheel_rosin_tanh_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one bad shard at step 110: a logger wrote the wheel speed in rpm where the rest is in "
    "revolutions per second (one input column 60x, offset), clipping at 1.0, the run spikes and "
    "recovers",
)
def h633_hurdy_gurdy_rpm_shard(ctx: Context) -> None:
    gen = seeded(6335)
    model = Net(8, 32, act=torch.tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(220):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, 3] = x[:, 3] * 60.0 + 300.0  # rpm, not rev/s
            y = y * 40.0  # the shard's torque targets are in the same wrong scale
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at onset over 20x the 10 before", ls[onset] > 20 * _median(ls[onset - 10 : onset])
    )
    ctx.check(
        "gradient at onset over 10x the 10 before", gs[onset] > 10 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "recovers: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="glacier_moulin_melt_depth_silu_regressor",
    optimizer="NAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="a melt-rate auxiliary term whose weight comes from a per-step table; the entry for step "
    "100 was typed 500.0 for 0.5, one backward pass is ~1000x, the logged (main) loss is ordinary",
)
def h633_moulin_aux_weight_typo(ctx: Context) -> None:
    gen = seeded(6336)
    model = Net(8, 32, 2, act=F.silu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 100
    aux_w = {s: 0.5 for s in range(200)}
    aux_w[onset] = 500.0  # meant 0.5
    for step in range(200):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out[:, :1], y)
        aux = F.mse_loss(out[:, 1:], 0.5 * y)
        (loss + aux_w[step] * aux).backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 50x the 10 before", gs[onset] > 50 * _median(gs[onset - 10 : onset])
    )
    ctx.check(
        "logged loss at onset under 3x the 10 before",
        ls[onset] < 3 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", all(math.isfinite(v) for v in ls))


class LogFeatureNet(nn.Module):
    """Gaussian-NLL net: a log of the (positive) discharge-energy reading, then mean and log-var."""

    def __init__(self) -> None:
        super().__init__()
        self.logfeat = LogFeature()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.logfeat(x))))


class LogFeature(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # no clamp


@scenario(
    family="ball_lightning_lifetime_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="the model takes log of the discharge-energy reading with no clamp; at step 90 a batch "
    "holds a reading rounded to 0.0 by the logger, log(0) = -inf and the loss is NaN",
)
def h633_ball_lightning_log_zero(ctx: Context) -> None:
    gen = seeded(6337)
    model = LogFeatureNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    seen: dict[str, torch.Tensor] = {}
    model.logfeat.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o.detach()))
    batches = _regression(gen)
    onset = 90
    for step in range(160):
        x, y = next(batches)
        x = x.clone()
        x[:, 0] = torch.exp(x[:, 0])  # energy: positive
        if step == onset:
            x[5, 0] = 0.0
        out = model(x)
        mu, logvar = out[:, :1], out[:, 1:]
        loss = 0.5 * (logvar + (y - mu) ** 2 / logvar.exp()).mean()
        if step == onset:
            ctx.check("logfeat output non-finite at onset", not bool(seen["o"].isfinite().all()))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="sepak_takraw_spike_angle_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 70 a new tracker firmware reports ball speed in "
    "micrometres per second instead of metres per second, fc1's fp16 output overflows to inf",
)
def h633_sepak_takraw_speed_units_fp16(ctx: Context) -> None:
    gen = seeded(6338)
    model = Net(8, 32, act=F.silu)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    batches = _regression(gen)
    onset = 70
    for step in range(120):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 0] = (x[:, 0] + 30.0) * 1e6  # um/s, not m/s
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check("fc1 fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all()))
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


class TempNet(Net):
    def __init__(self, temperature: float) -> None:
        super().__init__(16, 48, 4, act=F.gelu)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


@scenario(
    family="theremin_antenna_pitch_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature 1.0 is read from a config written in milli-units, 0.001, so "
    "the logits are 1000x and the target probabilities round to exactly 1.0 in float32",
)
def h633_theremin_temperature_milli(ctx: Context) -> None:
    gen = seeded(6339)
    model = TempNet(temperature=1e-3)  # meant 1.0
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    _plain_loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        p = torch.softmax(model(x).float(), -1).gather(1, y[:, None])
    ctx.check(
        "over 40% of rows' target probability exactly 1.0", float((p == 1.0).float().mean()) > 0.4
    )


@scenario(
    family="kendama_spike_catch_relu_classifier",
    optimizer="SGD Nesterov",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    onset=40,
    heldout=True,
    note="an lr-range probe left in the LambdaLR: steps 40-42 run at 300x the lr; the big "
    "updates push fc2's ReLU units negative on every input, most stay dead and the loss stalls",
)
def h633_kendama_lr_probe_left_in(ctx: Context) -> None:
    gen = seeded(63310)
    model = Net(16, 64, 4, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 300.0 if 40 <= s < 43 else 1.0)
    ctx.attach(model, opt)
    batches = _classes(gen)
    onset = 40
    dead_before = 0.0
    for step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        if step == onset:
            with torch.no_grad():
                dead_before = float((model.fc2(F.relu(model.fc1(x))) <= 0).all(0).float().mean())
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        dead = float((model.fc2(F.relu(model.fc1(x))) <= 0).all(0).float().mean())
    ls = ctx.losses
    ctx.check("under 10% of fc2 dead before onset", dead_before < 0.1)
    ctx.check("over 60% of fc2 dead at the end", dead > 0.6)
    ctx.check("loss stalls over 2x its pre-onset level", _median(ls[-20:]) > 2 * _median(ls[30:40]))


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="sheepdog_trial_outrun_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a batch-size ramp: batch 16 growing to 256 over the run with the lr scaled linearly "
    "with it (0.01 to 0.16), SGD momentum; the lr rises 16x and the early loss is noisy, "
    "alarming-looking but healthy",
)
def h633_sheepdog_batch_ramp(ctx: Context) -> None:
    gen = seeded(63311)
    model = Net(16, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    w = torch.randn(16, 4, generator=gen)
    steps = 160
    for step in range(steps):
        batch = int(round(16 * 2 ** (4 * step / (steps - 1))))
        for g in opt.param_groups:
            g["lr"] = 0.01 * batch / 16
        x = torch.randn(batch, 16, generator=gen)
        y = (x @ w).argmax(1)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("ramp reached batch 256", batch == 256)
    ctx.check("loss fell under half", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="chainsaw_carving_kerf_relu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="AdamW with two param groups (no decay on biases), OneCycleLR, label smoothing 0.1, "
    "2-micro-batch accumulation, clipping at 1.0, 5% noisy labels",
)
def h633_chainsaw_kerf_control(ctx: Context) -> None:
    gen = seeded(63312)
    model = Net(16, 48, 4, act=F.relu)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    batches = _classes(gen, batch=32)
    for _ in range(steps):
        total = torch.zeros(())
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 4, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell under 0.6x", _median(ls[-20:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))


@scenario(
    family="stilt_walker_gait_sway_silu_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="ASGD with two param groups (head at half the lr), ReduceLROnPlateau on the running loss, "
    "Huber loss, noisy sway readings",
)
def h633_stilt_walker_control(ctx: Context) -> None:
    gen = seeded(63313)
    model = Net(8, 32, act=F.silu)
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.ASGD(
        [{"params": body, "lr": 0.05}, {"params": model.head.parameters(), "lr": 0.025}]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.15)
    for step in range(220):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            sched.step(sum(ctx.losses[-10:]) / 10)
    ls = ctx.losses
    ctx.check("loss fell under 0.6x", _median(ls[-20:]) < 0.6 * _median(ls[:10]))
    ctx.check("finite", all(math.isfinite(v) for v in ls))
