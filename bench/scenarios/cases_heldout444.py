"""Held-out set 444 (``h444_``): hand-written models of crafts, trades and instruments not
covered before.

Faults: a kumis-fermentation affine-coupling flow whose log transform of the alcohol reading has
no floor (a reading of 0.0 at step 90 gives log 0), a catgut-string breaking-load residual
regressor fed one shard never standardised (one corrupted batch), an inkstick-grinding density
regressor whose warm-up peak is typed 3.0 for 0.3 (past 2/sharpness), a bogolan mud-dye shade
ReLU classifier under SGD at lr 2.0 typed for 0.02 (its ReLUs die), a snuff-mill grind
Elman RNN whose recurrent weights are initialised orthogonal with gain 3 (gradients grow through
time), a glove-leather stretch regressor whose input-layer group's lr is typed 3e-10 for 3e-4
(a frozen layer), a barkcloth beating-grade cosine classifier with scale 3000 typed for 30
(softmax saturates), a button-blank defect classifier trained with nll_loss on raw logits (the
head's logits grow without bound), a chair-caning strand-tension regressor whose loss is summed
instead of averaged for one epoch-boundary step (one gradient burst) and a spur-rowel hammer-blow
energy regressor predicting millijoules under fp16 autocast (the head overflows fp16).

Controls: a netting-needle mesh-size regressor under SGD with CosineAnnealingWarmRestarts (the
restarts raise the loss for a few steps), an amate-paper fibre-grade fp16 Conv1d classifier
(GradScaler, AdamW under OneCycleLR, label smoothing, clipping) and a horn-comb tooth tied-weight
autoencoder (Adam under ReduceLROnPlateau, accumulation over 2, Huber loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


# -- kumis fermentation: an affine-coupling flow ---------------------------------------------------


class _LogReading(nn.Module):
    """Log transform of the (positive) alcohol reading, standardised; returns its log-det."""

    def forward(self, x):
        la = torch.log(x[:, 1])
        z = torch.stack([x[:, 0], (la - 0.3) / 0.5], 1)
        return z, -la - math.log(0.5)


class _Coupling(nn.Module):
    """Affine coupling: one coordinate scaled and shifted by a net of the other."""

    def __init__(self, flip, hidden=32):
        super().__init__()
        self.flip = flip
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, z):
        a, b = (z[:, 1:], z[:, :1]) if self.flip else (z[:, :1], z[:, 1:])
        s, t = self.net(a).chunk(2, -1)
        s = 2.0 * torch.tanh(s / 2.0)
        b = b * torch.exp(s) + t
        out = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return out, s.squeeze(-1)


class _KumisFlow(nn.Module):
    def __init__(self, layers=4):
        super().__init__()
        self.log_in = _LogReading()
        self.couplings = nn.ModuleList(_Coupling(i % 2 == 1) for i in range(layers))

    def forward(self, x):
        z, logdet = self.log_in(x)
        for c in self.couplings:
            z, s = c(z)
            logdet = logdet + s
        return z, logdet


def _flow_nll(out, _y):
    z, logdet = out
    return (0.5 * (z * z).sum(1) + math.log(2 * math.pi) - logdet).mean()


def _kumis(gen, batch, zero_at=None):
    """(pH, alcohol %) of mare's-milk batches: pH falls as the alcohol rises, with curvature."""
    step = 0
    while True:
        u = torch.randn(batch, generator=gen)
        alcohol = torch.exp(0.3 + 0.5 * u)
        ph = 4.4 - 0.5 * torch.tanh(u) + 0.1 * u**2 + 0.08 * torch.randn(batch, generator=gen)
        x = torch.stack([(ph - 4.4) / 0.4, alcohol], 1)
        if zero_at is not None and step == zero_at:
            x[3, 1] = 0.0  # a fresh batch read at bottling: 0.0 % alcohol
        step += 1
        yield x, x


KUMIS_ZERO = 90


