"""Held-out set 360 (``h360_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a trompo spin-wobble identity-initialised ReLU RNN whose
recurrent identity is scaled by ReLU's gain (gradients grow through time), a varpa stone-throw tanh
regressor whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness at step 100), a paddy-field
drainage neural ODE integrated with Euler steps whose weir takes sqrt of the depth with no clamp
(NaN once the forecast reaches the dry-down), a haegeum bow-pressure SiLU regressor resumed without
Adam's state (a one-off loss spike it recovers from), a lawn-billiards ReLU classifier fed one
shard in millimetres (one corrupted batch), a sgian-dubh grind GELU regressor whose static loss
scale is not undone on the resume step (one gradient burst), a daegeum buzz classifier whose fc1
group rate is a multiplier taken as a rate (fc1 frozen), a haycock-weight GELU regressor turning
kilograms into grams inside fp16 autocast (fp16 overflow), an ajaeng bowing ReLU classifier whose
SGD rate is typed 0.5 for 0.05 (act2 dies), a piri embouchure classifier whose temperature is
typed 0.02 for 2.0 (softmax saturates), and three controls (a lake ice-quake neural ODE with a tanh
field, RK4 and Adam, a kkwaenggwari stroke Conv1d classifier with SGD Nesterov, OneCycleLR and
label smoothing, a tovshuur string-tension SiLU Huber regressor with ASGD, accumulation and
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    forward=None,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    forward = forward or (lambda m, x: m(x))
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


# -- trompo: an identity-initialised ReLU RNN whose identity is scaled by ReLU's gain ----------


class IdentityReluRNN(nn.Module):
    """Hand-written Elman cell: h = act(inp(x_t) + rec(h)), head on the last state."""

    def __init__(self, d_in=6, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.eye_(self.rec.weight)
            self.rec.weight.mul_(gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _wobble(gen, batch, seed, length=16, d_in=6):
    """Per-tick wobble readings of a spinning top; target: the remaining spin time."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        decay = torch.linspace(0.3, 1.0, length)
        y = torch.tanh((x @ w * decay).sum(1) / math.sqrt(length))
        yield x, y


def _through_time_ratio(model) -> float:
    first = model.states[0].grad.norm()
    last = model.states[-1].grad.norm().clamp_min(1e-12)
    return float(first / last)


@scenario(
    family="trompo_spin_wobble_identity_relu_rnn",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written identity-initialised ReLU RNN (inp, rec, act, head; the IRNN recipe) reading 16 ticks of six wobble readings of a spinning trompo and regressing its remaining spin time, RAdam at 1e-3, MSE, gradient clipping at 1.0, 200 steps. The init helper scales the recurrent identity by ReLU's gain sqrt(2) as it does for feed-forward layers, so rec is 1.41 x I: the hidden state and the gradient grow by about 1.41 per tick, through time. At step 0 the gradient at the first hidden state is about 130x that at the last (a twin with the plain identity: about 0.6), the gradient norm is over 100x the twin's, rec carries about 97% of it, and the ratio stays over 10 through the first 50 steps; the clipping keeps the run finite and the loss falls from its huge start without diverging.",
)
def h360_trompo_irnn_gain_twice(ctx: Context) -> None:
    gen = seeded(36001)
    model = IdentityReluRNN(gain=math.sqrt(2.0))  # meant: the plain identity (gain 1)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios, rec_share = [], []

    batches = _wobble(gen, 64, 3601)

    # the same data through a correctly initialised twin, for the size of its gradients
    twin = IdentityReluRNN(gain=1.0)
    twin.load_state_dict({**model.state_dict(), "rec.weight": torch.eye(48)})
    xb, yb = next(_wobble(torch.Generator().manual_seed(9), 64, 3601))
    F.mse_loss(twin(xb), yb).backward()
    twin_ratio = _through_time_ratio(twin)
    twin_norm = grad_norm(twin)

    def inspect(step):
        ratios.append(_through_time_ratio(model))
        g_rec = model.rec.weight.grad.norm()
        g_all = torch.sqrt(sum(p.grad.norm() ** 2 for p in model.parameters()))
        rec_share.append(float(g_rec / g_all))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, clip=1.0, inspect=inspect)
    ctx.check(
        "at step 0 the gradient at the first hidden state is over 100x that at the last",
        ratios[0] > 100,
    )
    ctx.check(
        "with the plain identity the same ratio is under 10 (the gain is what grows it)",
        twin_ratio < 10,
    )
    ctx.check(
        "the step-0 gradient norm is over 100x the correctly initialised twin's",
        ctx.grad_norms[0] > 100 * twin_norm,
    )
    ctx.check("the ratio stays over 10 through the first 50 steps", min(ratios[:50]) > 10)
    ctx.check("rec carries over half the gradient norm at step 0", rec_share[0] > 0.5)


