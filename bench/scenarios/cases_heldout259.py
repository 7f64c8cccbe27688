"""Held-out set 259 (``h259_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kamale ngoni pluck-technique cosine classifier whose
temperature annealing lost its floor, a saggar-kiln shrinkage net fed a new logger's raw ADC
counts under fp16 autocast, a trugo drive-distance regressor whose epoch-scheduled pruning fires
at a step, a stickball throw regressor fed one shard in centimetres, a lime-kiln calcination net
taking log of a CO2 pressure logged as 0, a gadulka bow-stroke Elman RNN whose recurrent init std
was written 1.0, a palsa frost-heave regressor whose CyclicLR max_lr was typed 2.0 for 0.2, a
chaffinch song-dialect triplet embedder whose projection group lr was typed 5e-8, a shin-kicking
bout regressor whose resumed batch size defaults to 1 for one step, a steam-devil height
regressor whose RMSprop lr was typed 3e-2 for 3e-4, and three controls (a bunnock toss Huber MLP
with accumulation and warm-up, a tiple strum Conv1d classifier with OneCycleLR and label
smoothing, a thermokarst drainage Gaussian-NLL net under fp16 autocast with a GradScaler).

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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(torch.as_tensor(loss).detach()))


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp``: fp16
    autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


def _sharpness(model, loss_fn, batch, iters=15) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- ngoni: a cosine classifier's temperature annealing lost its floor ---------------------------


class CosineClassifier(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, head a cosine layer divided by a temperature."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.tau = 0.5

    def forward(self, x):
        h = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        return F.linear(h, F.normalize(self.head.weight, dim=-1)) / self.tau


@scenario(
    family="ngoni_harp_pluck_technique_cosine_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine head (fc1, act1, fc2, act2, head: normalised features against normalised class weights, divided by a temperature) classifying a kamale ngoni (West African harp-lute) player's pluck technique (6 kinds) from 16 standardised pickup readings, Adam at 1e-3, cross-entropy. The temperature is annealed as tau = max(0.2, 0.5 * 0.96 ** step), and the max(0.2, .) floor was lost in a refactor: tau falls below 1e-3 after about 150 steps, the logits reach thousands and the float32 softmax gives most training rows a target probability of exactly 1.0 (the rest exactly 0): the softmax is saturated. Finite, no blow-up.",
)
def h259_ngoni_temperature_floor_lost(ctx: Context) -> None:
    def run(c, floor):
        gen = seeded(25901)
        model = CosineClassifier(16, 64, 6)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        collapsed = []

        def before(step):
            model.tau = max(floor, 0.5 * 0.96**step)

        def watch(step, out, x, y):
            collapsed.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 61, noise=0.8),
            220,
            F.cross_entropy,
            classifier=True,
            before=before,
            watch=watch,
        )
        return collapsed, model.tau

    twin = _Quiet()
    twin_collapsed, _ = run(twin, 0.2)
    collapsed, tau = run(ctx, 0.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 5% of rows saturated at step 0", collapsed[0] < 0.05)
    ctx.check("temperature ended under 1e-3", tau < 1e-3)
    ctx.check("over half the rows saturated over the last 20 steps", min(collapsed[-20:]) > 0.5)
    ctx.check("the floored twin saturates under 5% of rows", max(twin_collapsed) < 0.05)


# -- saggar kiln: a new logger's raw ADC counts overflow fc1's fp16 matmul -----------------------

ONSET_SAGGAR = 100


@scenario(
    family="saggar_kiln_firing_shrinkage_silu_mlp",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_SAGGAR,
    heldout=True,
    onset=ONSET_SAGGAR,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a stoneware pot's firing shrinkage inside a saggar from 10 standardised kiln readings (thermocouple, draught, saggar wall thickness, combustibles packed, ...), AdamW at 1e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 100 a replacement thermocouple logger sends its raw 24-bit ADC counts (around 8e6) in column 3 where the standardised temperature was expected; the float32 forward on that batch is finite, but autocast casts fc1's input to float16, whose largest value is 65504: fc1's output overflows to inf and the loss is non-finite at step 100.",
)
def h259_saggar_raw_adc_fp16_overflow(ctx: Context) -> None:
    gen = seeded(25902)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def alter(step, x, y):
        if step >= ONSET_SAGGAR:
            x = x.clone()
            x[:, 3] = 8e6 + 2e5 * x[:, 3]
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_SAGGAR:
            with torch.no_grad():
                seen["f32"] = bool(torch.isfinite(model(x)).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1"] = bool(torch.isfinite(model.fc1(x)).all())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 71),
        200,
        F.mse_loss,
        alter=alter,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_SAGGAR]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SAGGAR], ratio=0.6))
    ctx.check(
        "the loss is non-finite at the onset",
        len(ls) > ONSET_SAGGAR and not math.isfinite(ls[ONSET_SAGGAR]),
    )
    ctx.check("the float32 forward on the onset batch is finite", seen.get("f32", False))
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1", True) is False)


# -- trugo: a pruning callback scheduled in epochs fires at step 120 ----------------------------

ONSET_TRUGO = 120


@scenario(
    family="trugo_mallet_drive_distance_gelu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TRUGO,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how far a trugo (Australian mallet game) drive travels from 12 standardised readings (mallet head mass, swing speed, ring height, ground firmness, ...), NAdam at 2e-3, MSE. A magnitude-pruning callback meant to fire at epoch 120 compares against the global step counter and fires at step 120: it zeroes the 95% smallest weights of fc1 and fc2 once, without a persistent mask. The loss jumps several-fold on ordinary batches and the network regrows the weights; the loss recovers within tens of steps. Finite, no divergence.",
)
def h259_trugo_pruning_at_step_not_epoch(ctx: Context) -> None:
    gen = seeded(25903)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    xs = []

    def before(step):
        if step == ONSET_TRUGO:
            with torch.no_grad():
                for lin in (model.fc1, model.fc2):
                    w = lin.weight
                    cut = w.abs().flatten().kthvalue(int(0.95 * w.numel())).values
                    w.mul_((w.abs() > cut).float())

    def watch(step, out, x, y):
        if step in (ONSET_TRUGO - 1, ONSET_TRUGO):
            xs.append(float(x.abs().max()))

    _train(ctx, model, opt, _readings(gen, 64, 12, 81), 220, F.mse_loss, before=before, watch=watch)
    ls = ctx.losses
    pre = _mean(ls[ONSET_TRUGO - 10 : ONSET_TRUGO])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TRUGO], ratio=0.5))
    ctx.check("the loss at the onset over 4x the 10 steps before", ls[ONSET_TRUGO] > 4 * pre)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 1.5x its pre-onset level)",
        _mean(ls[ONSET_TRUGO + 50 : ONSET_TRUGO + 60]) < 1.5 * pre,
    )


# -- stickball: one shard's throw distances in centimetres ---------------------------------------

ONSET_STICK = 110


@scenario(
    family="stickball_racket_throw_distance_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_STICK,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the standardised distance of a stickball (Native American racket game) throw from 8 standardised readings (racket pocket depth, arm speed, release angle, ball mass, ...), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 5. The batch at step 110 comes from one tournament's shard whose distances were exported in centimetres, not metres: its targets are 100x too large. The loss jumps over 100x for that batch; clipping bounds the update and the run recovers. Finite, no divergence.",
)
def h259_stickball_centimetre_shard(ctx: Context) -> None:
    gen = seeded(25904)
    model = Stack(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ys = {}

    def alter(step, x, y):
        if step == ONSET_STICK:
            y = y * 100.0
        if step in (ONSET_STICK - 1, ONSET_STICK):
            ys[step] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, 91), 220, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_STICK - 20 : ONSET_STICK])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the targets at the onset over 30x those of the batch before",
        ys[ONSET_STICK] > 30 * ys[ONSET_STICK - 1],
    )
    ctx.check("the loss at the onset over 100x the median before", ls[ONSET_STICK] > 100 * pre)
    ctx.check(
        "the gradient norm at the onset over 30x the median before",
        gn[ONSET_STICK] > 30 * _median(gn[ONSET_STICK - 20 : ONSET_STICK]),
    )
    ctx.check(
        "the loss recovered within 60 steps (under 3x its pre-onset median)",
        _mean(ls[ONSET_STICK + 50 : ONSET_STICK + 60]) < 3 * pre,
    )


# -- lime kiln: log of a CO2 partial pressure the analyser logs as 0 -----------------------------


class LogPressure(nn.Module):
    """log of the CO2 partial pressure column (kPa), no clamp."""

    def forward(self, p):
        return torch.log(p)


class LimeKilnNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.log_pco2 = LogPressure()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.last_log = None

    def forward(self, x):
        lp = self.log_pco2(x[:, :1])
        self.last_log = lp.detach()
        h = torch.cat([lp, x[:, 1:]], dim=1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


ONSET_LIME = 90


@scenario(
    family="lime_burner_kiln_calcination_log_pressure_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_pco2",),
    diverges=ONSET_LIME,
    heldout=True,
    onset=ONSET_LIME,
    note="A SiLU MLP (log_pco2, fc1, act1, fc2, act2, head) regressing the calcined fraction of a lime burner's draw from 9 standardised kiln readings and the CO2 partial pressure, which a LogPressure module (log_pco2) turns into log(p) with no clamp, Adamax at 2e-3, MSE. At step 90 the CO2 analyser drops out for its purge cycle and logs 0.0 kPa for a few rows: log(0) = -inf in log_pco2, fc1 turns it into +-inf, SiLU gives inf * 0 = NaN, and the loss is NaN at step 90.",
)
def h259_lime_kiln_log_zero_pressure(ctx: Context) -> None:
    gen = seeded(25905)
    model = LimeKilnNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    stream = _readings(gen, 64, 10, 101)
    seen = {}

    def batches():
        while True:
            x, y = next(stream)
            x = x.clone()
            x[:, 0] = 20.0 * torch.sigmoid(x[:, 0]) + 1.0  # kPa, positive
            yield x, y

    def alter(step, x, y):
        if step == ONSET_LIME:
            x = x.clone()
            x[:5, 0] = 0.0
            seen["pmin"] = float(x[:, 0].min())
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_LIME:
            seen["inf"] = bool(torch.isinf(model.last_log).any())

    _train(ctx, model, opt, batches(), 200, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_LIME]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LIME], ratio=0.6))
    ctx.check("the pressure column has zeros at the onset", seen.get("pmin", 1.0) == 0.0)
    ctx.check("log_pco2's output is infinite at the onset", seen.get("inf", False))
    ctx.check(
        "the loss is NaN at the onset",
        len(ls) > ONSET_LIME and math.isnan(ls[ONSET_LIME]),
    )


# -- gadulka: an Elman RNN's recurrent init std typed 1.0 for 1/sqrt(hidden) --------------------


class Elman(nn.Module):
    """A hand-written tanh Elman RNN: h_t = tanh(inp(x_t) + rec(h_{t-1})), a head on h_T."""

    def __init__(self, d_in=4, hidden=48, rec_std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=rec_std or hidden**-0.5)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _bow_strokes(gen, batch, length=40):
    """Four standardised readings per 20 ms of a gadulka bow stroke (bow pressure, bow speed,
    contact point, string amplitude) and the stroke's standardised loudness."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        decay = 0.85 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x[:, :, 0] * decay).sum(1) / 2 + 0.5 * x[:, -1, 1])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="gadulka_bow_stroke_loudness_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, head) reading 40 frames of a gadulka (Bulgarian bowed lute) bow stroke (bow pressure, bow speed, contact point, string amplitude) and regressing the stroke's loudness, plain SGD at 1e-2, MSE. The recurrent weight's init was meant to be normal with std 1/sqrt(hidden) and was written std=1.0: the recurrent map's gain is about sqrt(48) ~ 7 per frame, so the gradient grows frame by frame back through time: at step 0 the gradient with respect to the first hidden state is over 100x that at the last one, and the total gradient norm is far larger than the intended init's.",
)
def h259_gadulka_elman_rec_std(ctx: Context) -> None:
    def run(c, std):
        gen = seeded(25906)
        model = Elman(rec_std=std)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        ratio = {}

        batches = _bow_strokes(gen, 32)
        c.attach(model, opt)
        for step in range(100):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if step == 0:
                first = float(model.states[0].grad.norm())
                last = float(model.states[-1].grad.norm())
                ratio["t"] = first / max(last, 1e-30)
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio["t"]

    twin = _Quiet()
    twin_ratio = run(twin, None)
    ratio = run(ctx, 1.0)
    gn = ctx.grad_norms
    ctx.check("the gradient at the first frame over 100x that at the last (step 0)", ratio > 100)
    ctx.check("the intended init's gradient does not grow back through time", twin_ratio < 1)
    ctx.check(
        "the gradient norm at step 0 over 10x the intended init's",
        gn[0] > 10 * twin.grad_norms[0],
    )


