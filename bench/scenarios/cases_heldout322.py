"""Held-out set 322 (``h322_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a sailmaker boltrope-seam Huber regressor whose curriculum loss-weight table
is read one row off for one step (one gradient burst), a handbell hum-level regressor whose
hand-written decibel layer takes log10 of an unclamped amplitude (log of a negative, NaN), a
coracle paddle-stroke regressor whose layer-wise lr decay is typed 0.01 for 0.9 (lower layers
nearly frozen), a fencing blade-parry nearest-prototype classifier whose distance temperature is typed
0.01 for 10 (softmax saturates), a canal-barge tow-rope Elman RNN whose recurrent matrix is
initialised at gain 2.5 (gradients grow through time, clipped), a blacksmith anvil-rebound ReLU regressor
fed one shard logged in millimetres (one corrupted batch), a salt-marsh creek accretion SiLU
regressor whose hand-written decoupled weight decay has its sign flipped (slow climb of the loss),
a bobsleigh push-start ReLU classifier whose hidden biases were filled with -2.5 by an init helper
meant for a gate layer (ReLUs dead), a beekeeper queen-cell multi-label GELU classifier whose
hand-written label smoothing has its sign flipped (BCE targets 1.05 and -0.05, head logits grow
without bound), a hot-spring
geyser interval regressor that backpropagates a summed validation loss once (Adam's second moment
poisoned), and three controls (a harpsichord buff-stop tanh MLP on Adam at a small rate for many
steps, a longbow draw-curve Conv1d regressor on AdamW with OneCycleLR and clipping, an
ice-climbing screw-hold Poisson NLL net on RMSprop with accumulation, fp16 autocast and a
GradScaler, and ReduceLROnPlateau).

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
    dead_fraction,
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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative change of each named parameter since ``before``."""
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


def _train(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches,
    steps: int,
    loss_fn,
    *,
    classifier: bool = False,
    alter=None,
    weight=None,
    watch=None,
    after=None,
    clip: float | None = None,
    sched=None,
    scaler=None,
    amp: bool = False,
    accumulate: int = 1,
) -> int:
    """The file's loop. ``alter(step, x, y)`` changes a batch, ``weight(step, out, y, loss)``
    returns the micro-batch loss actually backpropagated (before the division for accumulation),
    ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the optimizer
    step. Stops after a non-finite loss (once ``ctx.step`` has seen it); returns that step."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
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
            total = weight(step, out, y, loss) if weight is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised instrument readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.9, sep=1.2):
    """Readings scattered around one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head (act chosen per family)."""

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


# -- sailmaker: the curriculum loss-weight table read one row off for one step -------------------


@scenario(
    family="sailmaker_boltrope_seam_huber_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="seam-strength Huber regressor trained with a per-epoch loss-weight table (curriculum "
    "over seam kinds); at step 120 an off-by-one reads the row that still holds the raw "
    "newton-scale weight 300 instead of 1, for that step only; the batch itself is ordinary; "
    "gradient norm over 50x its median, clipped at 1, the run carries on",
)
def h322_sailmaker_boltrope_seam_weight_row_off_by_one(ctx: Context) -> None:
    gen = seeded(3221)
    model = Net(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    seen = {}

    def weight(step, out, y, loss):
        if step == 120:
            seen["batch_loss"] = float(loss.detach())
            return 300.0 * loss
        return loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 32210),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        weight=weight,
        clip=1.0,
    )
    g = ctx.grad_norms
    before = _median(g[90:120])
    ctx.check("gradient norm at step 120 over 50x its median", g[120] > 50 * before)
    ctx.check(
        "the batch at step 120 is ordinary (loss under 3x the median loss)",
        seen["batch_loss"] < 3 * _median(ctx.losses[90:120]),
    )
    ctx.check("gradient back near its median afterwards", _median(g[130:160]) < 3 * before)
    ctx.check("run stays finite", _finite(ctx.losses))


# -- handbell: log10 of an unclamped amplitude in a hand-written decibel layer -------------------


class ToDecibel(nn.Module):
    """Hand-written: sound level in dB from a linear amplitude (the clamp was left out)."""

    def __init__(self):
        super().__init__()
        self.lowest = 1.0

    def forward(self, amp):
        self.lowest = float(amp.detach().min())
        return 20.0 * torch.log10(amp)


class HumLevel(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.amp = nn.Linear(hidden, 1)
        self.to_db = ToDecibel()
        nn.init.normal_(self.amp.weight, std=0.01)
        nn.init.constant_(self.amp.bias, 0.5)

    def forward(self, x):
        return self.to_db(self.amp(self.act1(self.fc1(x)))).squeeze(-1) / 10.0


def _hum(gen, batch, d_in, seed):
    """Bell mass, clapper weight, strike speed ...; hum level in dB/10 (quiet bells near -4)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        amp = torch.exp(-2.5 + 1.6 * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, 2.0 * torch.log10(amp) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="handbell_hum_decay_time_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("to_db",),
    diverges=139,
    heldout=True,
    note="hum-level regressor whose hand-written decibel layer computes 20*log10(amp) on the "
    "linear amplitude head with no clamp; quiet bells pull the amplitude towards 0, one step "
    "overshoots it below 0 and log10 of a negative gives NaN",
)
def h322_handbell_hum_decibel_log_of_negative(ctx: Context) -> None:
    gen = seeded(3222)
    model = HumLevel(8)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    lows: list[float] = []

    def watch(step, out, x, y):
        lows.append(model.to_db.lowest)

    stop = _train(ctx, model, opt, _hum(gen, 32, 8, 32220), 200, F.mse_loss, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss is NaN at the stop step", bad is not None and bad == stop)
    ctx.check(
        "the amplitude fed to log10 is negative at the NaN step", bad is not None and lows[bad] < 0
    )
    ctx.check(
        "the amplitude was positive and the loss finite for the first 20 steps",
        min(lows[:20]) > 0 and _finite(ctx.losses[:20]),
    )


# -- coracle: layer-wise lr decay typed 0.01 for 0.9 ---------------------------------------------


class PaddleNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x))))))
        return self.head(h).squeeze(-1)


