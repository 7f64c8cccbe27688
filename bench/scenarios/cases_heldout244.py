"""Held-out set 244 (``h244_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kumiko lattice joint-fit regressor whose layer-wise
learning-rate decay was typed 0.05 for 0.95, a stoolball bowl-speed tanh regressor whose StepLR
gamma was typed 10 for 0.1, a repousse dome net whose unclamped sagitta formula meets one
workshop's stake radii in centimetres, a knattleik pairwise player ranker fed a leaked standings
column, a cornett embouchure deep ReLU regressor whose init gain was typed 2.0 for sqrt(2), an
intarsia inlay-gap regressor fed one reading in micrometres, a kente strip two-head net whose
evaluation hook leaves a sum-reduced criterion in place for one step, a hammered-dulcimer
course-tuning regressor whose manual loss scale is not undone on the first step after a resume, a
rackett reed-buzz cosine classifier whose logit scale was stored without its log, a smocking
pleat-tension ReLU regressor whose linear-scaling rule took a per-sample base rate, and three
controls (a fretsaw blade-tension classifier with SGD momentum and weight decay, an ebru
comb-pattern classifier with RAdam param groups, OneCycleLR and label smoothing, a resin-tapping
yield Gaussian-NLL net under fp16 autocast with a GradScaler).

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
        self.losses.append(float(loss))


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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    pre_step=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``pre_step(step)`` runs on the gradients before they are
    measured, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
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
        if pre_step is not None:
            pre_step(step)
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
        if math.isnan(shown):
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
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


def _rel_change(w0: torch.Tensor, w1: torch.Tensor) -> float:
    return float((w1 - w0).norm() / w0.norm())


class Deep(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> fc3 -> act3 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        h = self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x))))))
        out = self.head(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- kumiko lattice: layer-wise lr decay typed 0.05 for 0.95 --------------------------------------


@scenario(
    family="kumiko_lattice_joint_fit_llrd_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, fc3, head) regressing the fit gap of a kumiko lattice joint from 14 standardised readings (wood species, moisture, saw kerf, chisel angle, ...), Adagrad at 0.05, Huber loss, with layer-wise learning-rate decay: each layer's rate is base * decay**depth counted from the head. The decay was typed 0.05 for 0.95, so fc3 runs at 0.05x, fc2 at 0.0025x and fc1 at 1.25e-4x the base rate: fc1's and fc2's updates are orders of magnitude too small for their weights and they barely move while the head and fc3 learn; the loss falls slowly and ends well above that of the intended decay; finite, no blow-up.",
)
def h244_kumiko_lattice_llrd_decay_typo(ctx: Context) -> None:
    steps = 200

    def run(c, decay):
        gen = seeded(24401)
        model = Deep(14, hidden=64)
        layers = [model.head, model.fc3, model.fc2, model.fc1]
        groups = [
            {"params": list(m.parameters()), "lr": 0.05 * decay**depth}
            for depth, m in enumerate(layers)
        ]
        opt = torch.optim.Adagrad(groups, lr=0.05)
        w0 = {n: model.get_submodule(n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
        _train(c, model, opt, _readings(gen, 64, 14, 4401, noise=0.05), steps, F.huber_loss)
        return {n: _rel_change(w, model.get_submodule(n).weight.detach()) for n, w in w0.items()}

    twin = _Quiet()
    twin_change = run(twin, decay=0.95)
    change = run(ctx, decay=0.05)
    ls = ctx.losses
    ctx.check("fc1's weights move under 0.1% over the run", change["fc1"] < 1e-3)
    ctx.check(
        "fc2's weights move under 5%, under 0.1x as much as with decay 0.95",
        change["fc2"] < 0.05 and change["fc2"] < 0.1 * twin_change["fc2"],
    )
    ctx.check("with decay 0.95 fc1's weights move over 5%", twin_change["fc1"] > 0.05)
    ctx.check(
        "the head's weights move over 10x as much as fc1's", change["head"] > 10 * change["fc1"]
    )
    ctx.check(
        "loss at the end over 1.5x that of the intended decay",
        _mean(ls[-20:]) > 1.5 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- stoolball: StepLR gamma typed 10 for 0.1 -----------------------------------------------------

STOOL_ONSET = 80
STOOL_LR = 0.2


@scenario(
    family="stoolball_bowl_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STOOL_ONSET,
    note=f"A tanh MLP (fc1, act1, fc2, act2, head) regressing a stoolball bowler's delivery speed from 10 standardised readings (run-up length, arm angle, ball wear, wind, ...), plain SGD, MSE, with a StepLR decay every {STOOL_ONSET} steps whose gamma was typed 10 for 0.1. At step {STOOL_ONSET} the rate goes up tenfold instead of down, from {STOOL_LR} to {10 * STOOL_LR:g}: lr x sharpness (sharpness about 5, measured by power iteration just before) goes from about 1 to about 10, past the 2 of the stability limit; the run leaves the stable region and the loss blows up within a few steps.",
)
def h244_stoolball_steplr_gamma_typo(ctx: Context) -> None:
    steps = 2 * STOOL_ONSET
    gen = seeded(24402)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=STOOL_LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STOOL_ONSET, gamma=10.0)
    batches = _readings(gen, 128, 10, 4402, noise=0.05)
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 10, 4402, noise=0.05))
    sharp = {}
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == STOOL_ONSET - 1:
            sharp["pre"] = _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, batches, steps, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    lam = sharp.get("pre", float("nan"))
    ctx.check("lr x sharpness under 2 before the onset", lrs[0] * lam < 2.0)
    ctx.check("lr x sharpness over 2 after the onset", lrs[STOOL_ONSET] * lam > 2.0)
    ctx.check("the rate went up 10x at the onset", lrs[STOOL_ONSET] > 9 * lrs[STOOL_ONSET - 1])
    ctx.check("the loss fell before the onset", _fell(ls[:STOOL_ONSET]))
    post = [v if math.isfinite(v) else float("inf") for v in ls[STOOL_ONSET:]]
    ctx.check(
        "the loss blows up over 100x its pre-onset level after the onset",
        max(post) > 100 * _mean(ls[STOOL_ONSET - 10 : STOOL_ONSET]),
    )


# -- repousse: the sagitta formula meets one workshop's radii in centimetres ----------------------


class Sagitta(nn.Module):
    """The dome's sagitta from the stake radius r and the chord c (both mm): r - sqrt(r^2 - c^2/4)."""

    def forward(self, r, c):
        return r - torch.sqrt(r * r - c * c / 4)


class DomeNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.sagitta = Sagitta()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, batch):
        x, r, c = batch
        s = (self.sagitta(r, c) - 10.0) / 5.0
        h = self.act2(self.fc2(self.act1(self.fc1(torch.cat([x, s[:, None]], 1)))))
        return self.head(h).squeeze(-1)


def _domes(gen, batch, onset, seed=4403):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 8, generator=gen)
        r = 60.0 + 60.0 * torch.rand(batch, generator=gen)
        c = (0.6 + 0.8 * torch.rand(batch, generator=gen)) * r
        sag = r - torch.sqrt(r * r - c * c / 4)
        y = (
            0.1 * sag
            + 0.5 * torch.tanh(x @ w / math.sqrt(8))
            + 0.05 * torch.randn(batch, generator=gen)
        )
        if step == onset:
            r = r / 10.0  # this workshop's stake radii were logged in centimetres
        step += 1
        yield (x, r, c), y


REPOUSSE_ONSET = 120


@scenario(
    family="repousse_dome_sagitta_silu_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("sagitta",),
    diverges=REPOUSSE_ONSET,
    heldout=True,
    onset=REPOUSSE_ONSET,
    note="A SiLU net regressing the planishing time of a repousse dome from 8 standardised readings and the dome's sagitta, computed in a parameter-free module (sagitta) as r - sqrt(r^2 - c^2/4) from the stake radius r and the chord c in mm, with no clamp; Adamax at 2e-3, MSE. At step 120 a batch from a workshop that logs stake radii in centimetres arrives: r is 10x too small, r^2 - c^2/4 is negative, the sqrt gives NaN in sagitta's output and the loss is NaN at step 120.",
)
def h244_repousse_sagitta_radius_in_cm(ctx: Context) -> None:
    gen = seeded(24403)
    model = DomeNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == REPOUSSE_ONSET:
            with torch.no_grad():
                seen["nan_sag"] = bool(torch.isnan(model.sagitta(x[1], x[2])).any())
                seen["neg"] = float((x[1] ** 2 - x[2] ** 2 / 4).min())

    _train(ctx, model, opt, _domes(gen, 64, REPOUSSE_ONSET), 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("first non-finite loss at step 120", _first_bad(ls) == REPOUSSE_ONSET)
    ctx.check(
        "the loss is NaN at step 120", len(ls) > REPOUSSE_ONSET and math.isnan(ls[REPOUSSE_ONSET])
    )
    ctx.check("sagitta's output has NaN at step 120", seen.get("nan_sag", False))
    ctx.check("the radicand r^2 - c^2/4 is negative at step 120", seen.get("neg", 1.0) < 0)
    ctx.check("the loss fell before the onset", _fell(ls[:REPOUSSE_ONSET]))


# -- knattleik: a pairwise ranker fed a leaked standings column ----------------------------------


class Scorer(nn.Module):
    """Scores players; a (batch, 2, d) pair gives (batch, 2) scores."""

    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _matches(gen, batch, leak, seed=4404):
    """Pairs of knattleik players from the same match: 9 standardised match statistics each
    (tackles, stick strikes, carries, ...), and which one the judges ranked higher (a noisy
    function of the statistics). ``leak``: the feature table also carries the standardised
    final standings points, which decide the ranking."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        a = torch.randn(batch, 9, generator=gen)
        b = torch.randn(batch, 9, generator=gen)
        ra = a @ w / 3 + 0.7 * torch.randn(batch, generator=gen)
        rb = b @ w / 3 + 0.7 * torch.randn(batch, generator=gen)
        if leak:
            a = torch.cat([a, ra[:, None]], 1)
            b = torch.cat([b, rb[:, None]], 1)
        else:
            a = torch.cat([a, torch.zeros(batch, 1)], 1)
            b = torch.cat([b, torch.zeros(batch, 1)], 1)
        yield torch.stack([a, b], 1), (ra > rb).float() * 2 - 1


def _ranknet(s, sign):
    """RankNet: binary cross-entropy on the score difference of each pair."""
    return F.binary_cross_entropy_with_logits(s[:, 0] - s[:, 1], (sign + 1) / 2)


@scenario(
    family="knattleik_player_pairwise_ranker",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU scorer (fc1, act1, fc2, act2, head) ranking knattleik players from 9 standardised match statistics, trained on judged pairs with the pairwise RankNet loss (binary cross-entropy on s_a - s_b against which player the judges ranked higher), Adam at 1e-2. The feature export left the standardised final-standings column in the table, and the standings decide the judges' ranking: every pair becomes separable, the pairwise loss keeps rewarding a wider margin and Adam's normalised steps drive the head's scores outward without bound: their spread (on a fixed batch of 512 players) grows over 100x from step 0 and over 10x from step 10 to the end and is still growing, while the loss goes under 0.05; finite, no blow-up. Without the leaked column the score spread stays bounded.",
)
def h244_knattleik_ranker_leaked_standings(ctx: Context) -> None:
    steps = 250
    probe_gen = torch.Generator().manual_seed(9)

    def run(c, leak):
        gen = seeded(24404)
        model = Scorer(10)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        probe = next(_matches(probe_gen, 512, leak))[0][:, 0]
        spread = []

        def after(step):
            with torch.no_grad():
                spread.append(float(model(probe).std()))

        _train(c, model, opt, _matches(gen, 64, leak), steps, _ranknet, after=after)
        return spread

    twin = _Quiet()
    twin_spread = run(twin, leak=False)
    model_spread = run(ctx, leak=True)
    ls = ctx.losses
    ctx.check(
        "score spread grows over 100x from step 0 and 10x from step 10",
        model_spread[-1] > 100 * model_spread[0] and model_spread[-1] > 10 * model_spread[10],
    )
    ctx.check(
        "score spread still growing over the last 50 steps",
        model_spread[-1] > 1.1 * model_spread[-50],
    )
    ctx.check(
        "without the leak the spread stays under 3x its step-10 value",
        twin_spread[-1] < 3 * twin_spread[10],
    )
    ctx.check(
        "the pairwise loss goes under 0.05, the twin's stays over 0.3",
        _mean(ls[-20:]) < 0.05 and _mean(twin.losses[-20:]) > 0.3,
    )
    ctx.check("finite", _finite(ls))


# -- cornett: a deep ReLU regressor whose init gain was typed 2.0 for sqrt(2) ---------------------


class DeepPlain(nn.Module):
    """Twelve Linear + ReLU layers (layers.0 ... layers.11) and a head, no normalisation."""

    def __init__(self, d_in, width=64, depth=12, gain=2.0**0.5):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in [*self.layers, self.head]:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="cornett_embouchure_deep_relu_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer ReLU MLP with no normalisation (layers.0 ... layers.11, head) regressing a cornett player's pitch deviation from 16 standardised embouchure readings (lip pressure, air speed, mouthpiece angle, ...), SGD with momentum 0.9 at 1e-3, MSE, gradients clipped at norm 1. Its init was hand-written as normal(0, gain / sqrt(fan_in)) with gain typed 2.0 for sqrt(2): every layer amplifies by about sqrt(2) on top of what ReLU loses, so activations and back-propagated gradients grow through depth; the gradient at layers.0's output is over 30x that at layers.11's from step 0 and the loss starts near 1e3. Clipping keeps the run from blowing up, but the pre-clip gradient norm stays over 100x that of the intended init for the whole run and the loss ends over 10x higher; finite, no divergence. With gain sqrt(2) the same run trains.",
)
def h244_cornett_init_gain_typo(ctx: Context) -> None:
    steps = 120

    def run(c, gain):
        gen = seeded(24405)
        model = DeepPlain(16, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        ratio = {}

        def depth_ratio():
            """|dL/d(layers.0 output)| / |dL/d(layers.11 output)| on a fixed batch."""
            x, y = next(_readings(torch.Generator().manual_seed(3), 256, 16, 4405))
            outs = []
            h = x
            for layer in model.layers:
                z = layer(h)
                z.retain_grad()
                outs.append(z)
                h = F.relu(z)
            F.mse_loss(model.head(h).squeeze(-1), y).backward()
            model.zero_grad()
            return float(outs[0].grad.norm() / outs[-1].grad.norm())

        ratio["r"] = depth_ratio()
        _train(c, model, opt, _readings(gen, 64, 16, 4405, noise=0.05), steps, F.mse_loss, clip=1.0)
        return ratio["r"]

    twin = _Quiet()
    twin_ratio = run(twin, gain=math.sqrt(2.0))
    ratio = run(ctx, gain=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at layers.0's output over 30x that at layers.11's at step 0", ratio > 30
    )
    ctx.check("with gain sqrt(2) the ratio is under 5", twin_ratio < 5)
    ctx.check(
        "pre-clip gradient norm over 100x the intended init's, early and late",
        _median(gn[:30]) > 100 * _median(twin.grad_norms[:30])
        and _median(gn[-30:]) > 100 * _median(twin.grad_norms[-30:]),
    )
    ctx.check(
        "loss at the end over 10x that of the intended init",
        _mean(ls[-20:]) > 10 * _mean(twin.losses[-20:]),
    )
    ctx.check("with gain sqrt(2) the loss falls", _fell(twin.losses))
    ctx.check("finite", _finite(ls))


# -- intarsia: one inlay-gap reading logged in micrometres ----------------------------------------

INTARSIA_ONSET = 130


def _inlays(gen, batch, onset, seed=4406):
    """Twelve standardised readings of an intarsia inlay (veneer thickness, knife bevel, wood
    moisture, glue open time, ...) and the final joint gap, standardised; at ``onset`` one
    sample's feeler-gauge reading (feature 0, in mm about 0.1) comes in micrometres."""
    step = 0
    for x, y in _readings(gen, batch, 12, seed, noise=0.05):
        if step == onset:
            x = x.clone()
            x[7, 0] = x[7, 0] * 1000.0 + 100.0
        step += 1
        yield x, y


@scenario(
    family="intarsia_inlay_gap_silu_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=INTARSIA_ONSET,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the joint gap of an intarsia inlay from 12 standardised readings (feeler-gauge gap, veneer thickness, knife bevel, moisture, ...), SGD with Nesterov momentum at 0.02, MSE, gradients clipped at norm 1. At step 130 one sample in the batch comes from a bench whose feeler gauge logs micrometres, not millimetres: its first feature is about 1000x too large. That batch's loss and gradient spike (gradient over 50x the median), clipping limits the step and the run recovers; finite, no divergence.",
)
def h244_intarsia_gap_in_micrometres(ctx: Context) -> None:
    gen = seeded(24406)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    _train(ctx, model, opt, _inlays(gen, 64, INTARSIA_ONSET), 220, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    k = INTARSIA_ONSET
    ctx.check(
        "gradient at the onset over 50x the median before", gn[k] > 50 * _median(gn[k - 50 : k])
    )
    ctx.check("loss at the onset over 20x the median before", ls[k] > 20 * _median(ls[k - 50 : k]))
    ctx.check("the loss fell before the onset", _fell(ls[:k]))
    ctx.check(
        "the run recovers: last 20 steps under 2x the 20 before the onset",
        _mean(ls[-20:]) < 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite", _finite(ls))


# -- kente: an evaluation hook leaves a sum-reduced criterion in place for one step ---------------

KENTE_ONSET = 100


class KenteNet(nn.Module):
    """A GELU trunk with a motif head (cross-entropy over 6 motifs) and a strip-width head (MSE)."""

    def __init__(self, d_in=16, hidden=64, motifs=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.motif_head = nn.Linear(hidden, motifs)
        self.width_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.motif_head(h), self.width_head(h).squeeze(-1)


def _strips(gen, batch, seed=4407):
    """Sixteen readings of a woven kente strip (warp count, weft colours, beater pressure, ...):
    its motif (6 kinds) and its width, standardised."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(6, 16, generator=g)
    wv = torch.randn(16, generator=g)
    while True:
        k = torch.randint(0, 6, (batch,), generator=gen)
        x = protos[k] + 0.9 * torch.randn(batch, 16, generator=gen)
        w = torch.tanh(x @ wv / 4) + 0.05 * torch.randn(batch, generator=gen)
        yield x, (k, w)


@scenario(
    family="kente_strip_motif_width_two_head_net",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KENTE_ONSET,
    note="A GELU trunk (fc1, act1, fc2, act2) with a motif head (cross-entropy over 6 kente motifs) and a strip-width head (MSE), ASGD at 0.02, batch 256. An evaluation hook run at step 100 swaps the width criterion for MSELoss(reduction='sum') to report a total, and the training step right after uses it before it is restored: that step's width loss and gradient are 256x too large (total gradient over 30x the median), not because of the data. The run takes one large step and recovers; finite, no divergence.",
)
def h244_kente_sum_reduction_left_in(ctx: Context) -> None:
    gen = seeded(24407)
    model = KenteNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    crit = {"width": nn.MSELoss()}

    def before(step):
        crit["width"] = nn.MSELoss(reduction="sum") if step == KENTE_ONSET else nn.MSELoss()

    def loss_fn(out, y):
        return F.cross_entropy(out[0], y[0]) + crit["width"](out[1], y[1])

    _train(ctx, model, opt, _strips(gen, 256), 200, loss_fn, classifier=True, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    k = KENTE_ONSET
    ctx.check(
        "gradient at the onset over 30x the median before", gn[k] > 30 * _median(gn[k - 50 : k])
    )
    ctx.check(
        "the gradient after the onset back under 3x the median",
        _median(gn[k + 5 : k + 30]) < 3 * _median(gn[k - 50 : k]),
    )
    ctx.check("the loss fell before the onset", _fell(ls[:k]))
    ctx.check(
        "the run recovers: last 20 under 1.5x the 20 before the onset",
        _mean(ls[-20:]) < 1.5 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite", _finite(ls))


# -- hammered dulcimer: the manual loss scale is not undone on the first step after a resume ------

DULCIMER_ONSET = 60


@scenario(
    family="hammered_dulcimer_course_tuning_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=DULCIMER_ONSET,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a hammered dulcimer's string course drifts from pitch from 12 standardised readings (bridge position, string gauge, humidity, hammer weight, ...), AdamW at 1e-3, MSE. The training script multiplies the loss by a static scale of 2**16 and divides the gradients by it before the step; on the first step after the resume at step 60 the unscale is skipped, so one gradient 65536x too large enters AdamW's second moment. The following updates are over 10x smaller (v decays only as 0.999**t, hundreds of steps): the loss stalls where it was and ends well above that of a run without the bug; finite, no blow-up.",
)
def h244_dulcimer_loss_scale_not_undone(ctx: Context) -> None:
    steps = 220
    scale = 2.0**16

    def run(c, bug):
        gen = seeded(24408)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        moves = []
        prev = [torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()]

        def scale_loss(step, loss):
            return loss * scale

        def unscale(step):
            if bug and step == DULCIMER_ONSET:
                return
            for p in model.parameters():
                if p.grad is not None:
                    p.grad /= scale

        def after(step):
            now = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
            moves.append(float((now - prev[0]).norm()))
            prev[0] = now

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 12, 4408, noise=0.05),
            steps,
            F.mse_loss,
            scale_loss=scale_loss,
            pre_step=unscale,
            after=after,
        )
        return moves

    twin = _Quiet()
    twin_moves = run(twin, bug=False)
    moves = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    k = DULCIMER_ONSET
    ctx.check(
        "gradient at the onset over 1e4x the median before", gn[k] > 1e4 * _median(gn[k - 30 : k])
    )
    ctx.check(
        "updates 20-100 steps after the onset under 0.1x those before it",
        _mean(moves[k + 20 : k + 100]) < 0.1 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "without the bug the updates keep their size",
        _mean(twin_moves[k + 20 : k + 100]) > 0.3 * _mean(twin_moves[k - 30 : k]),
    )
    ctx.check(
        "loss at the end over 1.5x that of the run without the bug",
        _mean(ls[-20:]) > 1.5 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- rackett: the cosine classifier's logit scale stored without its log --------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, init_scale, bug):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        # intended: log(init_scale), exponentiated in forward
        self.log_scale = nn.Parameter(torch.tensor(init_scale if bug else math.log(init_scale)))

    def forward(self, h):
        return self.log_scale.exp() * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class RackettNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=5, bug=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, 14.3, bug)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="rackett_reed_buzz_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU trunk (fc1, act1, fc2, act2) with a cosine-similarity head classifying a rackett's reed buzz into 5 grades from 20 standardised spectral readings, NAdam at 1e-3, cross-entropy. The head keeps a learnable log logit scale, exponentiated in forward, to start at 14.3 (1/0.07); the init stored 14.3 itself instead of log(14.3), so the scale is exp(14.3), about 1.6e6: the softmax saturates: over 95% of rows have a top float32 probability of exactly 1.0 and over half give their target exactly 1.0; the loss does not converge as it does with the intended scale; finite.",
)
def h244_rackett_logit_scale_without_log(ctx: Context) -> None:
    steps = 150

    def run(c, bug):
        gen = seeded(24409)
        model = RackettNet(bug=bug)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        coll = []

        def watch(step, out, x, y):
            coll.append(
                (
                    collapsed_fraction(out.detach(), y),
                    float((torch.softmax(out.detach(), -1).max(-1).values == 1.0).float().mean()),
                )
            )

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 20, 5, 4409),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return coll

    twin = _Quiet()
    twin_coll = run(twin, bug=False)
    coll = run(ctx, bug=True)
    ls = ctx.losses
    ctx.check(
        "over half the rows give the target exactly 1.0 at the end",
        _mean([a for a, _ in coll[-10:]]) > 0.5,
    )
    ctx.check(
        "over 95% of rows have a top probability of exactly 1.0",
        _mean([b for _, b in coll[-10:]]) > 0.95,
    )
    ctx.check("with the intended scale no row saturates", max(a for a, _ in twin_coll) == 0.0)
    ctx.check(
        "loss at the end over 3x that of the intended scale",
        _mean(ls[-20:]) > 3 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- smocking: switched to RMSprop, keeping its default lr 0.01 -----------------------------------


@scenario(
    family="smocking_pleat_tension_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head; 32 units wide) regressing the thread tension of a smocked pleat from 12 standardised readings (pleat depth, fabric weight, stitch spacing, gathering thread, ...), Adam, MSE, batch 256. The learning rate comes from the linear-scaling rule, base_lr * batch / 256, but the base was written per sample (1e-3 * 256) instead of per 256-sample batch, so Adam runs at 0.256: its large steps push fc2's pre-activations negative and act2's units stop firing on every input (measured on a batch of 2048), from under 20% at step 0 to over 85% at the end, and none comes back; the two or so live units leave the loss over 3x that of a run at a sane 1e-2; finite, no blow-up.",
)
def h244_smocking_linear_scaling_per_sample(ctx: Context) -> None:
    steps = 250

    def run(c, lr):
        gen = seeded(24410)
        model = Stack(12, hidden=32)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(11))
        dead = []

        def after(step):
            with torch.no_grad():
                h1 = model.act1(model.fc1(probe))
                h2 = model.act2(model.fc2(h1))
                dead.append((dead_fraction(h1), dead_fraction(h2)))

        batches = _readings(gen, 256, 12, 4410, noise=0.05)
        _train(c, model, opt, batches, steps, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, lr=1e-2)
    dead = run(ctx, lr=1e-3 * 256)
    ls = ctx.losses
    ctx.check("act2 over 85% dead at the end", dead[-1][1] > 0.85)
    ctx.check("act2 under 20% dead after the first step", dead[0][1] < 0.2)
    ctx.check("at lr 1e-2 act2 stays under 30% dead", twin_dead[-1][1] < 0.3)
    ctx.check("act2's dead units do not revive", dead[-1][1] >= dead[100][1] - 0.02)
    ctx.check(
        "loss at the end over 3x that of a run at lr 1e-2",
        _mean(ls[-20:]) > 3 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


def _accuracy(model, batch) -> float:
    with torch.no_grad():
        x, y = batch
        return float((model(x).argmax(-1) == y).float().mean())


@scenario(
    family="fretsaw_blade_tension_relu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) classifying a fretsaw blade's tension into 7 bands from 18 standardised readings (blade pitch, ring frequency, cut speed, ...), with 10% of labels mislabelled by the luthier's apprentice; SGD with momentum 0.9 and weight decay 5e-4 at 0.05, linear warm-up over 15 steps then cosine decay (LambdaLR), cross-entropy. Trains normally.",
)
def h244_fretsaw_sgd_momentum_weight_decay(ctx: Context) -> None:
    steps = 200
    gen = seeded(24411)
    model = Stack(18, hidden=64, out=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 15 if s < 15 else 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))
        ),
    )

    def noisy(step, x, y):
        flip = torch.rand(len(y), generator=gen) < 0.1
        return x, torch.where(flip, torch.randint(0, 7, y.shape, generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 7, 4411),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        alter=noisy,
    )
    ls = ctx.losses
    acc = _accuracy(model, next(_kinds(torch.Generator().manual_seed(12), 1024, 18, 7, 4411)))
    ctx.check("loss fell below 0.6x its start", _fell(ls, ratio=0.6))
    ctx.check("clean accuracy over 0.8", acc > 0.8)
    ctx.check("finite", _finite(ls))


@scenario(
    family="ebru_marbling_comb_pattern_gelu_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying an ebru marbling sheet's comb pattern (6 kinds) from 24 standardised readings (size viscosity, comb spacing, paint drop counts, ...), RAdam with two param groups (the head at 2x the trunk's rate), OneCycleLR to 3e-3, label smoothing 0.1, clipping at norm 1. Trains normally.",
)
def h244_ebru_radam_onecycle_label_smoothing(ctx: Context) -> None:
    steps = 180
    gen = seeded(24412)
    model = Stack(24, hidden=64, out=6, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.RAdam([{"params": trunk}, {"params": model.head.parameters()}], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-3, 6e-3], total_steps=steps)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 6, 4412),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ls = ctx.losses
    acc = _accuracy(model, next(_kinds(torch.Generator().manual_seed(13), 1024, 24, 6, 4412)))
    ctx.check("loss fell below 0.6x its start", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 0.8", acc > 0.8)
    ctx.check("finite", _finite(ls))


class TapNet(nn.Module):
    """A SiLU trunk with a mean and a log-variance head (Gaussian NLL)."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-8, 8)], -1)


def _tapping(gen, batch, seed=4413):
    """Ten standardised readings of a pine's resin tapping (cut depth, streak angle,
    temperature, stimulant, ...) and the week's yield, standardised, with noise that grows with
    the temperature reading."""
    for x, y in _readings(gen, batch, 10, seed, noise=0.0):
        yield x, y + (0.1 + 0.2 * torch.sigmoid(x[:, 2])) * torch.randn(batch, generator=gen)


def _gauss_nll(out, y):
    out = out.float()
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="resin_tapping_yield_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU trunk with mean and log-variance heads predicting a pine's weekly resin yield from 10 standardised tapping readings (cut depth, streak angle, temperature, ...) with heteroscedastic noise, Gaussian NLL, AdamW at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 batches, clipping at norm 5, ReduceLROnPlateau. Trains normally.",
)
def h244_resin_tapping_fp16_gaussian_nll(ctx: Context) -> None:
    steps = 150
    gen = seeded(24413)
    model = TapNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _tapping(gen, 64),
        steps,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
        clip=5.0,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check(
        "the scaler's scale stays finite and positive",
        all(0 < s < float("inf") for s in ctx.scales),
    )
    ctx.check("finite", _finite(ls))
