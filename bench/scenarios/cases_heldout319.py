"""Held-out set 319 (``h319_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a wire-drawing die pull-force ReLU regressor whose activity
penalty is typed 3e-2 for 3e-5 (hidden units die one by one over the run), a cheese-rind brining
salt-uptake SiLU regressor fed one batch with salinity in mg/L instead of percent (one corrupted
batch), a snow-cornice overhang Gaussian NLL net whose variance head lost its softplus (log of a
negative variance, NaN), a bell-metal casting weight fp16 regressor that de-normalises into grams
inside autocast (fp16 overflow past 65504), a bongo stroke classifier whose head group's learning
rate is typed 1e-7 (head frozen), a zhaleika breath-trace ReLU recurrent net whose recurrent
weights are initialised at 1.25 x identity (gradients grow through time), a bombarde reed-grade
classifier that divides its logits by a contrastive temperature of 0.01 (softmax saturates), a
tinplate coat-thickness tanh regressor whose hand-written weight decay has its sign flipped (slow
climb of the loss), a net-braiding mesh-tension Huber regressor whose resumed accumulation divisor
is read from an old per-rank multiplier for one step (one gradient burst), a springboard
dive-entry classifier whose z-loss coefficient has its sign flipped (head logits drift up without
bound), and three controls (a gong-forging hammer-note Conv1d classifier on AdamW with warm-up
and linear decay to zero, an ice-dam meltwater affine-coupling normalising flow on Adamax with
ReduceLROnPlateau, a pasta-extrusion die-pressure GRU regressor on RMSprop with OneCycleLR and
accumulation).

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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative change of each named parameter since ``before``."""
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


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
    inspect=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    divisor=None,
    penalty=None,
    stop_at_nonfinite=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``divisor(step)`` is what each
    micro-batch loss is divided by (``accumulate`` unless a bug says otherwise),
    ``penalty(step, out)`` is an auxiliary term backpropagated but not logged,
    ``inspect(step)`` sees the gradients before the optimizer step, ``after(step)`` runs after
    it. Stops after a non-finite loss unless told not to; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        div = divisor(step) if divisor is not None else accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if watch is not None:
                watch(step, out, x, y)
            loss = loss_fn(out.float(), y)
            total = loss / div
            if penalty is not None:
                total = total + penalty(step, out.float()) / div
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if stop_at_nonfinite and not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised shop-floor readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.4 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def hidden(self, x):
        a1 = self.act1(self.fc1(x))
        return a1, self.act2(self.fc2(a1))

    def forward(self, x):
        out = self.head(self.hidden(x)[1])
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- wire drawing: the activity penalty typed 3e-2 for 3e-5 --------------------------------------


class DieNet(Net):
    """A ReLU trunk that keeps its last hidden activations for the activity penalty."""

    def forward(self, x):
        a1, a2 = self.hidden(x)
        self.last = (a1, a2)
        return self.head(a2).squeeze(-1)


PENALTY_WIRE = 3e-2