@scenario(
    family="kumis_ferment_ph_alcohol_affine_coupling_flow",
    optimizer="Adam",
    cause="nonfinite",
    where=("log_in",),
    diverges=KUMIS_ZERO,
    heldout=True,
    onset=KUMIS_ZERO,
    note="Kumis (fermented mare's milk) density model: a normalizing flow of four affine coupling "
    "layers (learnt tanh-bounded log-scale and shift) over (pH, alcohol %), after a log "
    "transform of the alcohol reading, Gaussian base NLL with the log-determinant, Adam. The log "
    "has no floor (no clamp, no epsilon): at step 90 a batch holds a fresh vat read at bottling, "
    "0.0 % alcohol, a valid reading; log 0 = -inf and the loss is non-finite at step 90.",
)
def h444_kumis_flow_log_zero(ctx) -> None:
    gen = seeded(4441)
    model = _KumisFlow()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = {}

    def hook(_m, _inp, out):
        seen["log_in"] = bool(torch.isfinite(out[0]).all())

    model.log_in.register_forward_hook(hook)
    flags = []

    def after(step):
        flags.append(seen.get("log_in", True))

    ls = _loop(ctx, model, opt, _kumis(gen, 128, KUMIS_ZERO), 200, _flow_nll, after=after)
    ctx.check("the loss finite before step 90", _finite(ls[:KUMIS_ZERO]))
    ctx.check("the loss fell before the zero reading", _mean(ls[80:90]) < _mean(ls[:10]) - 0.2)
    ctx.check("the first non-finite loss at step 90", _first_bad(ls) == KUMIS_ZERO)
    ctx.check(
        "log_in's output non-finite at step 90 and finite before",
        len(flags) > KUMIS_ZERO and all(flags[:KUMIS_ZERO]) and not flags[KUMIS_ZERO],
    )


# -- catgut string: one shard never standardised --------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x):
        return x + 0.5 * self.act(self.fc(x))


class _Catgut(nn.Module):
    def __init__(self, d_in=8, width=32, blocks=3):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*(_ResBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x))).squeeze(-1)


CATGUT_SHARD = 110


@scenario(
    family="catgut_string_breaking_load_residual_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=CATGUT_SHARD,
    note="Catgut-string breaking-load regressor (residual ReLU MLP on gauge, twist, dryness and "
    "gut-ribbon features, MSE, SGD momentum 0.9, clipping at 1). One shard, written by an old "
    "export script before the standardisation step, arrives at step 110 in raw units (about 60x "
    "the standardised scale): one corrupted batch, the loss and gradient spike there and the run "
    "recovers.",
)
def h444_catgut_raw_unit_shard(ctx) -> None:
    gen = seeded(4442)
    model = _Catgut()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == CATGUT_SHARD:
            return x * 60.0 + 40.0, y
        return x, y

    ls = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=442), 220, F.mse_loss, alter=alter, clip=1.0
    )
    g = ctx.grad_norms
    before = _median(ls[90:CATGUT_SHARD])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss at step 110 over 50x the median before", ls[CATGUT_SHARD] > 50 * before)
    ctx.check(
        "gradient at step 110 over 20x the median before",
        g[CATGUT_SHARD] > 20 * _median(g[90:CATGUT_SHARD]),
    )
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(ls[-20:]) < 2 * before)


# -- inkstick grinding: a warm-up peak past 2/sharpness -------------------------------------------


def _sharpness(model, loss_fn, batch, iters=20):
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
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


INK_PEAK = 1.0
INK_WARM = 200
INK_ONSET = 60


@scenario(
    family="inkstick_grinding_ink_density_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=INK_ONSET,
    note="Inkstick-grinding ink-density regressor (tanh MLP on stone, water and stroke features, "
    "MSE, plain SGD with a linear warm-up over 200 steps). The warm-up's peak lr is typed 1.0 for "
    "0.1: around step 60 lr x sharpness passes 2, the run hovers at the edge of stability for a "
    "while and then the loss blows up as the lr keeps rising.",
)
def h444_inkstick_warmup_peak_typo(ctx) -> None:
    gen = seeded(4443)
    model = _Net(6, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=INK_PEAK / INK_WARM)
    batches = _readings(gen, 256, 6, seed=443)
    probe = next(batches)
    products = {}

    def before(step):
        lr = INK_PEAK * min(1.0, (step + 1) / INK_WARM)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 10 == 0 and step <= 120:
            products[step] = lr * _sharpness(model, F.mse_loss, probe)

    ls = _loop(ctx, model, opt, batches, 220, F.mse_loss, before=before)
    low = min(v for v in ls if math.isfinite(v))
    bad = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x sharpness under 2 at the start", products.get(0, 9.0) < 2)
    ctx.check(
        "lr x sharpness over 2 at a step from 50 to 80",
        any(v > 2 for s, v in products.items() if 50 <= s <= 80),
    )
    ctx.check("the loss fell before the crossing", _mean(ls[40:50]) < 0.5 * _mean(ls[:10]))
    ctx.check("the loss blows up (over 100x its lowest or non-finite)", bad is not None)
    ctx.check("the blow-up comes after the crossing", bad is not None and bad > INK_ONSET)