@scenario(
    family="coracle_paddle_stroke_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="paddle-stroke thrust regressor with layer-wise lr decay, one param group per layer at "
    "base * decay**depth; decay typed 0.01 for 0.9, so fc1 trains at 1e-6 and fc2 at 1e-4 of "
    "the base rate: fc1 moves under 1e-4 and fc2 under 1e-2 of their norm while the head moves over "
    "5%; the loss still falls",
)
def h322_coracle_paddle_llrd_typo(ctx: Context) -> None:
    gen = seeded(3223)
    model = PaddleNet(12)
    base, decay = 0.05, 0.01
    layers = [model.head, model.fc3, model.fc2, model.fc1]
    groups = [{"params": m.parameters(), "lr": base * decay**i} for i, m in enumerate(layers)]
    opt = torch.optim.Adagrad(groups, lr=base)
    start = _snapshot(model)
    _train(ctx, model, opt, _readings(gen, 64, 12, 32230), 180, F.mse_loss)
    mv = _moves(model, start)
    ctx.check("fc1.weight moved under 1e-4 of its norm", mv["fc1.weight"] < 1e-4)
    ctx.check("fc2.weight moved under 1e-2 of its norm", mv["fc2.weight"] < 1e-2)
    ctx.check("head.weight moved over 5% of its norm", mv["head.weight"] > 0.05)
    ctx.check("run stays finite", _finite(ctx.losses))


# -- fencing: nearest-prototype classifier with a temperature typed 0.01 for 10 -------------------


class PrototypeHead(nn.Module):
    """Learnable class prototypes; logits are negative squared distances over a temperature."""

    def __init__(self, dim, classes, temperature):
        super().__init__()
        self.prototypes = nn.Parameter(0.5 * torch.randn(classes, dim))
        self.temperature = temperature

    def forward(self, z):
        d2 = (z[:, None, :] - self.prototypes[None]).pow(2).sum(-1)
        return -d2 / self.temperature


class ParryNet(nn.Module):
    def __init__(self, d_in, dim, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.embed = nn.Linear(64, dim)
        self.head = PrototypeHead(dim, classes, temperature)

    def forward(self, x):
        return self.head(self.embed(self.act1(self.fc1(x))))


@scenario(
    family="fencing_blade_parry_prototype_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="blade-parry (prime..octave) nearest-prototype classifier with learnable prototypes; "
    "the distance temperature is typed 0.01 for 10, so the squared distances are scaled 1000x "
    "too much: from the first steps most rows' softmax holds an exact 1.0 in float32 (wrong at "
    "first), later over a third of rows give their target exactly 1.0",
)
def h322_fencing_parry_prototype_temperature_typo(ctx: Context) -> None:
    gen = seeded(3224)
    model = ParryNet(16, 8, 8, temperature=0.01)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fracs: list[float] = []
    saturated: list[float] = []

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))
        p = torch.softmax(out.detach(), -1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 8, 32240),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a third of rows' softmax exactly 1.0 (median)", _median(fracs) > 1 / 3)
    ctx.check(
        "over half the rows have some probability exactly 1.0 in the first 10 steps",
        _mean(saturated[:10]) > 0.5,
    )
    ctx.check("run stays finite", _finite(ctx.losses))


# -- canal barge: Elman RNN recurrent matrix at gain 2.5 -----------------------------------------


