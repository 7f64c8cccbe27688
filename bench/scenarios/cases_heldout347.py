"""Held-out set 347 (``h347_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a suminagashi ink-ripple SIREN (sine-activated coordinate
network) whose hidden-layer init drops the division by omega_0 (gradients grow through depth), a
lute fret-placement tanh regressor whose OneCycleLR max_lr is typed 1.0 for 0.01 (lr past
2/sharpness during the warm-up), a thatch-reed grading ReLU classifier whose warm-restart factor
is typed 100 for 1.5 (fc2's ReLUs die and stay dead), a hailstone growth-layer Poisson net whose
rate head takes log(relu(x)) for log(softplus(x)) (NaN), a hurling sliotar rebound Huber
regressor whose resumed step sums the loss over the batch (one gradient burst), a solar salt-pan
brine-density regressor fed one shard logged in pascals (one corrupted batch), an alphorn pitch
regressor whose head's param-group lr is typed 1e-8 (head frozen), a peat-turf drying regressor
whose loader scales the cached targets in place each epoch (slow climb), a handbell chord
classifier whose cosine head's scale is typed 1000 for 10 (softmax saturates), a sugarbush sap-run
classifier whose resumed micro-step counter divides the loss by 1e-4 for one step (Adam's second
moment poisoned), and three controls (a sand-ripple SIREN with the paper's init and Adam at 1e-4;
a timpani strike Conv1d classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping; a
hot-air balloon climb BCE net under fp16 autocast with a GradScaler, RAdam and
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    grad_norm,
    scenario,
    seeded,
)


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


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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
                out = model(x)
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


# -- shared pieces of this file -------------------------------------------------------------------


class Sine(nn.Module):
    """sin(w0 * x), the SIREN activation."""

    def __init__(self, w0=30.0):
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


class Siren(nn.Module):
    """A coordinate network: (x, y) -> value through Linear/Sine pairs, named net.0, net.1, ..."""

    def __init__(self, hidden=64, depth=4, w0=30.0, divide_by_w0=True):
        super().__init__()
        layers = [nn.Linear(2, hidden), Sine(w0)]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), Sine(w0)]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            lin = [m for m in self.net if isinstance(m, nn.Linear)]
            lin[0].weight.uniform_(-1.0 / 2, 1.0 / 2)
            for m in lin[1:]:
                bound = math.sqrt(6.0 / m.in_features)
                if divide_by_w0:
                    bound /= w0
                m.weight.uniform_(-bound, bound)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _grid(n=32):
    t = torch.linspace(-1, 1, n)
    a, b = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


def _pixels(gen, image, batch):
    """Random pixel batches of a generated image (coordinates, values)."""
    coords = _grid(int(math.sqrt(len(image))))
    while True:
        idx = torch.randint(0, len(image), (batch,), generator=gen)
        yield coords[idx], image[idx]


def _dead(acts: torch.Tensor) -> float:
    return float((acts <= 0).all(0).float().mean())


# -- suminagashi: the SIREN's hidden init forgets to divide by omega_0 ----------------------------


@scenario(
    family="suminagashi_ink_ripple_siren",
    optimizer="AdamW",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="A hand-written SIREN (net.0..net.16: eight Linear layers each followed by sin(30 x), then a linear output layer net.16) fitting a generated 32x32 suminagashi ink-ripple image (concentric ripples bent by a four-lobed swirl) from pixel coordinates, AdamW at 1e-4, MSE on 256-pixel batches, 200 steps. The hidden layers' init was copied from the paper's formula but the division by omega_0 was dropped: U(-sqrt(6/n), sqrt(6/n)) instead of U(-sqrt(6/n)/30, sqrt(6/n)/30). Every hidden layer's Jacobian then carries a factor of about 30 * sqrt(2) * rms(cos), so the gradient grows by one to two orders of magnitude per layer on the way back: the first layer's gradient is over 1e6 times the output layer's at the start and stays over 1e4 times it through the run. Adam's normalised steps keep the loss finite.",
)
def h347_suminagashi_siren_init_missing_w0(ctx: Context) -> None:
    gen = seeded(34701)
    coords = _grid(32)
    r = coords.norm(dim=1)
    th = torch.atan2(coords[:, 1], coords[:, 0])
    image = torch.sin(14 * r + 2.5 * torch.sin(4 * th))
    model = Siren(64, 8, divide_by_w0=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ratios = []

    def inspect(step):
        g0 = model.net[0].weight.grad.norm()
        gl = model.net[16].weight.grad.norm()
        ratios.append(float(g0 / gl.clamp_min(1e-30)))

    _loop(ctx, model, opt, _pixels(gen, image, 256), 200, F.mse_loss, inspect=inspect)
    ctx.check("net.0's gradient is over 1e6x the output layer's at step 0", ratios[0] > 1e6)
    ctx.check("net.0's gradient stays over 1e4x the output layer's", min(ratios) > 1e4)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sand ripples: a SIREN with the paper's init, Adam at 1e-4 (control) --------------------------


@scenario(
    family="aeolian_sand_ripple_height_siren",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SIREN (four Linear layers each followed by sin(30 x), a linear output) with the paper's initialisation (first layer U(-1/2, 1/2) on coordinates in [-1, 1], hidden layers U(-sqrt(6/n)/30, sqrt(6/n)/30)) fitting a generated 32x32 height map of wind-blown sand ripples (a sinuous crest pattern with a slow dune swell), Adam at 1e-4, MSE on 256-pixel batches, 250 steps. A control: the loss falls steadily.",
)
def h347_sand_ripple_siren_control(ctx: Context) -> None:
    gen = seeded(34702)
    coords = _grid(32)
    x, y = coords[:, 0], coords[:, 1]
    image = 0.7 * torch.sin(9 * x + 1.5 * torch.sin(3 * y)) + 0.4 * torch.cos(2 * x + y)
    model = Siren(64, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    _loop(ctx, model, opt, _pixels(gen, image, 256), 250, F.mse_loss)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under half its start", _fell(ctx.losses, ratio=0.5))


# -- lute frets: OneCycleLR's max_lr typed 1.0 for 0.01 -------------------------------------------


@scenario(
    family="lute_fret_placement_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the offset of a lute's gut fret from its equal-tempered position (standardised) from ten readings of string gauge, action and neck relief, plain SGD under OneCycleLR over 300 steps (warm-up over the first 30%), MSE. The config's max_lr was typed 1.0 for 0.01: the one-cycle warm-up climbs from 0.04 towards 1.0. The top Hessian eigenvalue by power iteration on a fixed batch shows lr * sharpness passing 2 during the warm-up, after which the loss oscillates and blows up.",
)
def h347_lute_fret_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(34703)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=300)  # meant 0.01
    batches = _readings(gen, 64, 10, 3473)
    px, py = next(batches)
    crossed = []

    def before(step):
        if step % 5 == 0:
            lam = _sharpness(model, F.mse_loss, px, py)
            lr = opt.param_groups[0]["lr"]
            if math.isfinite(lam) and lr * lam > 2.0:
                crossed.append(step)

    n = _loop(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("lr * sharpness passed 2 during the run", bool(crossed))
    ctx.check(
        "the loss went non-finite or over 1000x its minimum",
        bad is not None or max(ls) > 1000.0 * min(ls),
    )
    ctx.check(
        "lr * sharpness passed 2 before the loss broke",
        bool(crossed) and crossed[0] < (bad if bad is not None else n),
    )
    ctx.check("the loss fell first (the model was learning)", min(ls[:40]) < 0.8 * ls[0])


# -- thatch reeds: a warm-restart multiplier typed 100 for 1.5 ------------------------------------

THATCH_ONSET = 80


@scenario(
    family="thatch_reed_bundle_grade_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=THATCH_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading bundles of water reed for thatching into six grades from sixteen readings of length, butt diameter and moisture, SGD with momentum 0.9 at 0.02, cross-entropy, 240 steps. At step 80 a warm restart multiplies the lr for ten steps, and the restart factor was typed 100 for 1.5: ten steps at lr 2 push fc2's units far negative on every input. The share of act2 units that are zero on a whole held-out batch goes from under 10% before the restart to over half after it and stays there to the end once the lr is back to 0.02; the loss stays well above its pre-restart level.",
)
def h347_thatch_reed_restart_factor_typo(ctx: Context) -> None:
    gen = seeded(34704)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = _grades(gen, 64, 16, 6, 3474, spread=1.5)
    hx, _ = next(batches)
    dead = []

    def before(step):
        boost = 100.0 if THATCH_ONSET <= step < THATCH_ONSET + 10 else 1.0  # meant 1.5
        for g in opt.param_groups:
            g["lr"] = 0.02 * boost

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.features(hx)))

    _loop(
        ctx, model, opt, batches, 240, F.cross_entropy, classifier=True, before=before, after=after
    )
    ls = ctx.losses
    ctx.check("under 10% of act2 dead before the restart", max(dead[: THATCH_ONSET - 1]) < 0.1)
    ctx.check("over half of act2 dead at the end", min(dead[-40:]) > 0.5)
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 30 steps' loss is over 1.5x the 30 before the restart",
        _mean(ls[-30:]) > 1.5 * _mean(ls[THATCH_ONSET - 30 : THATCH_ONSET]),
    )


# -- hailstones: log of a ReLU rate (meant softplus) ----------------------------------------------


class LogRate(nn.Module):
    """log(relu(x)): the rate head's log, written with a ReLU where a softplus was meant."""

    def forward(self, x):
        self.low = float(x.detach().min())
        return torch.log(F.relu(x))  # meant: torch.log(F.softplus(x))