# -- varpa: StepLR's gamma typed 10 for 0.1 -----------------------------------------------------


@scenario(
    family="varpa_stone_throw_distance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) regressing the throw distance of a varpa stone from eight standardised readings, plain SGD at 0.05, MSE, 200 steps planned. The StepLR meant to cut the rate tenfold every 100 steps was given gamma=10.0 for 0.1: at step 100 the rate becomes 0.5. lr x top Hessian eigenvalue (power iteration on a held batch) is about 0.4 at step 99 and about 3.9 at step 100, past the 2/sharpness limit; the loss climbs from step 101 and overflows to inf at step 127.",
)
def h360_varpa_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(36002)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)  # meant: 0.1
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 3602))
    edge = {}

    def before(step):
        if step in (99, 100):
            lr = opt.param_groups[0]["lr"]
            edge[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3602), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x top Hessian eigenvalue is under 2 at step 99", edge.get(99, 9.0) < 2.0)
    ctx.check("lr x top Hessian eigenvalue is over 2 at step 100", edge.get(100, 0.0) > 2.0)
    ctx.check("the loss fell before the step", _mean(ls[90:100]) < 0.8 * _mean(ls[:10]))
    late = [v if math.isfinite(v) else float("inf") for v in ls[100:]]
    ctx.check("the loss passes 100x its step-99 value after step 100", max(late) > 100 * ls[99])


# -- paddy field drainage: a hand-written neural ODE, Euler steps, a weir with no clamp ----------


class Weir(nn.Module):
    """Outflow over the field's weir, Torricelli's law: q = c sqrt(h)."""

    def __init__(self):
        super().__init__()
        self.log_c = nn.Parameter(torch.tensor(math.log(0.3)))

    def forward(self, h):
        return self.log_c.exp() * torch.sqrt(h)  # meant: torch.sqrt(h.clamp_min(0.0))


class PaddyField(nn.Module):
    """The vector field dh/dt = rain x runoff(h, rain) - weir(h)."""

    def __init__(self, hidden=32):
        super().__init__()
        self.runoff = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.outflow = Weir()

    def forward(self, h, rain):
        return rain * (1.0 + self.runoff(torch.cat([h, rain], -1))) - self.outflow(h)


class PaddyODE(nn.Module):
    """Integrates the field with fixed-step Euler; backpropagated through every step."""

    def __init__(self, dt=0.5):
        super().__init__()
        self.field = PaddyField()
        self.dt = dt
        self.horizon = 10

    def forward(self, x):
        h, rain = x[:, :1], x[:, 1:2]
        path = []
        for _ in range(self.horizon):
            h = h + self.dt * self.field(h, rain)
            path.append(h)
        return torch.cat(path, -1)