# -- bogolan mud-dye: ReLUs killed by an lr typed 100x --------------------------------------


BOGOLAN_LR = 2.0


@scenario(
    family="bogolan_mud_dye_shade_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Bogolan (mud-cloth) shade classifier (two-layer ReLU MLP on mud, leaf-bath and "
    "sun-exposure features, cross-entropy, plain SGD). The lr is typed 2.0 for 0.02: the run "
    "learns for a few steps, then large steps push fc2's biases and weights so that most of its "
    "units are negative on every input; they get no gradient and never come back, and the loss "
    "goes back to chance (ln 6) and stays there, far above a run at 0.02.",
)
def h444_bogolan_lr_typo_dead_relus(ctx) -> None:
    gen = seeded(4444)
    model = _Net(12, 64, 6)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(7), 512, 12, 6, seed=444))
    start_dead = dead_fraction(model.features(probe_x).detach())
    opt = torch.optim.SGD(model.parameters(), lr=BOGOLAN_LR)
    ls = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 6, seed=444), 200, F.cross_entropy, classifier=True
    )
    end_dead = dead_fraction(model.features(probe_x).detach())

    torch.manual_seed(4444)
    ref = _Net(12, 64, 6)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.02)
    ref_ls = _loop(
        None,
        ref,
        ref_opt,
        _grades(seeded(4444), 64, 12, 6, seed=444),
        200,
        F.cross_entropy,
        attach=False,
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of fc2's units dead at the start", start_dead < 0.1)
    ctx.check("over 60% of fc2's units dead at the end", end_dead > 0.6)
    ctx.check("the loss fell under 1.0 in the first 40 steps", min(ls[:40]) < 1.0)
    ctx.check(
        "the loss stalls within 10% of chance (ln 6)", abs(_mean(ls[-50:]) - math.log(6)) < 0.18
    )
    ctx.check("the loss stalls over 2x the reference's", _mean(ls[-20:]) > 2 * _mean(ref_ls[-20:]))


# -- snuff mill: an Elman RNN with recurrent gain 3 ------------------------------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(d_in, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.wx(x) + self.wh(h))


class _SnuffRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.wh.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.cell.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _snuff(gen, batch, steps=40):
    """Millstone speed, feed and moisture over 40 readings; the grind fineness at the end."""
    while True:
        x = torch.randn(batch, steps, 3, generator=gen)
        w = torch.exp(-0.1 * torch.arange(steps).flip(0).float())
        y = torch.tanh((x[:, :, 0] * w).sum(1) / 3) - 0.3 * (x[:, :, 2] * w).sum(1) / 4
        yield x, y


def _time_ratio(model, batch):
    x, y = batch
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.zero_grad()
    return first / max(last, 1e-12)


SNUFF_GAIN = 3.0


@scenario(
    family="snuff_mill_grind_fineness_elman_rnn",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("cell", "cell.wh"),
    diverges=None,
    heldout=True,
    note="Snuff-mill grind-fineness regressor (hand-written Elman tanh RNN over 40 readings of "
    "millstone speed, feed and moisture, MSE on the last state, NAdam, no clipping). The "
    "recurrent weights are initialised orthogonal with gain 3.0 (typed for 1.0): the cell runs "
    "in the chaotic regime and the gradient grows back through time, the first state's "
    "gradient many times the last state's.",
)
def h444_snuff_mill_recurrent_gain(ctx) -> None:
    gen = seeded(4445)
    model = _SnuffRNN(gain=SNUFF_GAIN)
    probe = next(_snuff(torch.Generator().manual_seed(5), 128))
    start_ratio = _time_ratio(model, probe)
    torch.manual_seed(4445)
    sane = _SnuffRNN(gain=1.0)
    sane_ratio = _time_ratio(sane, probe)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ratios = []

    def after(step):
        if step % 20 == 0:
            ratios.append(float(model.states[0].grad.norm() / model.states[-1].grad.norm()))

    ls = _loop(ctx, model, opt, _snuff(gen, 64), 120, F.mse_loss, after=after)
    g = ctx.grad_norms
    ctx.check("the first state's gradient over 20x the last's at gain 3", start_ratio > 20)
    ctx.check("under 5x at gain 1 on the same batch", sane_ratio < 5)
    ctx.check("the ratio stays over 10x during training", _median(ratios) > 10)
    ctx.check("gradient norm over 5x the loss's scale", _median(g) > 5 * math.sqrt(_median(ls)))
    ctx.check("finite", _finite(ls))


# -- glove leather: the input layer's group lr typed 3e-10 -----------------------------------------


@scenario(
    family="glove_leather_stretch_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Glove-leather stretch regressor (SiLU MLP on hide, tannage and thickness features, MSE, "
    "RMSprop with two param groups: the input layer for a lower lr, the rest at 3e-4). The input "
    "layer's lr is typed 3e-10 for 3e-5: fc1 never moves (its updates a vanishing share of its "
    "weights) while the rest trains; the loss falls slowly, nothing blows up.",
)
def h444_glove_leather_frozen_input_group(ctx) -> None:
    gen = seeded(4446)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 3e-10},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 3e-4},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ls = _loop(ctx, model, opt, _readings(gen, 64, 10, seed=446), 200, F.mse_loss)
    moves = _rel_moves(model, start)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1 moves under 1e-5 of its norm", moves["fc1.weight"] < 1e-5)
    ctx.check("fc2 moves over 5% of its norm", moves["fc2.weight"] > 0.05)
    ctx.check("the loss still falls", _mean(ls[-20:]) < _mean(ls[:10]))