# -- palsa: CyclicLR's max_lr typed 2.0 for 0.2 --------------------------------------------------

ONSET_PALSA = 85


@scenario(
    family="palsa_mound_frost_heave_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_PALSA,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a palsa (peat permafrost mound) survey's seasonal frost heave from 8 standardised readings (peat depth, snow cover, thaw-season degree days, water table, ...), plain SGD, MSE, a triangular CyclicLR from 0.01 over 400 steps up, meant to peak at max_lr 0.2 and typed 2.0. The lr climbs linearly and around step 85 lr x sharpness (the top Hessian eigenvalue, measured by power iteration every 5 steps) passes 2, the stability limit of gradient descent; the run hovers at the edge of stability with the loss oscillating while the lr keeps climbing, and blows up (non-finite) before step 200.",
)
def h259_palsa_cycliclr_max_typo(ctx: Context) -> None:
    gen = seeded(25907)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=2.0, step_size_up=400, cycle_momentum=False
    )
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 8, 111))
    prod = {}

    def before(step):
        if step % 5 == 0:
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _readings(gen, 64, 8, 111), 260, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_PALSA], ratio=0.7))
    ctx.check(
        "lr x sharpness under 2 until 10 steps before the onset",
        max(v for s, v in prod.items() if s <= ONSET_PALSA - 10) < 2,
    )
    ctx.check(
        "lr x sharpness past 2 by 10 steps after the onset",
        any(v > 2 for s, v in prod.items() if s <= ONSET_PALSA + 10),
    )
    ctx.check(
        "the loss blew up (over 100x its low, or non-finite)",
        not _finite(ls) or max(ls) > 100 * low,
    )