def _paddy(gen, batch, model):
    """Initial depth (dm) and rain rate; the true depths from Torricelli's law, fine steps."""
    while True:
        h0 = 3.0 + 3.0 * torch.rand(batch, 1, generator=gen)
        rain = (
            0.1 * torch.rand(batch, 1, generator=gen) * (torch.rand(batch, 1, generator=gen) < 0.5)
        )
        h, out = h0.clone(), []
        for _ in range(model.horizon):
            for _ in range(50):
                h = (h + (model.dt / 50) * (rain - 0.4 * h.clamp_min(0).sqrt())).clamp_min(0.0)
            out.append(h)
        yield torch.cat([h0, rain], -1), torch.cat(out, -1)


@scenario(
    family="paddy_field_weir_drainage_euler_neural_ode",
    optimizer="Adamax",
    cause="nonfinite",
    where=("field.outflow",),
    diverges=100,
    heldout=True,
    onset=100,
    note="A hand-written neural ODE (field.runoff: a tanh MLP scaling the rain, field.outflow: a weir following Torricelli's law q = c sqrt(h)) integrated with fixed-step Euler (dt 0.5) and backpropagated through every step, forecasting the water depth of a drying paddy field from its initial depth and rain rate, Adamax at 5e-3, MSE on the path, 200 steps planned. The weir computes sqrt(h) with no clamp at zero. For 100 steps the forecast spans 10 Euler steps and no field runs dry; at step 100 the curriculum extends it to 40 steps, the dry fields drain, an Euler step overshoots below zero, the depth entering field.outflow is negative, sqrt gives NaN and the loss is NaN at step 100.",
)
def h360_paddy_weir_sqrt_no_clamp(ctx: Context) -> None:
    gen = seeded(36003)
    model = PaddyODE()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    seen = {}

    def hook(module, inputs, output):
        if "first" not in seen and not torch.isfinite(output).all():
            seen["first"] = len(ctx.losses)
            seen["input_min"] = float(inputs[0].detach().min())

    model.field.outflow.register_forward_hook(hook)

    def before(step):
        if step == 100:
            model.horizon = 40  # the curriculum extends the forecast to the dry-down

    _loop(ctx, model, opt, _paddy(gen, 64, model), 200, F.mse_loss, before=before)
    bad = _first_bad(ctx.losses)
    ctx.check("finite for the first 100 steps", _finite(ctx.losses[:100]))
    ctx.check("the loss fell before the horizon grew", _fell(ctx.losses[:100], ratio=0.5))
    ctx.check("the loss is NaN at step 100", bad == 100)
    ctx.check(
        "the first non-finite output comes out of the weir at step 100", seen.get("first") == 100
    )
    ctx.check("the depth entering the weir was negative there", seen.get("input_min", 0.0) < 0.0)


# -- lake ice quakes: a hand-written neural ODE with a tanh field, RK4, Adam (control) ---------


class IceField(nn.Module):
    """dz/dt = out(tanh(inp(z))): a tanh vector field on (stress, strain rate)."""

    def __init__(self, dim=2, hidden=32):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.act = nn.Tanh()
        self.out = nn.Linear(hidden, dim)

    def forward(self, z):
        return self.out(self.act(self.inp(z)))


class IceODE(nn.Module):
    """Fixed-step RK4 over the field; backpropagated through every stage."""

    def __init__(self, dt=0.1, steps=20):
        super().__init__()
        self.field = IceField()
        self.dt = dt
        self.steps = steps

    def forward(self, z):
        path, dt = [], self.dt
        for _ in range(self.steps):
            k1 = self.field(z)
            k2 = self.field(z + 0.5 * dt * k1)
            k3 = self.field(z + 0.5 * dt * k2)
            k4 = self.field(z + dt * k3)
            z = z + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            path.append(z)
        return torch.stack(path, 1)