class HailCounter(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = LogRate()
        with torch.no_grad():
            self.head.bias.fill_(2.0)

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _hail(gen, batch, seed, d_in=8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.2 * torch.tanh(x @ w / math.sqrt(d_in)) - 0.5)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


@scenario(
    family="hailstone_growth_layer_count_log_rate_poisson_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_rate",),
    diverges=63,
    heldout=True,
    note="A hand-written GELU net (fc1, act1, fc2, act2, head, log_rate) predicting how many growth layers a hailstone shows in cross-section (a Poisson count) from eight readings of updraft speed, cloud-top temperature and liquid water content, Adamax at 1e-3, a hand-written Poisson NLL exp(log_rate) - y * log_rate, head bias started at 2. The log_rate module computes log(relu(x)) where log(softplus(x)) was meant: as the rates of the low-count storms are pulled down, one row's head output reaches zero, the log gives -inf, and the loss is NaN at step 63, where the run stops.",
)
def h347_hailstone_log_relu_rate(ctx: Context) -> None:
    gen = seeded(34705)
    model = HailCounter()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    lows = []

    def watch(step, out, x, y):
        lows.append(model.log_rate.low)

    n = _loop(ctx, model, opt, _hail(gen, 64, 3475), 300, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at the last step run", bad is not None and bad == n - 1)
    ctx.check("the rate head's input reached <= 0 at that step", lows[-1] <= 0.0)
    ctx.check("finite and falling before it", bad is not None and bad > 20 and _fell(ls[:bad]))


# -- hurling sliotar: one resumed step sums the loss over the batch -------------------------------

SLIOTAR_ONSET = 120


@scenario(
    family="hurling_sliotar_stitch_rebound_gelu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SLIOTAR_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a sliotar's rebound height off a hurley (standardised) from twelve readings of stitch-ridge height, core density and strike speed, SGD with Nesterov momentum 0.9 at 0.02, Huber loss on 256-row batches, gradient clipping at 1.0, 240 steps. At step 120 the job resumes from a checkpoint and the resume path computes the loss with reduction='sum' instead of 'mean' for its first step: the gradient of that one clean batch is 256x the usual. The clip bounds the step, and the run recovers to its pre-resume loss.",
)
def h347_hurling_sliotar_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(34706)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        if step == SLIOTAR_ONSET:
            return loss * 256  # the resume path used reduction="sum" over the 256-row batch
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 256, 12, 3476),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    k = SLIOTAR_ONSET
    ctx.check(
        "the gradient at the onset is over 50x the median of the 20 before",
        gn[k] > 50 * _median(gn[k - 20 : k]),
    )
    ctx.check(
        "the onset batch is clean: its loss under 2x the median of the 20 before",
        ls[k] < 2 * _median(ls[k - 20 : k]),
    )
    ctx.check(
        "the run recovers: last 20 steps' loss under 1.5x the 20 before the onset",
        _mean(ls[-20:]) < 1.5 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- salt pans: one shard's brine pressure logged in pascals --------------------------------------

BRINE_ONSET = 140


@scenario(
    family="solar_salt_pan_brine_density_silu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BRINE_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting brine density in a solar salt pan's crystalliser (standardised) from ten standardised readings (hydrostatic pressure, temperature, evaporation rate ...), Adagrad at 0.05, MSE, gradient clipping at 1.0, 260 steps. The batch at step 140 comes from one pan's logger that wrote the readings in pascals where the others write standardised kilopascals: the whole batch is 1000x too large. That step's loss and gradient are far over 20x the usual; the clip bounds the step and the run recovers.",
)
def h347_salt_pan_pascal_shard(ctx: Context) -> None:
    gen = seeded(34707)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == BRINE_ONSET else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3477), 260, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    k = BRINE_ONSET
    ctx.check(
        "the onset loss is over 20x the median of the 20 before",
        ls[k] > 20 * _median(ls[k - 20 : k]),
    )
    ctx.check(
        "the onset gradient is over 20x the median of the 20 before",
        gn[k] > 20 * _median(gn[k - 20 : k]),
    )
    ctx.check(
        "the run recovers: last 20 steps under 2x the 20 before the onset",
        _mean(ls[-20:]) < 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- alphorn: the head's param group lr typed 1e-8 ------------------------------------------------


@scenario(
    family="alphorn_bore_taper_pitch_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting an alphorn's fundamental pitch deviation (standardised) from ten readings of bore taper, length and bell flare, RMSprop with two parameter groups, MSE, 220 steps. The fine-tuning recipe meant the freshly initialised head at 1e-3 and the trunk at 1e-4; the head's lr was typed 1e-8: the head moves under 1e-4 of its norm over the whole run while fc1 and fc2 move over 5% of theirs.",
)
def h347_alphorn_head_group_lr_typo(ctx: Context) -> None:
    gen = seeded(34708)
    model = Trunk(10, 64, act=nn.SiLU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 1e-4}, {"params": model.head.parameters(), "lr": 1e-8}]
    )
    h0 = model.head.weight.detach().clone()
    f0 = [model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()]
    _loop(ctx, model, opt, _readings(gen, 64, 10, 3478), 220, F.mse_loss)
    ctx.check("the head moved under 1e-4 of its norm", _rel_change(h0, model.head.weight) < 1e-4)
    ctx.check(
        "fc1 and fc2 moved over 5% of their norm",
        min(_rel_change(f0[0], model.fc1.weight), _rel_change(f0[1], model.fc2.weight)) > 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- peat turves: the loader's drying correction is applied in place each epoch -------------------


@scenario(
    family="peat_turf_drying_moisture_inplace_target_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the moisture lost by cut peat turves on the drying bank (standardised) from ten weather and turf readings, ASGD at 0.02, MSE, 256 cached rows in batches of 64, 260 steps. The loader corrects the targets for the season's drying by 4% each epoch and was written ys.mul_(1.04) on the cached tensor where a copy was meant: the targets compound 4% every four steps, and the model, learning at a fixed rate, falls further behind them. After a normal descent the loss climbs slowly and steadily to many times its minimum, with no single jump and no NaN.",
)
def h347_peat_turf_inplace_target_drift(ctx: Context) -> None:
    gen = seeded(34709)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    src = _readings(gen, 256, 10, 3479)
    xs, ys = next(src)

    def loader():
        while True:
            ys.mul_(PEAT_FACTOR)  # meant: y = ys * PEAT_FACTOR (a copy per epoch)
            order = torch.randperm(256, generator=gen)
            for i in range(0, 256, 64):
                idx = order[i : i + 64]
                yield xs[idx], ys[idx]

    y0 = float(ys.abs().mean())
    _loop(ctx, model, opt, loader(), 260, F.mse_loss)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean", _mean(ls[-20:]) > 5.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the cached targets grew over 3x", float(ys.abs().mean()) > 3.0 * y0)