# -- birdsong dialects: a triplet embedder whose projection group lr was typed 5e-8 -------------


class SongEmbedder(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> proj, L2-normalised embeddings."""

    def __init__(self, d_in=20, hidden=64, dim=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return F.normalize(self.proj(self.act2(self.fc2(self.act1(self.fc1(x))))), dim=-1)


def _song_triplets(gen, batch, d_in=20, dialects=8, seed=121):
    """Anchor, positive (same chaffinch song dialect) and negative (another dialect) feature
    vectors of recorded song phrases (syllable rates, trill lengths, end-flourish pitch, ...)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(dialects, d_in, generator=g)
    while True:
        a = torch.randint(0, dialects, (batch,), generator=gen)
        n = (a + torch.randint(1, dialects, (batch,), generator=gen)) % dialects
        trip = torch.stack([protos[a], protos[a], protos[n]], 1) + 2.0 * torch.randn(
            batch, 3, d_in, generator=gen
        )
        yield trip, a


@scenario(
    family="chaffinch_song_dialect_triplet_embedder",
    optimizer="Adagrad(param_groups)",
    cause="update_ratio_out_of_range",
    where=("proj",),
    diverges=None,
    heldout=True,
    note="A metric-learning ReLU embedder (fc1, act1, fc2, act2, proj, L2-normalised output) mapping 20 features of a recorded chaffinch song phrase (syllable rates, trill lengths, end-flourish pitch, ...) so that phrases of the same regional dialect sit together, trained with a triplet margin loss (margin 0.3), Adagrad with two param groups: the trunk (fc1, fc2) at 5e-2 and the projection (proj) meant at 5e-2 and typed 5e-8. proj's updates are about a millionth of the trunk's relative to its weights: it keeps its random init (relative change under 1e-4 over the run) while fc1 moves by over 1%; the trunk alone carries the learning. Finite, no blow-up.",
)
def h259_chaffinch_triplet_proj_lr_typo(ctx: Context) -> None:
    def run(c, proj_lr):
        gen = seeded(25908)
        model = SongEmbedder()
        trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
        opt = torch.optim.Adagrad(
            [{"params": trunk, "lr": 5e-2}, {"params": model.proj.parameters(), "lr": proj_lr}]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

        def loss_fn(out, y):
            return F.triplet_margin_loss(out[:, 0], out[:, 1], out[:, 2], margin=0.3)

        _train(c, model, opt, _song_triplets(gen, 64), 200, loss_fn)
        return {
            n: float((p.detach() - w0[n]).norm() / w0[n].norm())
            for n, p in model.named_parameters()
        }

    moved = run(ctx, 5e-8)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("proj.weight moved under 1e-4 relative over the run", moved["proj.weight"] < 1e-4)
    ctx.check("fc1.weight moved over 1% relative", moved["fc1.weight"] > 1e-2)
    ctx.check(
        "proj.weight moved over 1000x less than fc1.weight",
        moved["proj.weight"] * 1000 < moved["fc1.weight"],
    )


# -- shin-kicking: the resumed config's batch size defaults to 1 for one step --------------------

ONSET_SHIN = 100


@scenario(
    family="shin_kicking_bout_duration_silu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SHIN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long a Cotswold shin-kicking bout lasts from 10 standardised readings (kick rate, straw padding thickness, grip height, stance width, ...), SGD with Nesterov momentum 0.9 at 1e-2, a summed squared error divided by the configured batch size 64, gradient clipping at 10. At step 100 the job resumes and, for its first step, the batch size is read before the config is loaded and takes its default 1: the loss backpropagated is 64x too large and the gradient 64x that of the steps around it. The batches are ordinary; the run recovers; finite.",
)
def h259_shin_kicking_resume_batch_default(ctx: Context) -> None:
    gen = seeded(25909)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = []

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    def scale_loss(step, total):
        configured = 1 if step == ONSET_SHIN else 64
        return total * 64 / configured  # sum over the 64 rows / configured batch size

    def watch(step, out, x, y):
        if step in (ONSET_SHIN - 1, ONSET_SHIN):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 131),
        200,
        loss_fn,
        scale_loss=scale_loss,
        watch=watch,
        clip=10.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_SHIN - 20 : ONSET_SHIN])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SHIN], ratio=0.6))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_SHIN] > 30 * before
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_SHIN + 30] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_SHIN + 50 : ONSET_SHIN + 60]) < 2 * _mean(ls[ONSET_SHIN - 10 : ONSET_SHIN]),
    )


