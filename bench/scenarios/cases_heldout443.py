"""Held-out set 443 (``h443_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a snowshoe-race split-time ReLU regressor whose hand-written L2 penalty has its sign
flipped (a slow climb), a flint-knapping flake-length deep tanh MLP initialised with gain 5 typed
for 5/3 (gradients grow back through depth), a tar-barrel-race carry-time regressor whose job
restart reloads the weights saved at step 10 (a one-off loss spike it recovers from), a
hail-stone growth regressor whose one debug step backpropagates the loss times 1e5 (Adam's second
moment is filled and the updates stall), a timpani head-tension regressor whose window
normalisation divides by sqrt(E[x^2] - E[x]^2) (0/0 on a dropped-out microphone window), an
oarlock pin-load Huber regressor fed one shard in newtons for kilonewtons (one corrupted batch), a
luthier fret-scale two-group regressor whose head group's lr is typed 2e-9 for 2e-3 (a frozen
head), a yodel register-break classifier whose temperature is typed 0.002 for 2.0 (softmax
saturates), a chimney-sweep soot-grade classifier whose soft-target cross-entropy forgot the
log_softmax (the head's logits grow without bound) and a kiteboard pop-height regressor whose
valid-row count is kept in a uint8 that wraps to 0 on a 256-row batch (one gradient burst).

Controls: a glacier meltwater-stage hand-written GRU cell unrolled over 40 sensor readings
(per-step regression, orthogonal recurrent init, Adamax, clipping), a morris stick-clash fp16
Conv1d classifier (GradScaler, AdamW under OneCycleLR, label smoothing, clipping) and a wax-seal
impression tied-weight autoencoder (Adam under ReduceLROnPlateau, accumulation over 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


def _rel_moves(model, before):
    return {n: _rel_change(before[n], p) for n, p in model.named_parameters() if n in before}


class _GRUCell(nn.Module):
    """A GRU cell written by hand: r, z gates and a candidate state."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(d_in, 3 * hidden)
        self.uh = nn.Linear(hidden, 3 * hidden, bias=False)

    def forward(self, x, h):
        xr, xz, xn = self.wx(x).chunk(3, -1)
        ur, uz, un = self.uh.weight.chunk(3, 0)
        r = torch.sigmoid(xr + h @ ur.T)
        z = torch.sigmoid(xz + h @ uz.T)
        n = torch.tanh(xn + (r * h) @ un.T)
        return (1 - z) * n + z * h


class _MeltwaterGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.cell = _GRUCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        for block in self.cell.uh.weight.data.chunk(3, 0):
            nn.init.orthogonal_(block)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.cell.hidden)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            outs.append(self.head(h))
        return torch.cat(outs, 1)


def _meltwater(gen, batch, steps=40):
    """Air temperature, sun, rain and wind over 40 readings; the stage responds with a lag."""
    while True:
        x = torch.randn(batch, steps, 4, generator=gen)
        x[:, :, 0] = torch.cumsum(0.3 * x[:, :, 0], 1) / 2
        y = torch.zeros(batch, steps)
        s = torch.zeros(batch)
        for t in range(steps):
            s = 0.8 * s + 0.25 * torch.relu(x[:, t, 0]) + 0.15 * x[:, t, 2] + 0.05 * x[:, t, 1]
            y[:, t] = s
        yield x, y + 0.02 * torch.randn(batch, steps, generator=gen)


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, act=nn.Tanh):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.act = act()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x).squeeze(-1)


class _WindowNorm(nn.Module):
    """Per-window standardisation, written by hand with the one-pass variance."""

    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - m * m
        return (x - m) / torch.sqrt(var)


class _Timpani(nn.Module):
    def __init__(self, length=32, hidden=48):
        super().__init__()
        self.norm = _WindowNorm()
        self.fc1 = nn.Linear(length, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.norm(x)))).squeeze(-1)