PEAT_FACTOR = 1.04


# -- handbells: the cosine head's scale typed 1000 for 10 -----------------------------------------


class CosineHead(nn.Module):
    """Cosine-similarity classifier head: scale * normalise(x) . normalise(w)."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, x):
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


class BellNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=8, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="handbell_choir_chord_cosine_head_classifier",
    optimizer="SGD momentum",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU net (fc1, act1, fc2, act2) with a cosine-similarity head (head: scale * cos(feature, class weight)) naming which of eight handbell chords a ringer's sixteen strike readings belong to, SGD with momentum 0.9 at 0.05, cross-entropy, 200 steps. The head's scale was typed 1000 for 10: a cosine gap of 0.1 between classes already makes a logit gap of 100, so the float32 softmax gives the top class exactly 1.0: over half the rows' target probability rounds to exactly 1.0 in the last 50 steps, and the gradient of those rows is exactly zero. The loss stays finite.",
)
def h347_handbell_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(34710)
    model = BellNet(scale=1000.0)  # meant 10.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 34710),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 in the last 50 steps",
        _mean(collapsed[-50:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sugarbush: the resumed accumulation counter divides the loss by 1e-4 -------------------------

SAP_ONSET = 100


@scenario(
    family="sugarbush_sap_run_grade_relu_classifier",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAP_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading a sugarbush's day of sap run into five classes from twelve readings (night frost, day thaw, tap count, sap sugar), Adam at 1e-3, cross-entropy, 260 steps. At step 100 the job resumes from a checkpoint whose micro-step counter was saved as 0, and the loss is divided by max(counter, 1e-4) for that step: the clean batch's gradient is 1e4x the usual. Adam's second moment (beta2 0.999) fills with it, and for the next hundred-odd steps the median per-weight update on ordinary gradients is under a tenth of what it was before the resume; the loss stops improving and drifts up.",
)
def h347_sugarbush_resume_counter_zero(ctx: Context) -> None:
    gen = seeded(34711)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    snap = {}
    upd = []

    def before(step):
        snap["w"] = _flat(model)

    def after(step):
        upd.append(float((_flat(model) - snap["w"]).abs().median()))

    def backprop(step, loss):
        counter = 0 if step == SAP_ONSET else 1
        return loss / max(counter, 1e-4)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 34711, spread=1.8),
        260,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
        backprop=backprop,
    )
    gn = ctx.grad_norms
    k = SAP_ONSET
    ctx.check(
        "the onset gradient is over 1000x the median of the 20 before",
        gn[k] > 1000 * _median(gn[k - 20 : k]),
    )
    ctx.check(
        "the median update 20-100 steps later is under a tenth of the 40 steps before",
        _median(upd[k + 20 : k + 100]) < 0.1 * _median(upd[k - 40 : k]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kettledrums: a Conv1d strike classifier under OneCycleLR (control) ---------------------------


class TimpaniNet(nn.Module):
    def __init__(self, classes=6, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _strikes(gen, batch, classes=6, length=64):
    """Decaying drum tones: the class sets the pitch; phase, decay and noise vary."""
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 3.0 + 2.5 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = 1.0 + 3.0 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freq[:, None] * t + phase) * torch.exp(-decay * t)
        yield x + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="timpani_pedal_pitch_strike_relu_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written Conv1d classifier (conv1, act1, conv2 with stride 2, act2, mean pool, head) naming which of six pedal pitches a timpani strike was tuned to from a 64-sample decaying tone with random phase, decay and noise, SGD with Nesterov momentum 0.9 under OneCycleLR (max_lr 0.1, 200 steps), cross-entropy with label smoothing 0.1, gradient clipping at 2.0. A control: the loss falls.",
)
def h347_timpani_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(34712)
    model = TimpaniNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.004, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, _strikes(gen, 64), 200, loss_fn, classifier=True, clip=2.0, sched=sched)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))


# -- hot-air balloon: fp16 autocast, GradScaler, RAdam, ReduceLROnPlateau (control) ---------------


@scenario(
    family="hot_air_balloon_burner_climb_fp16_bce_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting whether a hot-air balloon climbs after a burner burst from ten standardised readings (envelope temperature, load, ambient temperature, burn length), under fp16 autocast with a torch.amp.GradScaler, RAdam at 3e-3 with weight decay 1e-4, BCE with logits, ReduceLROnPlateau on a held-out batch's loss, 200 steps. A control: the loss falls and stays finite.",
)
def h347_hot_air_balloon_fp16_radam_control(ctx: Context) -> None:
    gen = seeded(34713)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def flights():
        for x, y in _readings(gen, 64, 10, 34713):
            yield x, (y > 0).float()

    batches = flights()
    vx, vy = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.binary_cross_entropy_with_logits,
        classifier=False,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))