# -- steam devils: RMSprop's lr typed 3e-2 for 3e-4 ----------------------------------------------


@scenario(
    family="steam_devil_lake_vortex_height_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the height of steam devils (small whirls over a warm lake under Arctic air) from 12 standardised readings (water-air temperature gap, wind speed, fetch, humidity, ...), RMSprop, MSE. The lr was meant to be 3e-4 and was typed 3e-2: within the first 20 steps fc2's pre-activations are pushed negative and over 40% of act2's ReLU units (against about 12% after the first step) stop firing on every input (measured on a batch of 2048) and never come back, while the intended rate keeps under 20% dead; the loss stays finite on the live units, no blow-up.",
)
def h259_steam_devil_rmsprop_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25910)
        model = Stack(12, hidden=64)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(11))
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 141), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 3e-4)
    dead = run(ctx, 3e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 under 20% dead after step 0", dead[0] < 0.2)
    ctx.check("act2 over 40% dead over the last 50 steps", min(dead[-50:]) > 0.4)
    ctx.check("the intended lr keeps act2 under 20% dead", max(twin_dead) < 0.2)
    ctx.check(
        "no revival: act2's dead fraction never falls by over 0.05 after step 100",
        min(dead[100:]) > dead[100] - 0.05,
    )


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="bunnock_bone_toss_accuracy_huber_gelu_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) regressing how close a bunnock (horse-bone throwing game) toss lands to the guard bones from 10 standardised readings (bone mass, throw angle, spin, ice hardness, ...) with Student-t noise, AdamW at 3e-3 with weight decay 1e-2, Huber loss, gradient accumulation over 4 micro-batches of 16, linear warm-up for 20 steps then cosine decay (LambdaLR), gradient clipping at 1.0. Trains normally.",
)
def h259_bunnock_accumulation_warmup_control(ctx: Context) -> None:
    gen = seeded(25911)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps, warm = 160, 20

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    stream = _readings(gen, 16, 10, 151, noise=0.0)
    t = torch.distributions.StudentT(3.0)

    def batches():
        while True:
            x, y = next(stream)
            yield x, y + 0.1 * t.sample((len(y),))

    _train(
        ctx,
        model,
        opt,
        batches(),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        sched=sched,
        accumulate=4,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell under half its start", _fell(ls, ratio=0.5))


class StrumNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over a 1-d pickup trace."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(self.pool(h).squeeze(-1))


def _strums(gen, batch, classes=5, length=48, flip=0.1):
    """Pickup traces of five tiple strum patterns (different strum rates and accents) with
    noise; ``flip`` of the labels are wrong (mislabelled recordings)."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = (1.0 + y.float())[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(rate * 0.25 * t + phase) * (1 + 0.3 * torch.rand(batch, 1, generator=gen))
        x = x + 0.4 * torch.randn(batch, length, generator=gen)
        wrong = torch.rand(batch, generator=gen) < flip
        y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="tiple_strum_pattern_conv1d_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a Conv1d net (conv1, act1, conv2, act2, pool, head) classifying a Colombian tiple player's strum pattern (5 kinds) from 48-sample pickup traces with 10% mislabelled recordings, SGD with momentum 0.9, OneCycleLR peaking at 0.1, cross-entropy with label smoothing 0.1, gradient clipping at 2.0. Trains normally.",
)
def h259_tiple_onecycle_label_smoothing_control(ctx: Context) -> None:
    gen = seeded(25912)
    model = StrumNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _strums(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        watch=watch,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("training accuracy over 60% at the end", _mean(acc[-20:]) > 0.6)


@scenario(
    family="thermokarst_lake_drainage_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head with mean and log-variance outputs) predicting a thermokarst lake's seasonal drainage depth and its uncertainty from 10 standardised readings (ice-wedge density, thaw depth, shoreline slope, precipitation, ...), heteroscedastic noise, Gaussian negative log-likelihood, RAdam at 5e-3, ReduceLROnPlateau, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h259_thermokarst_gaussian_nll_fp16_control(ctx: Context) -> None:
    gen = seeded(25913)
    model = Stack(10, hidden=64, out=2, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 10, 161, noise=0.0)

    def batches():
        while True:
            x, y = next(stream)
            yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 1])) * torch.randn(len(y), generator=gen)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-8, 8).exp())

    _train(ctx, model, opt, batches(), 300, loss_fn, sched=sched, scaler=scaler, amp=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("the loss scale never collapsed (stays at or above 64)", min(ctx.scales) >= 64)