def _timpani_windows(gen, batch, length=32):
    t = torch.arange(length).float()
    while True:
        tension = torch.rand(batch, generator=gen)
        freq = 0.15 + 0.35 * tension
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.2 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(freq[:, None] * t + phase) + 0.05 * torch.randn(
            batch, length, generator=gen
        )
        yield x, 2.0 * tension - 1.0


class _Temperature(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def logits(self, x):
        return self.head(self.act(self.fc1(x)))

    def forward(self, x):
        return self.logits(x) / self.temperature


class _StickClash(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool1d(x, 2)
        x = F.relu(self.conv2(x))
        return self.head(x.mean(-1))


def _clashes(gen, batch, classes=4, length=48):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        centre = 8 + 8 * y.float() + 3 * torch.randn(batch, generator=gen)
        pulse = torch.exp(-0.5 * ((t - centre[:, None]) / (1.5 + 0.5 * y[:, None])) ** 2)
        x = 0.3 * torch.randn(batch, 3, length, generator=gen)
        x[:, 0] += 2 * pulse
        x[:, 1] += pulse * (y[:, None] % 2).float()
        yield x, y


class _TiedAE(nn.Module):
    def __init__(self, d_in=24, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _impressions(gen, batch, d_in=24, code=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        z = torch.randn(batch, code, generator=gen)
        x = torch.tanh(z) @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


# -- faults ----------------------------------------------------------------------------------------


SNOW_WD = 0.3
CHIMNEY_LR = 1.5e-3


@scenario(
    family="snowshoe_race_split_neg_l2_relu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowshoe-race split-time regressor (ReLU MLP on course and snow features, MSE, "
    "RMSprop). The hand-written L2 penalty is subtracted instead of added (loss - wd * sum w^2, a "
    "sign typo): the loss falls at first, then the weights grow and the loss climbs slowly "
    "through the rest of the run, with no spike, no NaN and no single bad step.",
)
def h443_snowshoe_race_negative_l2(ctx) -> None:
    gen = seeded(4431)
    model = _Net(10, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    start = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def backprop(step, loss):
        return loss - SNOW_WD * sum((p * p).sum() for p in model.parameters())

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=431), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    end = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    low = min(ls)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check("the lowest loss comes in the first half", ls.index(low) < 150)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))
    ctx.check("weight norm over 2x its start", end > 2 * start)


FLINT_GAIN = 5.0


@scenario(
    family="flintknap_flake_length_deep_tanh_mlp",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Flint-knapping flake-length regressor (10-layer tanh MLP on striking-platform "
    "features, MSE, Adam). The init helper is called with gain=5.0 typed for 5/3 (tanh's "
    "calculate_gain): the stack starts in tanh's chaotic regime and the gradient grows layer by "
    "layer back towards the input, layers.0's weight gradient many times the last hidden "
    "layer's.",
)
def h443_flintknap_init_gain(ctx) -> None:
    def build(gain):
        torch.manual_seed(4432)
        m = _Deep(12, 64, 10)
        for layer in m.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        return m

    def ratio(m, x, y):
        m.zero_grad()
        F.mse_loss(m(x), y).backward()
        first = float(m.layers[0].weight.grad.norm())
        last = float(m.layers[-1].weight.grad.norm())
        m.zero_grad()
        return first / last

    gen = seeded(4432)
    data = _readings(gen, 64, 12, seed=432)
    x0, y0 = next(data)
    good = ratio(build(5.0 / 3.0), x0, y0)
    model = build(FLINT_GAIN)
    bad = ratio(model, x0, y0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _loop(ctx, model, opt, data, 120, F.mse_loss)
    ctx.check("layers.0's gradient over 20x the last hidden layer's at gain 5", bad > 20)
    ctx.check("under 5x at gain 5/3 on the same batch", good < 5)
    ctx.check("finite", _finite(ctx.losses))


TAR_RESTORE = 120


@scenario(
    family="tar_barrel_race_carry_time_stale_restore_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TAR_RESTORE,
    note="Tar-barrel-race carry-time regressor (GELU MLP, MSE, NAdam). A pre-empted job restarts "
    "at step 120 and its 'latest' checkpoint link still points at the weights saved at step 10 "
    "(the optimizer state and the data stream carry on): the loss jumps back to its early level "
    "and the run works its way back over the next 80 steps; no gradient, data or "
    "curvature fault.",
)
def h443_tar_barrel_stale_restore(ctx) -> None:
    gen = seeded(4433)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    saved = {}

    def after(step):
        if step == 10:
            saved.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    def before(step):
        if step == TAR_RESTORE:
            model.load_state_dict(saved)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=433),
        220,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    pre = _median(ls[100:TAR_RESTORE])
    ctx.check("loss at 120 over 3x the median of 100..119", ls[TAR_RESTORE] > 3 * pre)
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[100:TAR_RESTORE]))
    ctx.check(
        "back under 2x within 80 steps", min(ls[TAR_RESTORE + 1 : TAR_RESTORE + 80]) < 2 * pre
    )
    ctx.check("finite", _finite(ls))


HAIL_ONSET = 50


@scenario(
    family="hail_stone_growth_adamw_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=HAIL_ONSET,
    note="Hail-stone growth regressor (GELU MLP on updraft and supercooled-water features, MSE, "
    "AdamW betas (0.9, 0.999)). A unit-conversion debug branch left on for step 50 backpropagates "
    "the loss times 1e5 (diameters squared in mm^2 for cm^2 of the loss, the data unchanged): one "
    "gradient 1e5x fills AdamW's second moment and afterwards the updates are a small fraction "
    "of before; the loss stops falling.",
)
def h443_hail_stone_debug_loss_scale(ctx) -> None:
    def run(attach):
        gen = seeded(4434)
        model = _Net(10, 64, 1, act=nn.GELU)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01)
        moves = []
        state = {}

        def before(step):
            state["w"] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            num = sum(
                float((p.detach() - w).norm() ** 2)
                for p, w in zip(model.parameters(), state["w"], strict=True)
            )
            moves.append(math.sqrt(num))

        def backprop(step, loss):
            return loss * (1e5 if attach and step == HAIL_ONSET else 1.0)

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=434),
            240,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        v = sum(float(opt.state[p]["exp_avg_sq"].sum()) for p in model.parameters())
        return losses, moves, v

    ref_losses, _, ref_v = run(False)
    ls, moves, v = run(True)
    gn = ctx.grad_norms
    ctx.check("gradient at 50 over 1e4x the median before", gn[HAIL_ONSET] > 1e4 * _median(gn[:50]))
    ctx.check("second moment at the end over 1e4x the reference's", v > 1e4 * ref_v)
    ctx.check(
        "updates after 70 under 1/10 of those before 50",
        _median(moves[70:]) < 0.1 * _median(moves[20:HAIL_ONSET]),
    )
    ctx.check(
        "loss stalls over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref_losses[-20:])
    )
    ctx.check("finite", _finite(ls))