def _rel_moves(model, before):
    return {n: _rel_change(before[n], p) for n, p in model.named_parameters() if n in before}


# -- barkcloth: a cosine classifier with scale 3000 ------------------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.scale = scale

    def cosines(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, h):
        return self.scale * self.cosines(h)


class _Barkcloth(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=5, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes, scale)

    def features(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x):
        return self.head(self.features(x))


BARK_SCALE = 3000.0


@scenario(
    family="barkcloth_beating_grade_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Barkcloth beating-grade classifier (GELU MLP with a cosine head: normalised features "
    "against normalised class weights times a scale, cross-entropy, AdamW). The scale is typed "
    "3000 for 30: the cosine margins are multiplied 100x, the softmax saturates and most rows' "
    "target probability rounds to exactly 1.0 in float32.",
)
def h444_barkcloth_cosine_scale_typo(ctx) -> None:
    gen = seeded(4447)
    model = _Barkcloth(scale=BARK_SCALE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ls = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 5, seed=447), 200, F.cross_entropy, classifier=True
    )
    x, y = next(_grades(torch.Generator().manual_seed(9), 512, 10, 5, seed=447))
    with torch.no_grad():
        cos = model.head.cosines(model.features(x))
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(BARK_SCALE * cos, y) > 0.5,
    )
    ctx.check("under 5% at scale 30 on the same cosines", collapsed_fraction(30.0 * cos, y) < 0.05)
    ctx.check("the loss fell", _mean(ls[-10:]) < _mean(ls[:10]))


# -- button blanks: nll_loss on raw logits ---------------------------------------------------------


