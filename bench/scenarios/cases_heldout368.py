"""Held-out set 368 (``h368_``): hand-written models of trades, instruments and natural phenomena
not covered before: a ropemaker strand-tension tanh regressor with a
hand-written weight decay whose sign is flipped (a slow climb), a gemcutter facet-angle tanh regressor
whose ExponentialLR gamma is typed 1.05 for 0.95 (past 2/sharpness), a horner comb-blank ReLU
classifier fed one shard in raw micrometres (one corrupted batch), a pargeter lime-cure SiLU Huber
regressor whose stage loss weight is read in millimetres for one step (one gradient burst), a roof
tiler's slate-lap classifier whose fc1 group lr is read under a misspelt key (frozen), a virginal
jack-pluck GELU classifier with temperature 0.01 (softmax collapse), a jew's harp twang Elman RNN
whose recurrent gain is 2.5 for 0.9 (gradients grow through time), a sanxian skin-deflection GELU
regressor converting mm to um inside fp16 autocast (overflow), a miller's bran-speck Poisson net
taking log(relu(.)) (log 0), a net maker's knot-slip ReLU classifier with RAdam lr typed 1.0 (dead
ReLUs), and three controls (a turlough water-level N-BEATS forecaster with Adam, ReduceLROnPlateau
and clipping, an estavelle flow-regime Conv1d classifier with SGD Nesterov, OneCycleLR and label
smoothing, a treenware bowl-wall GELU Huber regressor under fp16 autocast with a GradScaler, AdamW
and accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    """The file's training loop. ``before(step)`` runs first and may return the number of
    micro-batches for the step, ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)``
    sees the forward pass, ``backprop(step, loss)`` returns the loss actually backpropagated
    (before the division by the accumulation count), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        micro = accumulate
        if before is not None:
            got = before(step)
            if got is not None:
                micro = got
        model.train()
        shown = 0.0
        for _ in range(micro):
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / micro
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