TIMPANI_DROP = 90


@scenario(
    family="timpani_head_tension_window_norm_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("norm",),
    diverges=TIMPANI_DROP,
    heldout=True,
    onset=TIMPANI_DROP,
    note="Timpani head-tension regressor (per-window standardisation, SiLU MLP, MSE, Adadelta) "
    "on 32-sample contact-microphone windows. The hand-written window norm divides by "
    "sqrt(E[x^2] - E[x]^2) with no epsilon: at step 90 the microphone drops out and one window "
    "reads all zeros, the norm computes 0/0, and the loss is NaN at that step.",
)
def h443_timpani_window_zero_var(ctx) -> None:
    gen = seeded(4435)
    model = _Timpani()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    seen = {}

    def alter(step, x, y):
        if step == TIMPANI_DROP:
            x = x.clone()
            x[7] = 0.0  # the microphone cable drops out for one window
            seen["x"] = x
        return x, y

    _loop(ctx, model, opt, _timpani_windows(gen, 64), 200, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss non-finite first at step 90", _first_bad(ls) == TIMPANI_DROP)
    ctx.check("trained before the dropout", _fell(ls[:TIMPANI_DROP]))
    with torch.no_grad():
        normed = model.norm(seen["x"])
    ctx.check("the norm's output is NaN on the zero window", bool(torch.isnan(normed[7]).all()))
    ctx.check("the zero window's input is finite", bool(torch.isfinite(seen["x"]).all()))


OARLOCK_SHARD = 110


@scenario(
    family="oarlock_pin_load_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OARLOCK_SHARD,
    note="Oarlock pin-load regressor (ReLU MLP on gate-force and oar-angle features, Huber loss, "
    "Adagrad, clipping at 1). One shard at step 110 comes from a logger that wrote the gate "
    "forces in newtons for kilonewtons (inputs 1000x): the loss and the gradient jump for that "
    "batch, clipping bounds the update, and the run recovers.",
)
def h443_oarlock_newton_shard(ctx) -> None:
    gen = seeded(4436)
    model = _Net(9, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == OARLOCK_SHARD:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0  # newtons for kilonewtons
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, seed=436),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    s = OARLOCK_SHARD
    ctx.check("loss at 110 over 50x the median of 90..109", ls[s] > 50 * _median(ls[90:s]))
    ctx.check("gradient at 110 over 20x the median of 90..109", gn[s] > 20 * _median(gn[90:s]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[90:s]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="luthier_fret_scale_two_group_regressor",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Luthier fret-placement error regressor (ReLU MLP on scale-length and string-gauge "
    "features, MSE, SGD Nesterov momentum 0.9 with two param groups). The head group's lr is "
    "typed 2e-9 for 2e-3: the head barely moves for the whole run while the trunk trains; the "
    "loss falls, slowly.",
)
def h443_luthier_head_lr_typo(ctx) -> None:
    gen = seeded(4437)
    model = _Net(8, 48, 1)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [
            {"params": body, "lr": 0.02},
            {"params": model.head.parameters(), "lr": 2e-9},
        ],
        momentum=0.9,
        nesterov=True,
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=437), 200, F.mse_loss)
    moved = _rel_moves(model, start)
    ctx.check("the head's weight moves under 1e-5 of its norm", moved["head.weight"] < 1e-5)
    ctx.check("fc1's weight moves over 5% of its norm", moved["fc1.weight"] > 0.05)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("the loss falls", _fell(ctx.losses, ratio=0.95))


@scenario(
    family="yodel_break_register_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Yodel register-break classifier (ReLU MLP on formant and pitch-jump features, 5 "
    "break types, cross-entropy, RAdam). The softmax temperature is typed 0.002 for 2.0 in the "
    "config (a units slip): the logits are divided by 0.002 and the softmax saturates, most rows' "
    "target probability rounding to exactly 1.0 in float32.",
)
def h443_yodel_temperature_typo(ctx) -> None:
    gen = seeded(4438)
    model = _Temperature(12, 5, temperature=0.002)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 12, 5, seed=438)
    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        raw = model.logits(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0 at temperature 0.002",
        collapsed_fraction(raw / 0.002, y) > 0.5,
    )
    ctx.check(
        "under 5% on the same logits at temperature 2.0", collapsed_fraction(raw / 2.0, y) < 0.05
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="chimney_sweep_flue_soot_soft_target_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Chimney-sweep flue soot-grade classifier (ReLU MLP on brush-resistance features, 4 "
    "grades, SGD momentum 0.9) trained on soft labels with a hand-written cross-entropy that "
    "forgot the log_softmax: -(soft * logits).sum(-1).mean(). Nothing bounds it; the head's "
    "logits grow without limit and the 'loss' goes ever more negative.",
)
def h443_chimney_sweep_missing_log_softmax(ctx) -> None:
    gen = seeded(4439)
    model = _Net(10, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=CHIMNEY_LR, momentum=0.9)
    data = _grades(gen, 64, 10, 4, seed=439)
    x0, _ = next(data)
    peaks = []

    def loss_fn(logits, y):
        soft = F.one_hot(y, 4).float() * 0.9 + 0.025
        return -(soft * logits).sum(-1).mean()

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(x0).abs().max()))

    with torch.no_grad():
        start = float(model(x0).abs().max())
    _loop(ctx, model, opt, data, 150, loss_fn, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check("still growing over the last 50 steps", peaks[-1] > 1.5 * peaks[-50])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


KITE_STEP = 130


@scenario(
    family="kiteboard_pop_height_uint8_count_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KITE_STEP,
    note="Kiteboard pop-height regressor (tanh MLP on kite-line tension and board IMU features, "
    "masked MSE, plain SGD, clipping at 1). The loss is summed over valid rows and divided by a "
    "count kept in a uint8; batches are 64 rows, but the step at 130 merges four micro-batches "
    "into 256 rows and the count wraps to 0 (clamped to 1): that step's gradient is 256x on an "
    "ordinary logged loss; clipping bounds the update and the run recovers.",
)
def h443_kiteboard_uint8_count(ctx) -> None:
    gen = seeded(44310)
    model = _Net(11, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    base = _readings(gen, 64, 11, seed=4310)

    def batches():
        step = 0
        while True:
            if step == KITE_STEP:
                parts = [next(base) for _ in range(4)]
                x = torch.cat([p[0] for p in parts])
                y = torch.cat([p[1] for p in parts])
            else:
                x, y = next(base)
            step += 1
            yield x, y

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    def backprop(step, loss):
        n = 256 if step == KITE_STEP else 64
        count = torch.tensor(n).to(torch.uint8).clamp_min(1).float()  # wraps at 256
        return loss * n / count  # the summed loss over the rows, divided by the count

    _loop(ctx, model, opt, batches(), 220, loss_fn, backprop=backprop, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    s = KITE_STEP
    ctx.check("gradient at 130 over 30x the median of 100..129", gn[s] > 30 * _median(gn[100:s]))
    ctx.check("logged loss at 130 ordinary", ls[s] < 2 * _median(ls[100:s]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[110:s]))
    ctx.check("trained", _fell(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="glacier_meltwater_stage_handwritten_gru_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Glacier meltwater-stage forecaster: a GRU cell written by hand (reset and update "
    "gates, candidate state), unrolled over 40 readings of air temperature, sun, rain and wind, "
    "a per-step regression head on the stage (MSE). Orthogonal init of the recurrent blocks, "
    "Adamax, gradient clipping at 1, a step-decay schedule. Healthy.",
)
def h443_glacier_meltwater_gru(ctx) -> None:
    gen = seeded(44311)
    model = _MeltwaterGRU()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    _loop(ctx, model, opt, _meltwater(gen, 32), 150, F.mse_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the loss fell under half", _fell(ls, ratio=0.5))
    ctx.check("gradient norms stay bounded", max(ctx.grad_norms) < 100 * _median(ctx.grad_norms))


@scenario(
    family="morris_stick_clash_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Morris-dance stick-clash classifier (ReLU Conv1d over 3-axis stick accelerometer "
    "clips, 4 clash figures), fp16 autocast with a GradScaler, AdamW under OneCycleLR, label "
    "smoothing 0.1, clipping at 1. Healthy.",
)
def h443_morris_stick_clash_fp16(ctx) -> None:
    gen = seeded(44312)
    model = _StickClash()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _clashes(gen, 64),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the loss fell under 0.7x", _fell(ls, ratio=0.7))


@scenario(
    family="wax_seal_stamp_impression_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wax-seal stamp impression autoencoder (tanh code, decoder tied to the encoder's "
    "transposed weight, MSE) on depth profiles of pressed seals; Adam under ReduceLROnPlateau, "
    "accumulation over 2, noisy batches. Healthy.",
)
def h443_wax_seal_tied_autoencoder(ctx) -> None:
    gen = seeded(44313)
    model = _TiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    last = {}

    def backprop(step, loss):
        last["loss"] = float(loss.detach())
        return loss

    def plateau():
        return last["loss"]

    _loop(
        ctx,
        model,
        opt,
        _impressions(gen, 32, seed=4313),
        200,
        F.mse_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        backprop=backprop,
    )
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check("the loss fell under half", _fell(ls, ratio=0.5))