@scenario(
    family="button_blank_defect_nll_raw_logit_classifier",
    optimizer="SGD Nesterov",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Button-blank defect classifier (ReLU MLP on shell, horn and drill-chatter features, SGD "
    "Nesterov). The loss is F.nll_loss on the raw logits (the log_softmax forgotten): nll_loss "
    "only picks -logit[target], which has no lower bound, so the head's logits grow without "
    "bound and the 'loss' runs towards minus infinity.",
)
def h444_button_blank_nll_on_logits(ctx) -> None:
    gen = seeded(4448)
    model = _Net(10, 48, 4)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(3), 256, 10, 4, seed=448))
    with torch.no_grad():
        start = float(model(probe_x).abs().max())
    ls = _loop(ctx, model, opt, _grades(gen, 64, 10, 4, seed=448), 130, F.nll_loss, classifier=True)
    with torch.no_grad():
        end = float(model(probe_x).abs().max())
    ctx.check("finite", _finite(ls))
    ctx.check("max |logit| over 20x its start", end > 20 * start)
    ctx.check("the 'loss' below -10", ls[-1] < -10)
    ctx.check("still falling at the end", _mean(ls[-10:]) < _mean(ls[-30:-20]))


# -- chair caning: the loss summed for one step ----------------------------------------------------


CANE_STEP = 120


@scenario(
    family="chair_caning_strand_tension_tanh_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CANE_STEP,
    note="Chair-caning strand-tension regressor (tanh MLP on cane width, soak time and weave "
    "pattern, MSE, ASGD, clipping at 2). At the epoch boundary (step 120) the loop re-enters "
    "with the eval path's reduction='sum' flag: that one step backpropagates the loss summed over "
    "128 rows instead of averaged, a 128x gradient burst from an ordinary batch and an ordinary "
    "logged loss; clipped, the run carries on.",
)
def h444_chair_caning_sum_reduction(ctx) -> None:
    gen = seeded(4449)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def backprop(step, loss):
        return loss * 128 if step == CANE_STEP else loss

    ls = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 8, seed=449),
        200,
        F.mse_loss,
        backprop=backprop,
        clip=2.0,
    )
    g = ctx.grad_norms
    ctx.check("finite", _finite(ls))
    ctx.check(
        "gradient at step 120 over 30x the median before",
        g[CANE_STEP] > 30 * _median(g[100:CANE_STEP]),
    )
    ctx.check(
        "the logged loss at step 120 under 2x the median before",
        ls[CANE_STEP] < 2 * _median(ls[100:CANE_STEP]),
    )
    ctx.check("the loss fell overall", _mean(ls[-10:]) < _mean(ls[:10]))


# -- spur rowel: millijoules under fp16 ------------------------------------------------------------