class TowRope(nn.Module):
    """Hand-written Elman RNN over a tow-rope tension trace; predicts the barge's drift."""

    def __init__(self, d_in=3, hidden=48, gain=2.5):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tow(gen, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        decay = torch.exp(-0.15 * torch.arange(length, 0, -1).float())
        y = torch.tanh((x @ w * decay).sum(1))
        yield x, y


@scenario(
    family="canal_barge_tow_rope_rnn",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="hand-written Elman RNN over a 30-step tow-rope tension trace; the recurrent matrix is "
    "initialised orthogonal at gain 2.5 (copied from a feed-forward recipe's gain), so the "
    "backward signal grows through time: the gradient at the first state is over 50x the last "
    "all run long; clipping at 1 keeps the loss from blowing up, and it barely learns",
)
def h322_canal_barge_recurrent_gain(ctx: Context) -> None:
    gen = seeded(3225)
    model = TowRope()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    ratios: list[float] = []

    def after(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-12)))

    _train(ctx, model, opt, _tow(gen, 32, 30, 32250), 100, F.mse_loss, after=after, clip=1.0)
    ctx.check("gradient at the first state over 50x the last (median)", _median(ratios) > 50)
    ctx.check("gradient norm over 10 at the start", _median(ctx.grad_norms[:10]) > 10)


# -- blacksmith: one shard logged in millimetres -------------------------------------------------


@scenario(
    family="blacksmith_anvil_rebound_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="anvil ball-rebound height regressor; the shard read at step 100 came from a bench "
    "rig that logs rebound in millimetres, not metres: targets 1000x; loss over 1000x, "
    "clipped at 1, the run recovers",
)
def h322_blacksmith_anvil_rebound_millimetre_shard(ctx: Context) -> None:
    gen = seeded(3226)
    model = Net(9, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, 32260),
        180,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    before = _median(ls[80:100])
    ctx.check("loss at step 100 over 1000x its median", ls[100] > 1000 * before)
    ctx.check("loss back under 2x its old median by the end", _mean(ls[-10:]) < 2 * before)
    ctx.check("run stays finite", _finite(ls))


# -- salt marsh: hand-written decoupled weight decay with its sign flipped -----------------------