def _ice_paths(gen, batch, dt=0.1, steps=20):
    """Thermal stress in a lake's ice sheet relaxing as a damped oscillator, with sensor noise."""
    a = torch.tensor([[-0.2, 1.0], [-1.0, -0.2]])
    while True:
        z = 2.0 * torch.rand(batch, 2, generator=gen) - 1.0
        start, path = z.clone(), []
        for _ in range(steps):
            for _ in range(10):
                z = z + (dt / 10) * (z @ a.T - 0.1 * z**3)
            path.append(z)
        y = torch.stack(path, 1)
        yield start, y + 0.01 * torch.randn(y.shape, generator=gen)


@scenario(
    family="lake_ice_quake_stress_tanh_rk4_neural_ode",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written neural ODE with a tanh vector field (field.inp, field.act, field.out) integrated with fixed-step RK4 (dt 0.1, 20 steps) and backpropagated through every stage, forecasting the thermal stress and strain rate of a lake's ice sheet relaxing between ice quakes (a damped oscillator with a cubic term, sensor noise), Adam at 3e-3, MSE on the path, gradient clipping at 1.0, 150 steps. A control.",
)
def h360_lake_ice_quake_rk4_control(ctx: Context) -> None:
    gen = seeded(36004)
    model = IceODE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    _loop(ctx, model, opt, _ice_paths(gen, 64), 150, F.mse_loss, clip=1.0)
    ctx.check("the loss fell to under a fifth", _fell(ctx.losses, ratio=0.2))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the gradient norm stayed under 10", max(ctx.grad_norms) < 10)


# -- haegeum: resuming from a checkpoint without the optimizer's state --------------------------