def _hammer(gen, batch, seed=450):
    """Hammer mass, drop height, anvil and bar features; the blow energy in millijoules."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = 45000.0 + 15000.0 * torch.tanh(x @ w / 2) + 500.0 * torch.randn(batch, generator=gen)
        yield x, y


SPUR_BAD = 59


@scenario(
    family="spur_rowel_hammer_blow_energy_fp16_relu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("head",),
    diverges=SPUR_BAD,
    heldout=True,
    note="Spur-rowel hammer-blow energy regressor (ReLU MLP on hammer mass, drop height and bar "
    "features, MSE, Adamax, fp16 autocast with a torch.amp.GradScaler, the head's bias started at "
    "the mean target). The target is kept in millijoules (about 30 000 to 60 000) instead of "
    "joules: as the head learns the spread its fp16 output passes 65504 on the hardest blows and "
    "overflows to inf at step 59; the scaler skips the step and the loss is non-finite.",
)
def h444_spur_rowel_fp16_millijoules(ctx) -> None:
    gen = seeded(4450)
    model = _Net(6, 64, 1)
    nn.init.constant_(model.head.bias, 45000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=0.08)
    scaler = torch.amp.GradScaler("cpu")
    seen = []

    def hook(_m, inp, out):
        seen.append((out.dtype, bool(torch.isfinite(out).all()), inp[0].detach().float()))

    model.head.register_forward_hook(hook)
    ls = _loop(ctx, model, opt, _hammer(gen, 64), 200, F.mse_loss, scaler=scaler, amp=True)
    bad = _first_bad(ls)
    ctx.check("finite before step 59", _finite(ls[:SPUR_BAD]))
    ctx.check("the first non-finite loss at step 59", bad == SPUR_BAD)
    ctx.check(
        "the head's fp16 output non-finite at step 59, finite before",
        len(seen) > SPUR_BAD
        and seen[SPUR_BAD][0] == torch.float16
        and not seen[SPUR_BAD][1]
        and all(f for _, f, _ in seen[:SPUR_BAD]),
    )
    with torch.no_grad():
        h = seen[min(SPUR_BAD, len(seen) - 1)][2]
        wide = F.linear(h, model.head.weight.float(), model.head.bias.float())
    ctx.check(
        "the same head in float32 is finite and over 65504",
        bool(torch.isfinite(wide).all()) and float(wide.abs().max()) > 65504,
    )


# -- healthy controls ------------------------------------------------------------------------------


SGDR_T0 = 60


@scenario(
    family="netting_needle_mesh_size_sgdr_gelu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Netting-needle mesh-size regressor (GELU MLP on twine, gauge-stick and knot features, "
    "MSE, SGD momentum 0.9 under CosineAnnealingWarmRestarts T_0=60, lr 0.2 down to 1e-4, noisy "
    "batches of 32). Each restart jumps the lr back to its peak and the loss visibly rises for a "
    "few steps before it settles lower again, what SGDR users see; control.",
)
def h444_netting_needle_sgdr(ctx) -> None:
    gen = seeded(4451)
    model = _Net(8, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=SGDR_T0, eta_min=1e-4)
    ls = _loop(
        ctx, model, opt, _readings(gen, 32, 8, seed=451, noise=0.1), 240, F.mse_loss, sched=sched
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _mean(ls[-10:]) < 0.5 * _mean(ls[:10]))
    for r in (SGDR_T0, 2 * SGDR_T0, 3 * SGDR_T0):
        ctx.check(
            f"the restart at step {r} raises the loss over 1.3x within 8 steps",
            max(ls[r : r + 8]) > 1.3 * _mean(ls[r - 8 : r]),
        )


class _Amate(nn.Module):
    def __init__(self, channels=2, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool1d(F.silu(self.conv1(x)), 2)
        return self.head(F.silu(self.conv2(x)).amax(-1))


def _fibres(gen, batch, classes=4, length=64):
    """A light-transmission scan across a bark-paper sheet: fibre spacing by grade."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = 3.0 + 2.0 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = 0.4 * torch.randn(batch, 2, length, generator=gen)
        x[:, 0] += torch.sin(6.28 * t / period[:, None] + phase)
        x[:, 1] += 0.5 * y[:, None].float() / classes
        yield x, y


@scenario(
    family="amate_bark_paper_fibre_grade_fp16_silu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Amate bark-paper fibre-grade classifier (SiLU Conv1d on light-transmission scans, fp16 "
    "autocast with a torch.amp.GradScaler, AdamW under OneCycleLR to 3e-3, label smoothing 0.1, "
    "clipping at 1); control.",
)
def h444_amate_fp16_onecycle(ctx) -> None:
    gen = seeded(4452)
    model = _Amate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    ls = _loop(
        ctx,
        model,
        opt,
        _fibres(gen, 64),
        160,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    x, y = next(_fibres(torch.Generator().manual_seed(11), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _mean(ls[-10:]) < 0.6 * _mean(ls[:10]))
    ctx.check("accuracy over 80%", acc > 0.8)


class _HornTiedAE(nn.Module):
    def __init__(self, d_in=20, code=5):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _teeth(gen, batch, d_in=20, code=4, seed=453):
    """Tooth-pitch and thickness profiles along a horn comb: a few underlying factors."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        z = torch.randn(batch, code, generator=gen)
        x = torch.tanh(z) @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="horn_comb_tooth_profile_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Horn-comb tooth-profile autoencoder (tanh encoder, decoder tied to the encoder's "
    "transposed weight, Huber loss, Adam under ReduceLROnPlateau, gradient accumulation over 2 "
    "micro-batches); control.",
)
def h444_horn_comb_tied_ae(ctx) -> None:
    gen = seeded(4453)
    model = _HornTiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    recent = []

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=0.5)

    def after(step):
        recent.append(ctx.losses[-1])
        sched.step(_mean(recent[-10:]))

    ls = _loop(ctx, model, opt, _teeth(gen, 32), 200, loss_fn, accumulate=2, after=after)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _mean(ls[-10:]) < 0.5 * _mean(ls[:10]))