@scenario(
    family="salt_marsh_creek_accretion_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="creek-bank accretion regressor with hand-written decoupled weight decay after each "
    "NAdam step; the decay multiplies by (1 + lr*wd) instead of (1 - lr*wd), so the weights "
    "grow a little every step and the loss climbs slowly to over 3x its low",
)
def h322_salt_marsh_accretion_decay_sign(ctx: Context) -> None:
    gen = seeded(3227)
    model = Net(10, 64, act=nn.SiLU)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 64, 10, 32270), 260, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ctx.check("loss climbs to over 3x its low by the end", _mean(ls[-10:]) > 3 * low)
    windows = [_mean(ls[i : i + 25]) for i in range(160, 260, 25)]
    ctx.check(
        "climb is steady (each of the last four 25-step windows above the one before)",
        all(b > a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check("weight norm more than doubled", norm1 > 2 * norm0)
    ctx.check("run stays finite", _finite(ls))


# -- bobsleigh: hidden biases filled with -2.5 by a gate-init helper -----------------------------


@scenario(
    family="bobsleigh_push_start_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="push-start grade classifier; an init helper meant to close a gate layer fills every "
    "bias of modules named fc2 with -2.5, so most of fc2's ReLUs never fire, get no gradient and "
    "stay dead; the loss stalls far above the healthy run's",
)
def h322_bobsleigh_push_start_dead_relus(ctx: Context) -> None:
    gen = seeded(3228)
    model = Net(14, 64, out=5)
    nn.init.constant_(model.fc2.bias, -2.5)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    fracs: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            fracs.append(dead_fraction(model.fc2(model.act1(model.fc1(x)))))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 14, 5, 32280),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over 80% of fc2's units dead at the end", _mean(fracs[-10:]) > 0.8)
    ctx.check("no dead unit came back (share did not fall)", fracs[-1] >= fracs[0] - 0.05)
    ctx.check("run stays finite", _finite(ctx.losses))


# -- beekeeper: a label-smoothing sign bug puts BCE targets outside [0, 1] ----------------------


def _cells(gen, batch, d_in, flags, seed):
    """Inspection readings and multi-label flags (capped, open, emergency, supersedure, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, flags, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w / math.sqrt(d_in) > 0.2).float()


@scenario(
    family="beekeeper_queen_cell_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="multi-label queen-cell flag classifier (BCE with logits); the hand-written label "
    "smoothing is y + eps*(y - 0.5) instead of y + eps*(0.5 - y), so targets are 1.05 and "
    "-0.05: no finite logit is optimal, the gradient never vanishes and the head's logits grow "
    "without bound (largest over 20x, still growing; the loss falls below 0 and keeps falling)",
)
def h322_beekeeper_queen_cell_smoothing_sign(ctx: Context) -> None:
    gen = seeded(3229)
    model = Net(12, 64, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    eps = 0.1
    peaks: list[float] = []

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, y + eps * (y - 0.5))

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _train(ctx, model, opt, _cells(gen, 64, 12, 6, 32290), 240, loss_fn, watch=watch)
    ctx.check("head's largest logit grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check("still growing in the last third", _mean(peaks[-10:]) > 1.3 * _mean(peaks[150:160]))
    ctx.check("loss fell below 0 (targets outside [0, 1])", _mean(ctx.losses[-10:]) < 0)
    ctx.check("run stays finite", _finite(ctx.losses))


# -- hot spring: a summed validation loss backpropagated once ------------------------------------


@scenario(
    family="hot_spring_geyser_interval_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="geyser eruption-interval regressor; at step 80 the evaluation hook computes the "
    "validation loss as a sum over 100000 rows without no_grad and the training step's "
    "backward picks it up: one gradient about 1e4x, Adam's second moment (beta2 0.999) is "
    "filled, the median per-weight update afterwards is under 1/20 of before and the loss stalls",
)
def h322_hot_spring_geyser_eval_sum_backprop(ctx: Context) -> None:
    gen = seeded(32211)
    model = Net(10, 64, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    valid_x, valid_y = next(_readings(torch.Generator().manual_seed(5), 100000, 10, 32211))
    moves: list[float] = []
    prev = {"p": _snapshot(model)}

    def weight(step, out, y, loss):
        if step == 80:
            return loss + F.mse_loss(model(valid_x), valid_y, reduction="sum")
        return loss

    def after(step):
        now = _snapshot(model)
        moves.append(
            float(torch.cat([(now[n] - prev["p"][n]).flatten() for n in now]).abs().median())
        )
        prev["p"] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 32211),
        220,
        F.mse_loss,
        weight=weight,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 80 over 1000x its median", g[80] > 1000 * _median(g[60:80]))
    ctx.check(
        "median per-weight update in steps 120-220 under 1/20 of steps 60-80",
        _mean(moves[120:220]) < _mean(moves[60:80]) / 20,
    )
    ctx.check(
        "loss stalls (last 10 at least 0.9x steps 85-95)", _mean(ls[-10:]) > 0.9 * _mean(ls[85:95])
    )
    ctx.check("run stays finite", _finite(ls))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="harpsichord_buff_stop_small_lr_mlp",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="buff-stop damping regressor, tanh MLP on Adam at lr 2e-4 for 300 steps (control)",
)
def h322_harpsichord_buff_stop_small_lr_adam(ctx: Context) -> None:
    gen = seeded(32212)
    model = Net(10, 64, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    _train(ctx, model, opt, _readings(gen, 64, 10, 32212), 300, F.mse_loss)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.7))


class DrawCurve(nn.Module):
    """Conv1d over a bow's force-draw curve; predicts the draw weight at full draw."""

    def __init__(self, channels=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(channels, 1)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1)).squeeze(-1)


def _draws(gen, batch, length):
    t = torch.linspace(0, 1, length)
    while True:
        stiff = 0.5 + torch.rand(batch, 1, generator=gen)
        stack = torch.rand(batch, 1, generator=gen)
        curve = (
            stiff * t + 0.6 * stack * t.pow(3) + 0.05 * torch.randn(batch, length, generator=gen)
        )
        yield curve, (stiff + 0.6 * stack).squeeze(-1) + 0.02 * torch.randn(batch, generator=gen)


@scenario(
    family="longbow_draw_weight_conv1d_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="longbow draw-weight Conv1d regressor on AdamW, OneCycleLR, Huber loss, clipping at 1 "
    "(control)",
)
def h322_longbow_draw_curve_onecycle(ctx: Context) -> None:
    gen = seeded(32213)
    model = DrawCurve()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _draws(gen, 32, 32),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=0.3),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.5))


def _holds(gen, batch, d_in, seed):
    """Ice quality, screw length, angle ...; count of load cycles held (Poisson)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.0 + 0.8 * torch.tanh(x @ w / math.sqrt(d_in)))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="ice_climbing_screw_hold_poisson_net",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="ice-screw hold-count Poisson NLL net on RMSprop, accumulation over 2, fp16 autocast "
    "with a GradScaler, ReduceLROnPlateau, clipping (control)",
)
def h322_ice_climbing_screw_hold_amp(ctx: Context) -> None:
    gen = seeded(32214)
    model = Net(8, 48, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _holds(gen, 32, 8, 32214),
        150,
        lambda o, y: F.poisson_nll_loss(o, y, log_input=True),
        clip=2.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.8))
    ctx.check("scaler did not keep skipping (scale above 1)", min(ctx.scales) > 1.0)