@scenario(
    family="wire_drawing_die_pull_force_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act1", "act2", "fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the pull force on a wire-drawing die from 8 standardised readings (reduction ratio, drawing speed, lubricant temperature, wire hardness...), Adam at 3e-3, MSE plus an L1 activity penalty on both hidden layers meant to keep the features sparse, 300 steps. The penalty's coefficient was typed 3e-2 for 3e-5: every step it pushes each unit's pre-activations down, and one after another the hidden units fall below zero for every input, stop receiving gradient and never come back; the dead share of the hidden units climbs gradually over the run instead of at once, and the net keeps fitting with an ever smaller share of its units.",
)
def h319_wire_drawing_activity_penalty(ctx: Context) -> None:
    gen = seeded(31901)
    model = DieNet(8, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    dead = []

    def loss_fn(out, y):
        a1, a2 = model.last
        l1 = a1.abs().sum(1).mean() + a2.abs().sum(1).mean()
        return F.mse_loss(out, y) + PENALTY_WIRE * l1

    def watch(step, out, x, y):
        a1, a2 = model.last
        both = torch.cat([a1.detach(), a2.detach()], 1)
        dead.append(float((both <= 0).all(0).float().mean()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=401), 300, loss_fn, watch=watch)
    early, mid, late = _mean(dead[:10]), _mean(dead[140:160]), _mean(dead[-10:])
    ctx.check("under 15% of hidden units dead over the first 10 steps", early < 0.15)
    ctx.check("over half of the hidden units dead at the end", late > 0.5)
    ctx.check("the dead share at mid-run lies clearly between", early + 0.1 < mid < late - 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cheese rind: one batch with the salinity column in mg/L -------------------------------------

ONSET_CHE = 120


@scenario(
    family="cheese_rind_brining_salt_uptake_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CHE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the salt taken up by a cheese wheel's rind in a brine bath from 7 standardised readings (brine salinity, bath temperature, wheel weight, hours...), plain SGD at 5e-2, MSE, gradient clipping at 1.0, 240 steps. The batch at step 120 comes from a second dairy's shard whose brine-salinity column was logged in mg/L instead of percent and was never standardised (the shard was marked as pre-processed): that column reads about 2e5 instead of about 0. The loss on that one batch is enormous and its gradient bursts; clipping bounds the step and the run recovers on the clean batches after it.",
)
def h319_cheese_rind_salinity_units(ctx: Context) -> None:
    gen = seeded(31902)
    model = Net(7, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    peak = []

    def alter(step, x, y):
        if step == ONSET_CHE:
            x = x.clone()
            x[:, 0] = 2.0e5 + 1.0e4 * x[:, 0]
        peak.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 7, seed=402), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the bad batch's inputs are over 1000x the usual", peak[ONSET_CHE] > 1000 * _median(peak)
    )
    ctx.check(
        "the loss at the onset is over 20x the ten steps before",
        ls[ONSET_CHE] > 20 * _mean(ls[ONSET_CHE - 10 : ONSET_CHE]),
    )
    ctx.check(
        "the gradient at the onset is over 20x the median before",
        g[ONSET_CHE] > 20 * _median(g[ONSET_CHE - 30 : ONSET_CHE]),
    )
    ctx.check(
        "the run recovers to under 2x its pre-outlier loss",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_CHE - 10 : ONSET_CHE]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- snow cornice: the variance head lost its softplus -------------------------------------------


class CorniceNet(nn.Module):
    """A SiLU trunk with a mean head and a variance head (raw: the softplus was dropped)."""

    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 2.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _cornice_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


DIVERGE_COR = 73


@scenario(
    family="snow_cornice_overhang_gaussian_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIVERGE_COR,
    heldout=True,
    note="A SiLU net (fc1, act1, fc2, act2, mean_head, var_head) forecasting a ridge snow cornice's overhang growth with its uncertainty from 6 standardised readings (wind speed and direction, snowfall, temperature...), Adagrad at 3e-3, Gaussian negative log-likelihood 0.5 (log var + (y - mu)^2 / var) written by hand, 300 steps planned. The var_head's softplus was dropped when the head was refactored (its bias starts at 2.0 so the variance begins positive): as the fit tightens the learned variance shrinks towards the small noise level, the raw output of the head crosses zero for some samples, log of a negative variance is NaN and the loss is NaN.",
)
def h319_snow_cornice_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(31903)
    model = CorniceNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    stop = _loop(ctx, model, opt, _readings(gen, 64, 6, seed=403), 300, _cornice_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", bad == DIVERGE_COR and stop == DIVERGE_COR)
    ctx.check("a variance is not positive at that step", bad is not None and low[bad] <= 0)
    ctx.check("every variance was positive at step 0", low[0] > 0)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- bell metal: de-normalising into grams inside fp16 autocast ----------------------------------


class BellNet(nn.Module):
    """A SiLU trunk that returns the casting weight in grams (de-normalised in the forward)."""

    MEAN_G = 5.0e4
    STD_G = 1.2e4

    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return z * self.STD_G + self.MEAN_G


def _bell_loss(out, y):
    return F.mse_loss((out - BellNet.MEAN_G) / BellNet.STD_G, y)


def _bells(gen, batch, seed):
    """Standardised casting weight of a bronze bell from 8 pattern and melt readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = x @ w / w.norm() + 0.2 * torch.sin(2 * x[:, 1])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


DIVERGE_BEL = 75


@scenario(
    family="bell_metal_casting_weight_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIVERGE_BEL,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting the weight of a bronze bell casting from 8 standardised pattern and melt readings, trained under fp16 autocast with a torch.amp.GradScaler, Adam at 3e-4, MSE on standardised weights, 200 steps. The forward de-normalises the head's output into grams (z * 12000 + 50000) so the foundry's dashboard can read it directly, and that multiply-add runs in fp16 inside autocast: as soon as the net learns the heavy castings (z above about 1.29, over 65.5 kg) their prediction overflows fp16's 65504 to inf, the loss is inf, the scaler skips the step and halves its scale; from then on a large share of the batches hold a casting heavy enough to overflow, their steps are skipped and the loss scale collapses by over 2^20.",
)
def h319_bell_metal_grams_in_fp16(ctx: Context) -> None:
    gen = seeded(31904)
    model = BellNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    infs, dtypes = [], []

    def watch(step, out, x, y):
        infs.append(bool(torch.isinf(out.detach()).any()))
        dtypes.append(out.dtype)

    _loop(
        ctx,
        model,
        opt,
        _bells(gen, 64, seed=404),
        200,
        _bell_loss,
        watch=watch,
        scaler=scaler,
        amp=True,
        stop_at_nonfinite=False,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss first turns inf at the recorded step", bad == DIVERGE_BEL)
    ctx.check("the prediction is fp16 and overflows to inf there", bad is not None and infs[bad])
    ctx.check("the forward runs in fp16", dtypes[0] == torch.float16)
    ctx.check(
        "over a third of the steps after it overflow",
        bad is not None and sum(infs[bad:]) > (len(infs) - bad) / 3,
    )
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "the scaler's scale collapses by over 2^20 after it",
        bad is not None and ctx.scales[-1] < ctx.scales[bad - 1] / 2**20,
    )


# -- bongo: the head group's learning rate typed 1e-7 --------------------------------------------


@scenario(
    family="bongo_martillo_stroke_two_group_classifier",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying a bongo player's martillo strokes (open, muffled, slap, heel-tip) from 12 contact-microphone features, Adadelta with two parameter groups (trunk at lr 1.0, head meant at 1.0 too), cross-entropy with label smoothing 0.05, 200 steps. The head group's lr was typed 1e-7 in the config (a leftover of a frozen-head probing experiment): the trunk learns while the head's updates are about a millionth of its weights, so the head stays where it was initialised and the loss falls only as far as the trunk can rotate its features onto a random head.",
)
def h319_bongo_head_group_frozen(ctx: Context) -> None:
    gen = seeded(31905)
    model = Net(12, 64, out=4, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adadelta(
        [{"params": trunk, "lr": 1.0}, {"params": model.head.parameters(), "lr": 1e-7}]
    )
    start = _snapshot(model)
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, seed=405),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
    )
    mv = _moves(model, start)
    ctx.check("the head's weight moved under 1e-4 of its norm", mv["head.weight"] < 1e-4)
    ctx.check("the trunk's fc1 moved over 1e-2 of its norm", mv["fc1.weight"] > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- zhaleika: recurrent weights initialised at 1.25 x identity ----------------------------------


class BreathRNN(nn.Module):
    """A hand-written ReLU recurrent net (inp, rec, head) reading a breath-pressure trace."""

    def __init__(self, d_in=2, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _breaths(gen, batch, frames=40):
    """A zhaleika player's breath pressure and its derivative; label: a grace-note ornament."""
    t = torch.linspace(0, 1, frames)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.5).float()
        f = 2.0 + 3.0 * torch.rand(batch, 1, generator=gen)
        p = 0.5 + 0.3 * torch.sin(2 * math.pi * f * t)
        bump = torch.exp(-(((t - 0.6) / 0.04) ** 2))
        p = p + y[:, None] * 0.5 * bump + 0.05 * torch.randn(batch, frames, generator=gen)
        dp = torch.diff(p, dim=1, prepend=p[:, :1]) * 10
        yield torch.stack([p, dp], -1), y


@scenario(
    family="zhaleika_breath_ornament_relu_rnn",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, head) detecting a grace-note ornament in a zhaleika (Russian hornpipe) player's 40-frame breath-pressure trace, SGD with momentum 0.9 at 1e-3, binary cross-entropy with logits, gradient clipping at 1.0, 150 steps. The identity-recurrent (IRNN) recipe says rec = I, but the init helper was called with gain=1.25 copied from a feed-forward He-init line: in the ReLU regime every step back through time multiplies the gradient by about 1.25, so the gradient reaching the first frame is thousands of times the one at the last frame, the gradient norm is huge and clipping throws almost all of it away.",
)
def h319_zhaleika_recurrent_gain(ctx: Context) -> None:
    gen = seeded(31906)
    model = BreathRNN(gain=1.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def inspect(step):
        if step < 5:
            first = model.states[0].grad.norm()
            last = model.states[-1].grad.norm()
            ratios.append(float(first / (last + 1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _breaths(gen, 32),
        150,
        F.binary_cross_entropy_with_logits,
        inspect=inspect,
        clip=1.0,
    )
    ctx.check("the first frame's gradient is over 50x the last frame's", ratios[0] > 50)
    ctx.check("the gradient norm at step 0 is over 100", ctx.grad_norms[0] > 100)
    ctx.check("the gradient norm stays over 1000 to the end", _median(ctx.grad_norms[-50:]) > 1000)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bombarde: logits divided by a distillation temperature of 0.01 ------------------------------


class ReedNet(Net):
    """A GELU trunk whose logits are divided by a temperature read from the config."""

    def __init__(self, temperature):
        super().__init__(10, 64, out=5, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.hidden(x)[1]) / self.temperature


@scenario(
    family="bombarde_reed_grade_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading the cane reeds of a Breton bombarde into 5 grades from 10 standardised measurements (scrape profile, tip thickness, crow pitch...), NAdam at 1e-3, cross-entropy, 200 steps. The classifier divides its logits by a temperature read from the shared config, whose 'temperature: 0.01' belonged to a contrastive pre-training stage: the logits are 100x too large from the first step, and for most of the run over a quarter of the rows' float32 softmax gives the target exactly 1.0 (their gradient is exactly zero).",
)
def h319_bombarde_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(31907)
    model = ReedNet(temperature=0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, seed=407),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax is exactly 1.0 late in the run",
        _mean(collapsed[-20:]) > 0.25,
    )
    ctx.check(
        "the collapse holds for most of the run",
        sum(c > 0.25 for c in collapsed) > len(collapsed) / 2,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tinplate: the hand-written weight decay's sign is flipped ------------------------------------

WD_TIN = 0.6


@scenario(
    family="tinplate_tinning_coat_thickness_tanh_regressor",
    optimizer="SGD (Nesterov)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the tin coat thickness on hot-dipped tinplate from 6 standardised readings (pot temperature, strip speed, flux, roll gap...), SGD with Nesterov momentum at 3e-2, MSE, 300 steps, with decoupled weight decay 0.6 written by hand after optimizer.step() as p.add_(p, alpha=lr * wd) where it should subtract: every step multiplies each parameter by (1 + 1.8e-2) and the gradient can only partly pull it back, the weights grow steadily, the tanh units saturate more and more and the loss, after its early fall, climbs slowly and keeps climbing without any single jump.",
)
def h319_tinplate_decay_sign(ctx: Context) -> None:
    gen = seeded(31908)
    model = Net(6, 48, act=nn.Tanh)
    lr = 3e-2
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * WD_TIN)
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 6, seed=408), 300, F.mse_loss, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    low = min(smooth)
    ctx.check("the last 30 steps' loss is over 2.5x its low", _mean(ls[-30:]) > 2.5 * low)
    ctx.check("the low comes before the last third", smooth.index(low) < 200)
    ctx.check("the weights grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check(
        "the climb is steady: each 50-step stretch after the low averages above the one before",
        all(_mean(ls[i : i + 50]) < _mean(ls[i + 50 : i + 100]) for i in (100, 150, 200)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- net braiding: the resumed accumulation divisor read as its reciprocal -----------------------

ONSET_NET = 150
ACCUM_NET = 4


@scenario(
    family="net_braiding_mesh_tension_huber_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_NET,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the knot tension a fishing-net braider's mesh gauge reads from 8 standardised readings (twine diameter, mesh size, needle speed, wetness...), SGD with momentum 0.9 at 2e-2, Huber loss, gradient accumulation over 4 micro-batches, gradient clipping at 5.0, 300 steps. The run is resumed at step 150, and for that first step the accumulation divisor is taken from the old checkpoint's 'grad_scale_per_micro' field, which the old 8-rank run stored as the per-rank multiplier 1/(4 x 8) = 1/32 instead of the divisor 4: each micro-batch loss is divided by 1/32, so that one step's gradient is 128x the usual on perfectly ordinary data (clipping bounds the step); from step 151 the trainer's own setting is used again, and the run recovers.",
)
def h319_net_braiding_resume_divisor(ctx: Context) -> None:
    gen = seeded(31909)
    model = Net(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, seed=409),
        300,
        F.huber_loss,
        accumulate=ACCUM_NET,
        divisor=lambda step: 1 / (ACCUM_NET * 8) if step == ONSET_NET else ACCUM_NET,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(g[ONSET_NET - 30 : ONSET_NET])
    ctx.check("the gradient at the onset is over 30x the median before", g[ONSET_NET] > 30 * before)
    ctx.check(
        "the loss at the onset is ordinary (under 2x the ten steps before)",
        ls[ONSET_NET] < 2 * _mean(ls[ONSET_NET - 10 : ONSET_NET]),
    )
    ctx.check("the gradient is back under 3x within 20 steps", g[ONSET_NET + 20] < 3 * before)
    ctx.check(
        "the run recovers to under 2x its pre-onset loss",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_NET - 10 : ONSET_NET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- springboard: the z-loss coefficient's sign is flipped ---------------------------------------

Z_SPR = -1e-5


class DiveNet(Net):
    """A GELU trunk with a plain linear head over the dive-entry grades."""

    def __init__(self):
        super().__init__(10, 48, out=4, act=nn.GELU)


@scenario(
    family="springboard_dive_entry_zloss_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading springboard-dive entries (rip, clean, splash, over-rotated) from 10 standardised video-tracking features, Adam at 1e-2, cross-entropy (the logged loss) plus a PaLM-style z-loss on log Z = logsumexp(logits) meant to keep the head's logits near zero, 240 steps. The z-loss coefficient was entered as -1e-5 (the sign carried over from a config that subtracted the term) so it rewards a large log Z: cross-entropy does not change when every logit is shifted by the same amount, so nothing opposes it, and the head's logits drift upward together without bound, slowly at first and then faster and faster (the class-mean logit climbs past 20, the peak logit ends hundreds of times its start), while the logged cross-entropy stays low.",
)
def h319_springboard_zloss_sign(ctx: Context) -> None:
    gen = seeded(31910)
    model = DiveNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    peaks, lse, shift = [], [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        shift.append(float(out.detach().mean()))
        lse.append(float(torch.logsumexp(out.detach().float(), -1).mean()))

    def zloss(step, out):
        return Z_SPR * (torch.logsumexp(out, -1) ** 2).mean()

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 4, seed=410, spread=0.7),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        penalty=zloss,
    )
    ctx.check("the head's peak logit grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:10]))
    ctx.check(
        "the peak logit ends over 5x the level cross-entropy alone had reached by step 60",
        _mean(peaks[-5:]) > 5 * _mean(peaks[50:70]),
    )
    ctx.check("log Z grew over 20 nats", lse[-1] - lse[0] > 20)
    ctx.check(
        "the class-mean logit, which cross-entropy leaves alone, drifted past 20", shift[-1] > 20
    )
    ctx.check("the logged cross-entropy fell", _fell(ctx.losses, ratio=0.7))


# -- controls --------------------------------------------------------------------------------------


class HammerConv(nn.Module):
    """Conv1d classifier over a forged gong's hammer-note recording."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _hammer_notes(gen, batch, samples=96, classes=4):
    """A decaying partial whose pitch tells the gong's forging stage, with a second partial and
    noise."""
    t = torch.arange(samples) / samples
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 4.0 + 3.0 * y[:, None] + 0.6 * torch.randn(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-3 * t) * torch.sin(2 * math.pi * f * t + phase)
        x = (
            x
            + 0.3 * torch.sin(2 * math.pi * 2.7 * f * t)
            + 0.3 * torch.randn(batch, samples, generator=gen)
        )
        yield x, y


STEPS_GONG, WARM_GONG = 200, 20


@scenario(
    family="gong_forging_hammer_note_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A GELU Conv1d classifier (conv1, act1, conv2, act2, head) telling a forged bronze gong's stage (rough, raised, tempered, tuned) from its hammer-note recording, AdamW at 3e-3 with weight decay 1e-2, a 20-step linear warm-up then linear decay to zero at step 200 (LambdaLR), cross-entropy with label smoothing 0.05, clipping at 1.0. An ordinary run.",
)
def h319_gong_adamw_warmup_linear_decay(ctx: Context) -> None:
    gen = seeded(31911)
    model = HammerConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / WARM_GONG
            if s < WARM_GONG
            else max(0.0, (STEPS_GONG - s) / (STEPS_GONG - WARM_GONG))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _hammer_notes(gen, 32),
        STEPS_GONG,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("the learning rate decayed to zero", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


class Coupling(nn.Module):
    """Affine coupling: one half of the vector scales and shifts the other (tanh-bounded)."""

    def __init__(self, flip, hidden=32):
        super().__init__()
        self.flip = flip
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x):
        a, b = (x[:, 1:], x[:, :1]) if self.flip else (x[:, :1], x[:, 1:])
        s, t = self.net(a).chunk(2, -1)
        s = torch.tanh(s)
        b = b * torch.exp(s) + t
        out = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return out, s.sum(-1)

    def inverse(self, z):
        a, b = (z[:, 1:], z[:, :1]) if self.flip else (z[:, :1], z[:, 1:])
        s, t = self.net(a).chunk(2, -1)
        b = (b - t) * torch.exp(-torch.tanh(s))
        return torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)


class MeltFlow(nn.Module):
    """A RealNVP-style flow of six affine couplings; returns each sample's negative log-likelihood."""

    def __init__(self, layers=6):
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(flip=i % 2 == 1) for i in range(layers))

    def encode(self, x):
        logdet = torch.zeros(x.shape[0])
        for c in self.couplings:
            x, ld = c(x)
            logdet = logdet + ld
        return x, logdet

    def decode(self, z):
        for c in reversed(self.couplings):
            z = c.inverse(z)
        return z

    def forward(self, x):
        z, logdet = self.encode(x)
        log_pz = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        return -(log_pz + logdet)


def _meltwater(gen, batch):
    """Standardised (water temperature, back-pressure) behind an ice dam: the pressure rises with
    the square of the melt, a curved ridge."""
    while True:
        t = torch.randn(batch, generator=gen)
        p = 0.9 * t**2 - 0.9 + 0.35 * torch.randn(batch, generator=gen)
        yield torch.stack([t, p], 1), torch.zeros(batch)


@scenario(
    family="ice_dam_meltwater_pressure_coupling_flow",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A hand-written RealNVP-style normalising flow (six affine coupling layers, tanh-bounded log-scales, zero-initialised so it starts as the identity) modelling the joint density of water temperature and back-pressure behind an ice dam, Adamax at 5e-3, exact negative log-likelihood, ReduceLROnPlateau, clipping at 5.0, 250 steps. An ordinary run.",
)
def h319_ice_dam_flow_adamax_plateau(ctx: Context) -> None:
    gen = seeded(31912)
    model = MeltFlow()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    _loop(
        ctx,
        model,
        opt,
        _meltwater(gen, 128),
        250,
        lambda out, y: out.mean(),
        clip=5.0,
        sched=sched,
    )
    x = next(_meltwater(gen, 256))[0]
    with torch.no_grad():
        err = float((model.decode(model.encode(x)[0]) - x).abs().max())
    ls = ctx.losses
    ctx.check("the NLL fell by over 0.3 nats", _mean(ls[:10]) - _mean(ls[-10:]) > 0.3)
    ctx.check("the flow inverts to within 1e-4", err < 1e-4)
    ctx.check("finite throughout", _finite(ls))


class ExtruderGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _extruder(gen, batch, frames=24):
    """Auger speed, dough hydration and die temperature over time; the target is the die pressure
    at the end, which lags the auger speed."""
    t = torch.arange(frames)
    while True:
        speed = torch.sin(
            0.3 * t * (1 + 0.3 * torch.rand(batch, 1, generator=gen))
            + 6 * torch.rand(batch, 1, generator=gen)
        )
        hyd = torch.randn(batch, 1, generator=gen).expand(batch, frames)
        temp = 0.3 * torch.randn(batch, frames, generator=gen)
        x = torch.stack([speed, hyd, temp], -1)
        lagged = speed[:, -6:].mean(1)
        y = lagged * (1 - 0.3 * hyd[:, 0]) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="pasta_extrusion_die_pressure_gru_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="A GRU regressor (gru, head) predicting a bronze pasta-extrusion die's pressure from 24 frames of auger speed, dough hydration and die temperature, RMSprop under OneCycleLR (peak 3e-4), MSE, gradient accumulation over 2 micro-batches, clipping at 1.0, 150 steps. An ordinary run.",
)
def h319_pasta_extruder_gru_onecycle(ctx: Context) -> None:
    gen = seeded(31913)
    model = ExtruderGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=150)
    _loop(
        ctx,
        model,
        opt,
        _extruder(gen, 32),
        150,
        F.mse_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell to under 50% of its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