def _bumps(gen, batch, d_in, seed, noise=0.03):
    """Low-dimensional readings whose target is a sum of a few localised bumps (what an RBF
    network is for)."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.2 * torch.randn(6, d_in, generator=g)
    widths = 0.4 + 0.5 * torch.rand(6, generator=g)
    amps = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        d2 = (x[:, None, :] - centres[None]).pow(2).sum(-1)
        y = (amps * torch.exp(-d2 / (2 * widths**2))).sum(-1)
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


# -- ropemaker: hand-written weight decay with its sign flipped (a slow climb) ------------------------


@scenario(
    family="ropemaker_strand_twist_tension_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the tension a ropemaker's strand takes at a given twist from ten readings of fibre, lay and hook speed, RMSprop at 1e-3, MSE, 300 steps. The decoupled weight decay (wd 4.0 on the weight matrices) is written by hand after the optimizer step as p.add_(p, alpha=lr * wd) (meant alpha=-lr * wd): every weight is pushed outward a little each step. The loss falls first, then climbs slowly and steadily to several times its lowest level as the tanh units saturate; no jump, finite.",
)
def h368_ropemaker_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(36801)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = 1e-3, 4.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    w0 = [p.detach().clone() for p in model.parameters() if p.dim() > 1]

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3681), 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    low = min(means)
    low_at = means.index(low)
    grown = [
        float(p.detach().norm() / w.norm())
        for p, w in zip([p for p in model.parameters() if p.dim() > 1], w0, strict=True)
    ]
    jumps = max(ls[i + 1] / max(ls[i], 1e-12) for i in range(len(ls) - 1))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the last 20-step mean loss is over 3x the lowest 20-step mean", means[-1] > 3 * low)
    ctx.check("the lowest point comes in the first half", low_at < len(ls) // 2)
    ctx.check("every weight matrix grew over 2x", min(grown) > 2.0)
    ctx.check("no single step raises the loss over 3x (a climb, not a spike)", jumps < 3.0)


# -- gemcutter: ExponentialLR gamma typed 1.05 for 0.95 (past 2/sharpness) ---------------------------


@scenario(
    family="gemcutter_facet_angle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the crown-facet angle a gemcutter's lap gives from ten readings of dop, lap speed and stone, plain SGD at 0.05 on batches of 256, MSE. The per-step ExponentialLR decay gamma was typed 1.05 for 0.95: the rate grows 5% a step, lr x top Hessian eigenvalue (power iteration) is far under 2 at the start and passes 2 as the rate climbs; the loss oscillates and blows up.",
)
def h368_gemcutter_exponential_gamma_typo(ctx: Context) -> None:
    gen = seeded(36802)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.05)  # meant: 0.95
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 3682))
    ratio = {}

    def before(step):
        if step % 4 == 0:
            ratio[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _readings(gen, 256, 10, 3682), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    crossed = min((k for k, v in ratio.items() if v > 2.0), default=None)
    ctx.check("lr x sharpness is under 0.5 at the start", ratio[0] < 0.5)
    ctx.check("lr x sharpness passes 2", crossed is not None)
    ctx.check(
        "the loss becomes non-finite after lr x sharpness passes 2",
        bad is not None and crossed is not None and bad > crossed,
    )
    ctx.check("the loss fell first", _mean(ls[10:20]) < 0.8 * _mean(ls[:3]))
    ctx.check(
        "the loss passes 100x its lowest before going non-finite",
        bad is not None and max(v for v in ls[:bad]) > 100 * min(ls[:bad]),
    )


# -- horner: one shard of raw micrometre readings (one corrupted batch) ------------------------------

HORNER_AT = 120


@scenario(
    family="horner_comb_blank_grade_relu_classifier",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading a horner's pressed comb blanks into five grades from twelve standardised readings of thickness, lamination and translucency, Adagrad at 0.05, cross-entropy, clipping at 1.0, 240 steps. One workshop's shard reached the loader with its thickness columns in raw micrometres, unstandardised (about 1500 instead of about 1): the batch at step 120 gives a loss and a gradient over 20x the usual; the clipped step does little harm and the run recovers.",
    onset=HORNER_AT,
)
def h368_horner_raw_micrometre_shard(ctx: Context) -> None:
    gen = seeded(36803)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == HORNER_AT:
            x = x.clone()
            x[:, :4] = 1500.0 + 120.0 * x[:, :4]  # this shard skipped standardisation
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 3683),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of the 20 before",
        ls[HORNER_AT] > 20 * _median(ls[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 before",
        gs[HORNER_AT] > 20 * _median(gs[100:120]),
    )
    ctx.check(
        "the run recovers: the last 20 steps' loss is under 2x that before step 120",
        _mean(ls[-20:]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- pargeter: a loss weight in millimetres for one step (one gradient burst) ------------------------

PARGETER_AT = 150


@scenario(
    family="pargeter_lime_plaster_cure_silu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the cure time of a pargeter's lime render from twelve readings, SGD with momentum 0.9 at 0.02, Huber loss, clipping at 1.0, 260 steps. On step 150 the curriculum switches on its coat-thickness stage, whose loss weight is read from a config field written in millimetres (1000 where 1.0 was meant): the backpropagated loss of one clean batch is 1000x, its gradient over 50x the usual; clipped, the run recovers.",
    onset=PARGETER_AT,
)
def h368_pargeter_stage_weight_millimetres(ctx: Context) -> None:
    gen = seeded(36804)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    seen = {}

    def weight(step):
        return 1000.0 if step == PARGETER_AT else 1.0  # the field is in mm: meant 1.0

    def watch(step, out, x, y):
        if step == PARGETER_AT:
            seen["x_scale"] = float(x.abs().max())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3684),
        260,
        F.huber_loss,
        backprop=lambda step, loss: weight(step) * loss,
        clip=1.0,
        watch=watch,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median of the 20 before",
        gs[PARGETER_AT] > 50 * _median(gs[130:150]),
    )
    ctx.check(
        "the batch at step 150 is clean: its loss is under 2x the median of the 20 before",
        ls[PARGETER_AT] < 2 * _median(ls[130:150]),
    )
    ctx.check(
        "the batch at step 150 is clean: its inputs are in range", seen.get("x_scale", 1e9) < 8.0
    )
    ctx.check(
        "the run recovers: the last 20 steps' loss is under 2x that before step 150",
        _mean(ls[-20:]) < 2 * _mean(ls[130:150]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- tiler: a param group's lr read under a misspelt key (frozen layer) ------------------------------


@scenario(
    family="tiler_roof_slate_lap_two_group_relu_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a roof tiler's slate-lap fault into six kinds from fourteen readings, AdamW with weight decay 0.01 and two param groups (fc1, the rest), cross-entropy, 240 steps. fc1's group rate is looked up as cfg.get('fc1_lr', 0.0) but the config spells the key 'fc1_Lr': fc1's rate is 0, fc1 never moves (its decoupled decay is lr x wd = 0 too) while fc2 and the head learn; the loss still falls on the random features.",
)
def h368_tiler_group_lr_misspelt_key(ctx: Context) -> None:
    gen = seeded(36805)
    model = Trunk(14, 64, out=6)
    cfg = {"lr": 2e-3, "fc1_Lr": 2e-3}  # the reader asks for 'fc1_lr'
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": cfg.get("fc1_lr", 0.0)},
            {"params": rest, "lr": cfg["lr"]},
        ],
        weight_decay=0.01,
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    fc1_grad = {"n": 0.0}

    def inspect(step):
        fc1_grad["n"] = max(fc1_grad["n"], float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 3685, spread=1.4),
        240,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    moved = {n: _rel_change(w0[n], p) for n, p in model.named_parameters() if n.endswith("weight")}
    ctx.check("fc1 moves under 1e-6 of its norm", moved["fc1.weight"] < 1e-6)
    ctx.check(
        "fc2 and the head move over 5% of their norm",
        min(moved["fc2.weight"], moved["head.weight"]) > 0.05,
    )
    ctx.check("fc1 receives gradient (it is in the graph, only its rate is 0)", fc1_grad["n"] > 0)
    ctx.check("the loss fell", _fell(ctx.losses))


# -- virginal: softmax temperature typed 0.01 for 1.0 (softmax collapse) -----------------------------


@scenario(
    family="virginal_jack_pluck_quill_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) classifying which quill voicing of a virginal's jack plucked a note into eight kinds from sixteen readings, Adamax at 2e-3, cross-entropy on logits divided by a temperature, 200 steps. The temperature was typed 0.01 for 1.0: the logits are 100x, and over half the rows' float32 softmax gives the target probability exactly 1.0 late in the run (none at temperature 1.0 on the same batch); finite.",
)
def h368_virginal_temperature_typo(ctx: Context) -> None:
    gen = seeded(36806)
    temperature = 0.01  # meant: 1.0

    class Tempered(Trunk):
        def forward(self, x):
            return super().forward(x) / temperature

    model = Tempered(16, 64, out=8, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    frac, plain = [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1).gather(1, y[:, None])
        frac.append(float((p == 1.0).float().mean()))
        q = torch.softmax(out.detach() * temperature, -1).gather(1, y[:, None])
        plain.append(float((q == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 3686),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows give their target probability exactly 1.0 over the last 50 steps",
        _mean(frac[-50:]) > 0.5,
    )
    ctx.check("under 5% of the rows do at temperature 1.0", _mean(plain[-50:]) < 0.05)
    ctx.check("under 5% do over the first 5 steps", _mean(frac[:5]) < 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- jew's harp: recurrent init gain typed 1.8 for 0.8 (gradients grow through time) ------------------


class ElmanRegressor(nn.Module):
    """A hand-written tanh Elman cell (inp, rec) unrolled over the sequence, head on the last
    state. ``states`` keeps every hidden state of the last forward pass (for the checks)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _twangs(gen, batch, length=40):
    """A jaw harp's twang: a decaying tone with an overtone; the target is its pitch (scaled)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.1 + 0.3 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        s = torch.sin(f * t + phase) * torch.exp(-t / 60) + 0.3 * torch.sin(2 * f * t + phase)
        s = s + 0.05 * torch.randn(batch, length, generator=gen)
        yield s[:, :, None], (f.squeeze(1) - 0.25) / 0.09


@scenario(
    family="jew_harp_twang_pitch_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, head) unrolled over 40 samples of a jaw harp's twang, regressing its pitch, SGD with Nesterov momentum 0.9 at 0.01, MSE, clipping at 1.0, 150 steps. The recurrent orthogonal init's gain was built as the config's rec_gain 1.5 (meant for the input layer) times calculate_gain('tanh') = 5/3, 2.5 where 0.9 was meant: the gradient reaching the first hidden state is many times that at the last, and stays so through the run; the raw gradient is far over the clip threshold.",
)
def h368_jew_harp_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(36807)
    model = ElmanRegressor(1, 48, gain=1.5 * nn.init.calculate_gain("tanh"))  # meant: 0.9
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    growth = {}

    def inspect(step):
        first, last = model.states[0].grad, model.states[-1].grad
        growth[step] = float(first.norm() / last.norm().clamp_min(1e-30))

    _loop(ctx, model, opt, _twangs(gen, 32), 150, F.mse_loss, inspect=inspect, clip=1.0)
    # the same batch through the intended gain
    ref = ElmanRegressor(1, 48, gain=0.9)
    x, y = next(_twangs(torch.Generator().manual_seed(7), 32))
    F.mse_loss(ref(x), y).backward()
    ref_growth = float(ref.states[0].grad.norm() / ref.states[-1].grad.norm())
    ctx.check("the gradient at h_0 is over 20x that at h_39 at step 0", growth[0] > 20)
    ctx.check(
        "it stays over 10x through the first 50 steps", min(growth[s] for s in range(50)) > 10
    )
    ctx.check("under 1x with the intended gain 0.9", ref_growth < 1.0)
    ctx.check(
        "the raw gradient is over 5x the clip threshold at the median",
        _median(ctx.grad_norms) > 5.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sanxian: millimetres to micrometres inside fp16 autocast (overflow) -----------------------------


class ToMicrometres(nn.Module):
    def forward(self, x):
        return 1000.0 * x  # run inside the autocast region: fp16 tops out at 65504


class SkinNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        nn.init.constant_(self.head.bias, 55.0)  # start at the typical deflection, in mm
        self.units = ToMicrometres()

    def forward(self, x):
        mm = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.units(mm)


def _deflections(gen, batch, d_in, seed):
    """Readings and a snakeskin deflection in micrometres (about 30-80 mm)."""
    base = _readings(gen, batch, d_in, seed)
    while True:
        x, y = next(base)
        yield x, 1000.0 * (55.0 + 18.0 * y)


SANXIAN_DIV = 28


@scenario(
    family="sanxian_snakeskin_deflection_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("units",),
    diverges=SANXIAN_DIV,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head, units) predicting how far a sanxian's python-skin head deflects under a standard load (about 30-80 mm, targets in micrometres) from ten readings of skin thickness, humidity and frame, Adam at 3e-2, fp16 autocast with a GradScaler, MSE, 200 steps. The head predicts millimetres and the units module converting them to micrometres (x1000) runs inside the autocast region: the predictions start near 55 mm and are all finite, then as the weights move a prediction passes 65.5 mm, its fp16 value overflows to inf, and the loss is inf at step 28; the same batch in fp32 is finite.",
)
def h368_sanxian_micrometres_in_autocast(ctx: Context) -> None:
    gen = seeded(36808)
    model = SkinNet(10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    peaks = []

    def watch(step, out, x, y):
        seen["x"], seen["y"], seen["out"] = x, y, out.detach()
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _deflections(gen, 64, 10, 3688),
        200,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        fp32 = model(seen["x"])
    ctx.check(f"the loss is first non-finite at step {SANXIAN_DIV}", bad == SANXIAN_DIV)
    ctx.check("the fp16 output holds an inf", bool(torch.isinf(seen["out"]).any()))
    ctx.check("the same batch in fp32 is finite", bool(torch.isfinite(fp32).all()))
    ctx.check("the fp32 prediction passes 65504 um", float(fp32.abs().max()) > 65504)
    ctx.check(
        "every fp16 prediction is finite and under 65504 over the first 10 steps",
        max(peaks[:10]) < 65504,
    )


# -- miller: a Poisson rate through a ReLU, log of 0 (non-finite) -------------------------------------


class LogRate(nn.Module):
    """log(relu(x)): the recipe's softplus was replaced by a ReLU, and nothing clamps the log."""

    def forward(self, x):
        return torch.log(F.relu(x))


class SpeckNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.constant_(self.head.bias, 1.0)
        self.log_rate = LogRate()

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _specks(gen, batch, d_in, seed):
    """Readings and a Poisson count of bran specks (mean about 1, many zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(0.9 * x @ w - 0.3)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(log_rate, y):
    return (log_rate.exp() - y * log_rate).mean()


MILLER_DIV = 33


@scenario(
    family="miller_bolting_cloth_bran_speck_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_rate",),
    diverges=MILLER_DIV,
    heldout=True,
    note="A hand-written SiLU network (fc1, act1, fc2, act2, head, log_rate) predicting the Poisson rate of bran specks a miller's bolting cloth lets through per sample from eight readings of mesh, feed and stone speed, NAdam at 1e-3, Poisson NLL, 200 steps. The rate's softplus was swapped for a ReLU and log_rate takes log(relu(.)) with no clamp: rows with no specks push their rate down, a rate reaches exactly 0, log 0 = -inf in log_rate, and the loss is non-finite at step 33.",
)
def h368_miller_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(36809)
    model = SpeckNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    seen = {}

    def watch(step, out, x, y):
        seen["out"] = out.detach()

    _loop(ctx, model, opt, _specks(gen, 64, 8, 3689), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {MILLER_DIV}", bad == MILLER_DIV)
    ctx.check(
        "a log-rate is -inf at that step (a rate of exactly 0)",
        bool(torch.isneginf(seen["out"]).any()),
    )
    ctx.check(
        "the loss fell before",
        bad is not None and _mean(ctx.losses[bad - 5 : bad]) < _mean(ctx.losses[:3]),
    )


# -- net maker: RAdam rate typed 0.3 for 3e-4 (dead ReLUs) -------------------------------------------


@scenario(
    family="net_maker_mesh_knot_slip_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a fishing-net maker's sheet-bend knots into four slip grades from twelve readings, RAdam, cross-entropy, 240 steps. The rate was typed 1.0 for 1e-3: the loss falls at first, then the oversized updates push act2's units negative on every input; over 90% of them are dead on every one of the last 50 steps and the loss ends no better than chance, finite.",
)
def h368_net_maker_radam_rate_typo(ctx: Context) -> None:
    gen = seeded(36810)
    model = Trunk(12, 64, out=4)
    opt = torch.optim.RAdam(model.parameters(), lr=1.0)  # meant: 1e-3
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.features(x)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 3690),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 30% of act2's units dead over the first 5 steps", _mean(dead[:5]) < 0.3)
    ctx.check("over 90% of act2's units dead over each of the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check(
        "the loss ends no better than chance (over 0.9 x log 4)",
        _mean(ctx.losses[-20:]) > 0.9 * math.log(4),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class NBeatsBlock(nn.Module):
    """A generic N-BEATS block: a fully connected stack (fc1..fc4) and two linear heads that emit
    a backcast over the look-back window and a forecast over the horizon."""

    def __init__(self, lookback, horizon, width):
        super().__init__()
        self.fc1 = nn.Linear(lookback, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, width)
        self.backcast = nn.Linear(width, lookback)
        self.forecast = nn.Linear(width, horizon)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        h = F.relu(self.fc3(h))
        h = F.relu(self.fc4(h))
        return self.backcast(h), self.forecast(h)


class NBeats(nn.Module):
    """Stacked blocks with doubly residual links: each block removes its backcast from the input
    the next one sees, and the forecasts add up."""

    def __init__(self, lookback=48, horizon=12, width=96, blocks=3):
        super().__init__()
        self.blocks = nn.ModuleList(NBeatsBlock(lookback, horizon, width) for _ in range(blocks))

    def forward(self, x):
        residual, forecast = x, 0.0
        for block in self.blocks:
            back, fore = block(residual)
            residual = residual - back
            forecast = forecast + fore
        return forecast


def _water_levels(gen, batch, lookback=48, horizon=12):
    """Generated turlough levels: a slow trend, a seasonal swing with its own period, a faster
    rainfall pulse and noise, cut into (look-back window, horizon) pairs."""
    t = torch.arange(lookback + horizon, dtype=torch.float32)
    while True:
        period = 16 + 16 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        trend = 0.02 * torch.randn(batch, 1, generator=gen)
        level = amp * torch.sin(6.28 * t / period + phase) + trend * t
        level = level + 0.3 * torch.sin(6.28 * t / 7 + 2 * phase)
        level = level + 0.05 * torch.randn(batch, lookback + horizon, generator=gen)
        level = level - level[:, :lookback].mean(1, keepdim=True)
        yield level[:, :lookback], level[:, lookback:]


@scenario(
    family="turlough_water_level_nbeats_forecaster",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written N-BEATS-style forecaster (three generic blocks, each a four-layer fully connected stack emitting a backcast and a forecast, doubly residual) predicting the next 12 readings of a turlough's (seasonal karst lake's) water level from the last 48, on generated series with trend, seasonality and rainfall pulses; Adam at 1e-3, ReduceLROnPlateau on a held-out batch, clipping at 1.0, MSE, 240 steps. A control.",
)
def h368_turlough_nbeats_control(ctx: Context) -> None:
    gen = seeded(36811)
    model = NBeats()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_water_levels(torch.Generator().manual_seed(11), 256))

    def plateau():
        with torch.no_grad():
            return float(F.mse_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _water_levels(gen, 64),
        240,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    with torch.no_grad():
        naive = float(F.mse_loss(held[0][:, -1:].expand_as(held[1]), held[1]))
    ctx.check("the loss fell below half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("the held-out forecast beats repeating the last reading", plateau() < naive)
    ctx.check("finite throughout", _finite(ctx.losses))


class FlowConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head: a small Conv1d classifier."""

    def __init__(self, channels, classes, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="estavelle_flow_reversal_relu_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) naming which of five regimes an estavelle (a karst spring that turns into a sink) is in from two-channel traces of flow and head, SGD with Nesterov momentum 0.9 and weight decay 5e-4 under OneCycleLR (peak 0.2), label smoothing 0.1, clipping at 1.0, 200 steps. A control.",
)
def h368_estavelle_conv1d_control(ctx: Context) -> None:
    gen = seeded(36812)
    model = FlowConv(2, 5, width=32)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=200)

    def smooth(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 3692),
        200,
        smooth,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="treenware_bowl_wall_fp16_gelu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the wall thickness a treenware turner's green-wood bowl settles to from twelve standardised readings, AdamW with a no-decay group for biases, linear warm-up then cosine decay, fp16 autocast with a GradScaler, gradient accumulation over 2 micro-batches, clipping at 1.0, Huber loss, 200 steps. A control.",
)
def h368_treenware_fp16_control(ctx: Context) -> None:
    gen = seeded(36813)
    model = Trunk(12, 64, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))
    )
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3693),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell below half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales)
    )