@scenario(
    family="haegeum_bow_hair_pressure_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) regressing the bow-hair pressure of a haegeum player from ten standardised readings, Adam at 2e-2, MSE, 260 steps. At step 150 the job resumes from its checkpoint: the weights are restored but the optimizer is built afresh because its state dict was never saved, so Adam restarts from empty moments and its first bias-corrected steps move every weight by about the full rate in the sign of its gradient. The batch and the gradient at step 150 are ordinary, the loss at step 151 jumps to about 60x its median over the previous 20 steps, and the run recovers within about 50 steps; finite throughout.",
)
def h360_haegeum_resume_without_adam_state(ctx: Context) -> None:
    gen = seeded(36005)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)

    def before(step):
        if step == 150:
            # the resume path restores the weights but builds a fresh optimizer
            # (its state dict was never saved), so Adam restarts from empty moments
            opt.state.clear()

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3605), 260, F.mse_loss, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[130:150])
    peak = max(ls[150:160])
    ctx.check(
        "the loss over the 10 steps after the resume peaks over 10x the median before",
        peak > 10 * pre,
    )
    ctx.check(
        "the resume step's batch is ordinary (loss under 1.5x the median)", ls[150] < 1.5 * pre
    )
    ctx.check(
        "the gradient at the resume step is ordinary (under 2x the median before)",
        gn[150] < 2 * _median(gn[130:150]),
    )
    ctx.check("the loss is back under 1.5x within 60 steps", _median(ls[200:210]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- lawn billiards: one shard in millimetres ------------------------------------------------------


@scenario(
    family="lawn_billiards_ring_pass_relu_classifier",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying lawn-billiards shots (five outcomes through the ring) from eight standardised readings, Adagrad at 0.05, cross-entropy, gradient clipping at 5.0, 240 steps. At step 120 one club's shard arrives with its readings in millimetres and never standardised (x 1000): the loss on that batch is about 400x the median before and the gradient about 900x, clipping limits the damage, and the run recovers to its earlier loss within a few steps.",
)
def h360_lawn_billiards_mm_shard(ctx: Context) -> None:
    gen = seeded(36006)
    model = Trunk(8, 64, out=5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 120:
            return x * 1000.0, y  # one club's shard logged in millimetres, never standardised
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 5, 3606),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median before", ls[120] > 20 * _median(ls[100:120])
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median before",
        gn[120] > 20 * _median(gn[100:120]),
    )
    ctx.check(
        "the loss is back under 2x the median before by step 180",
        _median(ls[170:180]) < 2 * _median(ls[100:120]) + 0.05,
    )
    ctx.check("finite throughout", _finite(ls))


# -- sgian dubh: manual loss scaling left un-undone on the resume step -----------------------------


@scenario(
    family="sgian_dubh_blade_grind_gelu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) regressing the grind angle of a sgian-dubh blade from twelve standardised readings, SGD with momentum 0.9 at 0.02, MSE, gradient clipping at 1.0, 260 steps. The training code applies a static loss scale of 1024 (kept from an fp16 recipe) and divides the gradients back in a hook that is registered only after the first step of a resumed run; the run resumes at step 150, so that one step backpropagates 1024 x the loss of an ordinary, clean batch: the gradient norm is about 900x the median before, clipping bounds the update, and the gradient and loss are back to normal on the next steps.",
)
def h360_sgian_dubh_loss_scale_unscaled(ctx: Context) -> None:
    gen = seeded(36007)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    clean = {}

    def backprop(step, loss):
        if step == 150:
            # the static loss scale (1024) is applied, but the hook that divides the gradients
            # back is registered only after the first step of a resumed run
            clean["loss"] = float(loss.detach())
            return loss * 1024.0
        return loss

    _loop(
        ctx, model, opt, _readings(gen, 64, 12, 3607), 260, F.mse_loss, backprop=backprop, clip=1.0
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median before",
        gn[150] > 50 * _median(gn[130:150]),
    )
    ctx.check(
        "the batch at step 150 is clean (loss under 2x the median)",
        clean["loss"] < 2 * _median(ls[130:150]),
    )
    ctx.check(
        "the gradient is back under 3x the median by step 160",
        max(gn[160:170]) < 3 * _median(gn[130:150]),
    )
    ctx.check("the loss fell over the run", _fell(ls))
    ctx.check("finite throughout", _finite(ls))


# -- daegeum: the first layer's param group given a fraction of the base rate as its rate -------


@scenario(
    family="daegeum_membrane_buzz_two_group_relu_classifier",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying the membrane buzz of a daegeum flute into six kinds from 16 readings, RMSprop at 1e-3 with two param groups. The config gives fc1's group a multiplier 1e-3 meant as its absolute rate, and the code multiplies it by the base rate again: fc1 trains at 1e-6. Over 200 steps fc1 moves under 0.1% of its norm (median per-step update about 1e-5 of its norm) while the head moves over 100% of its own and the loss still falls through the other layers; finite, no divergence.",
)
def h360_daegeum_group_lr_fraction(ctx: Context) -> None:
    gen = seeded(36008)
    model = Trunk(16, 64, out=6)
    base = 1e-3
    groups = [
        # meant: "lr": 1e-3 (the same as the rest); the config gave the multiplier 1e-3 and the
        # code multiplied it by the base rate again
        {"params": model.fc1.parameters(), "lr": base * 1e-3},
        {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": base},
    ]
    opt = torch.optim.RMSprop(groups, lr=base, alpha=0.99)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    steps1, stepsh = [], []

    def inspect(step):
        steps1.append(model.fc1.weight.detach().clone())
        stepsh.append(model.head.weight.detach().clone())

    def after(step):
        steps1[-1] = _rel_change(steps1[-1], model.fc1.weight)
        stepsh[-1] = _rel_change(stepsh[-1], model.head.weight)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3608, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
        after=after,
    )
    moved1, movedh = _rel_change(w1, model.fc1.weight), _rel_change(wh, model.head.weight)
    ctx.check("fc1 moved under 1% of its norm over the run", moved1 < 0.01)
    ctx.check("the head moved over 20% of its norm", movedh > 0.2)
    ctx.check(
        "fc1's median per-step update is under 1e-4 of its norm, over 100x below the head's",
        _median(steps1) < 1e-4 and 100 * _median(steps1) < _median(stepsh),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- haycock weighing: kilograms turned to grams inside the fp16 autocast region -----------------


class ToGrams(nn.Module):
    """The yard's scales read grams: the regressor's kilograms times 1000."""

    def forward(self, kg):
        return kg * 1000.0


class HaycockNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.to_grams = ToGrams()

    def forward(self, x):
        kg = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.to_grams(kg)  # meant: outside autocast, after .float()


def _haycocks(gen, batch, seed, d_in=10):
    """Pitchfork-built haycocks: standardised height, girth, moisture...; weight 30-110 kg."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        kg = 70.0 + 20.0 * torch.tanh(x @ w) + 2.0 * torch.randn(batch, generator=gen)
        yield x, kg * 1000.0


@scenario(
    family="pitchfork_haycock_weight_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("to_grams", "head"),
    diverges=57,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head, to_grams) regressing the weight of a pitchfork-built haycock (30-110 kg) from ten standardised readings under fp16 autocast with a GradScaler, Adam at 3e-3, Huber loss in kilograms, 240 steps planned. The model's last module converts its kilograms to grams for the yard's scales inside the autocast region (meant: after .float(), outside it): as the predictions grow towards the targets, the first one past 65.5 kg gives over 65504 g and overflows fp16 to inf at step 57 while the same batch in fp32 is finite; the loss is inf at step 57.",
)
def h360_haycock_grams_in_autocast(ctx: Context) -> None:
    gen = seeded(36009)
    model = HaycockNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def loss_fn(out, y):
        return F.huber_loss(out / 1000.0, y / 1000.0, delta=5.0)  # in kg

    def watch(step, out, x, y):
        if "step" not in seen and not torch.isfinite(out).all():
            seen["step"] = step
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x)).all())
                seen["max_kg"] = float(
                    model.head(model.act2(model.fc2(model.act1(model.fc1(x))))).max()
                )

    _loop(
        ctx,
        model,
        opt,
        _haycocks(gen, 64, 3609),
        240,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is first non-finite at step 57", bad == 57)
    ctx.check("finite before the overflow", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "the loss fell before the overflow",
        bad is not None and bad > 20 and ctx.losses[bad - 1] < 0.7 * ctx.losses[0],
    )
    ctx.check("the fp16 prediction is inf at the first non-finite step", seen.get("step") == bad)
    ctx.check("the same batch in fp32 is finite there", seen.get("fp32_finite", False))
    ctx.check("a prediction passed 65.5 kg there", seen.get("max_kg", 0.0) > 65.504)


# -- ajaeng: SGD's rate typed 0.5 for 0.05, the ReLUs die -----------------------------------------


@scenario(
    family="ajaeng_bowed_zither_rosin_stick_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying the rosin-stick bowing of an ajaeng into four kinds from twelve standardised readings, SGD with momentum 0.9, cross-entropy, 200 steps. The rate was typed 0.5 for 0.05: the loss first falls, then large updates push act2's pre-activations below zero one unit after another; by step 100 all of act2's units are never positive on a batch, they get no gradient again, the loss sits at chance (log 4) for the last 100 steps while act1 stays alive; finite.",
)
def h360_ajaeng_sgd_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(36010)
    model = Trunk(12, 64, out=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # meant: 0.05
    dead1, dead2 = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            dead1.append(_dead(h1))
            dead2.append(_dead(model.act2(model.fc2(h1))))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 128, 12, 4, 3610, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 20% of act2's units are dead at step 0", dead2[0] < 0.2)
    ctx.check(
        "over 90% of act2's units are dead in every one of the last 50 steps",
        min(dead2[-50:]) > 0.9,
    )
    ctx.check("act1's units stay alive (under 10% dead at the end)", dead1[-1] < 0.1)
    ctx.check(
        "the loss over the last 20 steps is over 0.9x chance (log 4)",
        _mean(ctx.losses[-20:]) > 0.9 * math.log(4),
    )
    ctx.check(
        "the loss got below 0.7x chance on the way (it was learning before the units died)",
        min(ctx.losses[:100]) < 0.7 * math.log(4),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- piri: the head's temperature typed 0.02 for 2.0 ---------------------------------------------


class TemperedHead(nn.Module):
    """Logits = (features @ W) / temperature."""

    def __init__(self, hidden, classes, temperature):
        super().__init__()
        self.proj = nn.Linear(hidden, classes, bias=False)
        self.temperature = temperature

    def forward(self, h):
        return self.proj(h) / self.temperature


class PiriNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=5, temperature=2.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.norm = nn.LayerNorm(hidden)
        self.head = TemperedHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(self.norm(self.act1(self.fc1(x))))


@scenario(
    family="piri_double_reed_embouchure_tempered_head_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written classifier (fc1, act1: GELU, norm: LayerNorm, head: a linear projection divided by a temperature) telling five embouchure kinds of a piri player from ten readings, AdamW at 3e-3 with a no-decay group for biases and the LayerNorm, cross-entropy, 200 steps. The head's temperature was typed 0.02 for 2.0, so the logits are 100x too large: the softmax saturates, and over the last 50 steps over half the rows' target probability rounds to exactly 1.0 in float32 (at the intended temperature the same logits give under 5%); the loss stays finite.",
)
def h360_piri_temperature_typo(ctx: Context) -> None:
    gen = seeded(36011)
    model = PiriNet(temperature=0.02)  # meant: 2.0
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    collapsed, intended = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        intended.append(collapsed_fraction(out.detach() * 0.02 / 2.0, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 3611, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 10% of rows have target probability exactly 1.0 at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over half the rows have target probability exactly 1.0 over the last 50 steps",
        _mean(collapsed[-50:]) > 0.5,
    )
    ctx.check(
        "the same logits at the intended temperature collapse under 5% of rows",
        _mean(intended[-50:]) < 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kkwaenggwari: a Conv1d stroke classifier, SGD Nesterov, OneCycleLR (control) -----------------


class StrokeConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _gong_strokes(gen, batch, length=64, classes=4):
    """Small-gong strokes: each class rings at its own pitch and decay, with noise."""
    t = torch.arange(length, dtype=torch.float32)
    freq = torch.tensor([0.15, 0.3, 0.45, 0.6])
    decay = torch.tensor([0.02, 0.05, 0.08, 0.12])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[y, None] * t + phase) * torch.exp(-decay[y, None] * t)
        yield x + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="kkwaenggwari_gong_stroke_relu_conv1d_classifier",
    optimizer="SGD nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head over mean pooling) telling four strokes of a kkwaenggwari small gong from 64-sample recordings (pitch and decay per stroke, random phase, noise), SGD with Nesterov momentum under OneCycleLR (peak 0.3), label smoothing 0.1, gradient clipping at 1.0, 300 steps. A control.",
)
def h360_kkwaenggwari_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(36012)
    model = StrokeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=300)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _gong_strokes(gen, 64),
        300,
        loss_fn,
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over the last 20 steps is over 80%", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tovshuur: a Huber regressor, ASGD, accumulation, ReduceLROnPlateau (control) -----------------


@scenario(
    family="tovshuur_lute_string_gut_tension_silu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) regressing the gut-string tension of a tovshuur lute from eight standardised readings with noisy targets, ASGD at 0.05, Huber loss, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, gradient clipping at 1.0, 200 steps. A control.",
)
def h360_tovshuur_asgd_plateau_control(ctx: Context) -> None:
    gen = seeded(36013)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(11), 256, 8, 3613, noise=0.1))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1], delta=0.5))

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=0.5)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 3613, noise=0.1),
        200,
        loss_fn,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "the held-out loss ends under half its start",
        plateau() < 0.5 * float(F.huber_loss(torch.zeros(256), held[1], delta=0.5)),
    )
    ctx.check("finite throughout", _finite(ctx.losses))
