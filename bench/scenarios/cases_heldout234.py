"""Held-out set 234 (``h234_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a willow-spiling bank-hazard multi-label tagger whose
per-label pos_weight was computed as (neg - pos) / pos, a treenail peg-shear SiLU regressor whose
resume path multiplies the accumulated loss by the accumulation count once, an Aunt Sally
throw-outcome GELU classifier resumed from a checkpoint whose renamed head keys were dropped by
``strict=False``, a racing-pigeon arrival Elman net whose identity recurrent init was scaled 1.15,
a bar-billiards pot-angle tanh regressor whose linear-scaling rule counted the accumulation steps
twice, a worm-charming turnout net with a hand-rolled BCE on sigmoid outputs, a telegraph-sounder
fist net whose log-energy feature is summed in fp16 under autocast, a shingle-splitting froe-yield
ReLU net at Adamax 0.05, an orrery gear-train Gaussian-NLL net whose trunk warm-up uses integer
division, a hair-hygrometer drift regressor fed one logger's -9999 sentinel, and three controls
(a kirigami panel-stiffness regressor with heavy-tailed inputs and clipping, a tiddlywinks squidge
shot classifier, an adze-hewing chip tied-weight autoencoder under fp16 autocast).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


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
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
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


ONSET_BB = 24
LR_BB = 0.05
DIV_WC = 102


# -- willow spiling: per-label pos_weight computed as (neg - pos) / pos ---------------------------


def _banks(gen, batch, seed=1):
    """Twelve standardised readings of a riverbank reinforced with willow spiling (flow speed,
    bank slope, soil cohesion, stake spacing, ...) and six hazard tags (scour, undercut, slump,
    washout, browsing damage, stake rot); the tags' prevalences run from 15% to 80%."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 6, generator=g)
    offset = torch.tensor([-1.5, -0.8, 0.0, 0.6, 1.1, 1.6])
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12) * 2.0 + offset
        y = (torch.rand(batch, 6, generator=gen) < torch.sigmoid(2.0 * z)).float()
        yield x, y


@scenario(
    family="willow_spiling_bank_hazard_multilabel_tagger",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging six hazards of a willow-spiled riverbank (scour, undercut, slump, washout, browsing damage, stake rot) from 12 standardised readings, AdamW at 3e-3, BCEWithLogitsLoss with per-label pos_weight from the label counts. The weights were meant as n_neg / n_pos but were written (n_neg - n_pos) / n_pos, which is negative for the three tags present in over half the banks. For those tags the positive term -pw * log sigmoid(z) rewards pushing z to minus infinity: the head's logits for them grow without bound (over 20x their early size), the loss falls through 0 and keeps falling; finite over the run.",
)
def h234_willow_spiling_negative_pos_weight(ctx: Context) -> None:
    gen = seeded(23401)
    counts = torch.zeros(6)
    n = 0
    probe = _banks(torch.Generator().manual_seed(7), 512)
    for _ in range(4):
        _, y = next(probe)
        counts += y.sum(0)
        n += len(y)
    pos_weight = (n - 2 * counts) / counts  # (n_neg - n_pos) / n_pos; meant n_neg / n_pos
    model = Stack(12, hidden=64, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    neg = pos_weight < 0
    sizes = {}

    def watch(step, out, x, y):
        sizes[step] = float(out.detach()[:, neg].abs().mean())

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, y, pos_weight=pos_weight)

    _train(ctx, model, opt, _banks(gen, 64), 260, loss_fn, watch=watch)
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(10, 20)])
    late = _mean([sizes[s] for s in range(240, 260)])
    ctx.check("some tags' pos_weight negative", bool(neg.any()))
    ctx.check("their logits grew over 20x from steps 10-20 to the end", late > 20 * early)
    ctx.check(
        "their logits still growing at the end",
        late > 1.1 * _mean([sizes[s] for s in range(200, 220)]),
    )
    ctx.check("loss below 0 at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- treenail: the resume path multiplies the accumulated loss by the count once ------------------


def _pegs(gen, batch, seed=2):
    """Ten standardised readings of an oak treenail in a timber-frame joint (peg diameter, draw-
    bore offset, moisture, grain run-out, ...) and the joint's shear strength, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="treenail_peg_shear_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a timber-frame joint's shear strength from 10 standardised readings of its oak treenail, SGD with Nesterov momentum 0.9 at 0.01, MSE, gradient accumulation over 8 micro-batches. The job is preempted and resumed at step 110; the resume path rebuilds the accumulation with loss * accum where the main loop has loss / accum, so that one step's gradient is 64x the usual. The burst is not in the data (the batches are ordinary); the run takes one large step and recovers; finite.",
)
def h234_treenail_resume_accumulation(ctx: Context) -> None:
    gen = seeded(23402)
    onset, accum = 110, 8
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def scale_loss(step, total):
        return total * accum * accum if step == onset else total  # loss * accum, not / accum

    _train(
        ctx,
        model,
        opt,
        _pegs(gen, 16),
        200,
        F.mse_loss,
        accumulate=accum,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[onset - 20 : onset])
    ctx.check("gradient at the onset over 30x the median before", gn[onset] > 30 * before)
    ctx.check(
        "gradients after the onset back under 5x the median before",
        _median(gn[onset + 20 : onset + 40]) < 5 * before,
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- aunt sally: resumed from a checkpoint whose renamed head keys strict=False dropped -----------


class Sally(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="aunt_sally_throw_outcome_gelu_classifier",
    optimizer="Adam",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying an Aunt Sally throw's outcome (dolly knocked clean off, iron hit, dolly hit but stays, miss) from 10 standardised readings of the stick's release, Adam at 2e-3, cross-entropy. The pub-league job is preempted and resumed at step 120 from a checkpoint written before a refactor renamed the head (classifier.* in the file, head.* in the model); load_state_dict(strict=False) loads fc1 and fc2 and silently leaves the head at a fresh init. The loss jumps back to about ln 4 at the resume and recovers within a few dozen steps as the head relearns on the intact features; finite.",
)
def h234_aunt_sally_strict_false_resume(ctx: Context) -> None:
    gen = seeded(23403)
    onset = 120
    model = Sally()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    saved = {}

    def before(step):
        if step == onset - 1:
            state = model.state_dict()
            saved["ckpt"] = {k.replace("head.", "classifier."): v.clone() for k, v in state.items()}
        if step == onset:  # resume: rebuild the model, load the checkpoint with strict=False
            fresh = Sally()
            result = fresh.load_state_dict(saved["ckpt"], strict=False)
            saved["missing"] = list(result.missing_keys)
            with torch.no_grad():
                for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
                    p.copy_(q)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 4, seed=3, noise=0.8),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ls = ctx.losses
    pre = _mean(ls[onset - 10 : onset])
    ctx.check("the head's keys missing from the load", "head.weight" in saved.get("missing", []))
    ctx.check("loss at the resume over 4x the 10 steps before", ls[onset] > 4 * pre)
    ctx.check(
        "loss back under 1.5x its pre-resume level within 40 steps",
        _mean(ls[onset + 35 : onset + 45]) < 1.5 * pre,
    )
    ctx.check("loss fell before the resume", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- racing pigeons: the identity recurrent init scaled 1.15 -------------------------------------


class LoftElman(nn.Module):
    """A hand-written ReLU Elman net (inp, rec, head) over hourly frames of a race."""

    def __init__(self, feat=4, hidden=32, scale=1.15):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(scale * torch.eye(hidden))
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _legs(gen, batch, length=56, seed=4):
    """A racing pigeon's 56 hourly frames (head wind, cross wind, cloud cover, sun elevation),
    standardised, and its arrival delay against the loft's expected time, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -12:] @ w / 2).mean(1) * 2
        yield x, y


@scenario(
    family="pigeon_racing_arrival_relu_elman_net",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=1,
    heldout=True,
    note="A hand-written ReLU Elman net (inp, rec, head) regressing a racing pigeon's arrival delay from 56 hourly frames of weather along the route, plain SGD at 1e-3, MSE. The recurrent weight follows the IRNN recipe (identity init) but the loft's config scales it by 1.15, a value meant for the input weights (the recipe keeps the identity at 1 or just under): with ReLU keeping the state positive, the state and the gradient through time grow by about 1.15 per hour, so at step 0 the gradient on the first hour's state is over 1000x the last hour's and the loss is millions of times a 0.9-scaled twin's; the first SGD step on that gradient sends the loss to inf at step 1.",
)
def h234_pigeon_racing_irnn_scale(ctx: Context) -> None:
    gen = seeded(23404)
    model = LoftElman()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = {}

    def after(step):
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            seen["ratio"] = float(first.norm() / last.norm()) if last.norm() > 0 else math.inf

    _train(ctx, model, opt, _legs(gen, 32), 80, F.mse_loss, after=after)
    ls = ctx.losses
    twin = _Quiet()
    gen = seeded(23404)
    healthy = LoftElman(scale=0.9)
    opt2 = torch.optim.SGD(healthy.parameters(), lr=1e-3)
    _train(twin, healthy, opt2, _legs(gen, 32), 5, F.mse_loss)
    ctx.check(
        "gradient on the first hour's state over 1000x the last hour's at step 0",
        seen.get("ratio", 0.0) > 1000,
    )
    ctx.check("loss at step 0 over 1e5x the 0.9-scaled twin's", ls[0] > 1e5 * twin.losses[0])
    ctx.check("the twin's loss finite", _finite(twin.losses))
    ctx.check("loss non-finite at step 1", _first_bad(ls) == 1)


# -- bar billiards: the linear-scaling rule counted the accumulation steps twice -----------------


def _pots(gen, batch, seed=5):
    """Ten standardised readings of a bar-billiards shot (cue angle, spin, distance to the mushroom
    pegs, ...) and the angle the ball enters the hole at, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


class PotNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


@scenario(
    family="bar_billiards_pot_angle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_BB,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing the entry angle of a bar-billiards pot from 10 standardised readings of the shot, plain SGD, MSE, linear warm-up over 60 steps. The peak rate comes from the linear-scaling rule base_lr x global_batch / 64, and global_batch was computed as batch x accumulation x accumulation (the accumulation of 4 counted twice), so the peak is 4x the intended one. During the warm-up the rate passes 2 / sharpness (the top Hessian eigenvalue, measured): the loss oscillates and blows up; the intended peak stays under the limit.",
)
def h234_bar_billiards_scaling_rule(ctx: Context) -> None:
    gen = seeded(23405)
    base, batch, accum, warm = LR_BB, 64, 4, 60
    peak = base * batch * accum * accum / 64  # meant base * batch * accum / 64
    model = PotNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sharp = {}
    probe = next(_pots(torch.Generator().manual_seed(9), 256))

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for grp in opt.param_groups:
            grp["lr"] = lr
        if step in (0, ONSET_BB):
            sharp[step] = (lr, _sharpness(model, F.mse_loss, probe))

    _train(ctx, model, opt, _pots(gen, batch), 200, F.mse_loss, before=before)
    ls = ctx.losses
    lam0 = sharp[0][1]
    lr_on, lam_on = sharp.get(ONSET_BB, (0.0, 0.0))
    ctx.check("lr x sharpness past 2 at the onset", lr_on * lam_on > 2)
    ctx.check("the intended peak (a quarter) under 2 / sharpness", peak / accum * lam_on < 2)
    ctx.check("lr x sharpness under 2 at step 0", sharp[0][0] * lam0 < 2)
    ctx.check("loss fell before the onset", min(ls[:ONSET_BB]) < 0.7 * ls[0])
    ctx.check(
        "the run blows up (non-finite or over 100x its start)",
        _first_bad(ls) is not None or max(ls) > 100 * ls[0],
    )


# -- worm charming: a hand-rolled BCE on sigmoid outputs ------------------------------------------


class WormNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _plots(gen, batch, seed=6):
    """Ten standardised readings of a worm-charming plot (soil moisture, fork vibration frequency,
    grass length, ...) and whether it brings up more worms than the contest median."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (x @ w > 0).float()


def _hand_bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # no clamp, no eps


@scenario(
    family="worm_charming_turnout_sigmoid_mlp",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("prob", "head"),
    diverges=DIV_WC,
    onset=DIV_WC,
    heldout=True,
    note="A ReLU MLP (fc1, act1, head, prob = nn.Sigmoid) predicting whether a worm-charming plot beats the contest median from 10 standardised readings, RMSprop at 3e-3, with a hand-rolled BCE -(y log p + (1 - y) log(1 - p)) on the sigmoid's output, no clamp and no eps. The classes are separable, the head's logits keep growing, and once one passes about 16.6 the float32 sigmoid rounds to exactly 1.0: log(1 - p) is -inf and 0 x -inf gives NaN in the loss at the first such step.",
)
def h234_worm_charming_hand_bce(ctx: Context) -> None:
    gen = seeded(23406)
    model = WormNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    seen = {}

    def watch(step, out, x, y):
        if "first_one" not in seen and bool((out.detach() == 1.0).any()):
            seen["first_one"] = step
            with torch.no_grad():
                seen["logit"] = float(model.head(model.act1(model.fc1(x))).max())

    _train(ctx, model, opt, _plots(gen, 64), 300, _hand_bce, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"loss NaN at step {DIV_WC}", bad == DIV_WC and math.isnan(ls[DIV_WC]))
    ctx.check("a sigmoid output exactly 1.0 at that step", seen.get("first_one") == bad)
    ctx.check("the largest logit then above 16", seen.get("logit", 0.0) > 16)
    ctx.check("loss fell before", bad is not None and _fell(ls[:bad], ratio=0.3))


# -- telegraph sounder: a log-energy feature summed in fp16 under autocast ------------------------


class Energy(nn.Module):
    """Log of the summed squares of its input (computed in the input's dtype)."""

    def forward(self, h):
        return torch.log(h.pow(2).sum(-1, keepdim=True))


class FistNet(nn.Module):
    def __init__(self, d_in=32, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.energy = Energy()
        self.fc2 = nn.Linear(hidden + 1, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.fc1(x)
        h = torch.cat([F.silu(h), self.energy(h)], -1)
        return self.head(F.silu(self.fc2(h)))


def _fists(gen, batch, hot_from=None, seed=7):
    """32-sample windows of a telegraph sounder's click envelope, normalised by the office line's
    level, and which of six operators' "fists" keyed it. From ``hot_from`` on the batches come
    from a line whose amplifier runs at 40x the level the normalisation assumes."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(6, 32, generator=g)
    step = 0
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        x = protos[y] + 0.8 * torch.randn(batch, 32, generator=gen)
        if hot_from is not None and step >= hot_from:
            x = 40.0 * x
        step += 1
        yield x, y


@scenario(
    family="telegraph_sounder_fist_energy_fp16_net",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("energy",),
    diverges=140,
    onset=140,
    heldout=True,
    note="A SiLU MLP (fc1, energy, fc2, head) identifying which of six telegraph operators keyed a 32-sample click envelope, with a log-energy feature log(sum h^2) of fc1's output, NAdam at 2e-3, cross-entropy, fp16 autocast with a torch.amp.GradScaler. Under autocast fc1's output is fp16 and the energy module squares and sums it in fp16. From step 140 the batches come from a line whose amplifier runs at 40x the level the normalisation assumes; fc1's outputs stay well inside fp16, but their summed squares pass 65504: the energy is inf, fc2's output and the loss are non-finite at step 140. The same batch in float32 gives a finite loss.",
)
def h234_telegraph_sounder_fp16_energy(ctx: Context) -> None:
    gen = seeded(23407)
    onset = 140
    model = FistNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == onset:
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(F.cross_entropy(model(x), y)))
                with torch.autocast("cpu", dtype=torch.float16):
                    h = model.fc1(x)
                    seen["fc1_max"] = float(h.abs().max())
                    seen["energy_finite"] = bool(torch.isfinite(model.energy(h)).all())

    _train(
        ctx,
        model,
        opt,
        _fists(gen, 64, hot_from=onset),
        180,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite before the onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at the onset", len(ls) > onset and not math.isfinite(ls[onset]))
    ctx.check("fc1's fp16 output finite (under 60000)", seen.get("fc1_max", math.inf) < 60000)
    ctx.check("the fp16 energy overflows at the onset", seen.get("energy_finite") is False)
    ctx.check("the same batch in float32 gives a finite loss", seen.get("fp32_finite") is True)


# -- shingle splitting: Adamax at 0.05 ------------------------------------------------------------


def _bolts(gen, batch, seed=8):
    """Ten standardised readings of a cedar bolt split with a froe (diameter, ring count, knot
    count, moisture, ...) and the number of sound shingles it yields, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="shingle_splitting_froe_yield_relu_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the number of sound shingles a cedar bolt yields under the froe from 10 standardised readings, Adamax, MSE. The rate was typed 0.05 for 0.005 (the default is 0.002): the first large steps push about three quarters of the second hidden layer's ReLUs (act2) negative on every input, they receive no gradient and never come back; the loss stalls well above the twin run at 0.005. Finite.",
)
def h234_shingle_splitting_adamax_rate(ctx: Context) -> None:
    probe = next(_bolts(torch.Generator().manual_seed(11), 512))

    def run(c, lr):
        gen = seeded(23408)
        model = Stack(10, hidden=64)
        opt = torch.optim.Adamax(model.parameters(), lr=lr)
        _train(c, model, opt, _bolts(gen, 64), 240, F.mse_loss)
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe[0]))
            h2 = model.act2(model.fc2(h1))
        return dead_fraction(h1), dead_fraction(h2)

    with torch.no_grad():
        torch.manual_seed(23408)
        fresh = Stack(10, hidden=64)
        d0 = dead_fraction(fresh.act2(fresh.fc2(fresh.act1(fresh.fc1(probe[0])))))
    twin = _Quiet()
    run(twin, 0.005)
    _, d2 = run(ctx, 0.05)
    ls = ctx.losses
    ctx.check("act2 dead fraction under 10% at init", d0 < 0.1)
    ctx.check("over half of act2 dead at the end", d2 > 0.5)
    ctx.check(
        "loss at the end over 2x the twin's at 0.005",
        _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- orrery: the trunk's warm-up uses integer division -------------------------------------------


class OrreryNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.spread = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.spread(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)


def _gears(gen, batch, seed=9):
    """Ten standardised readings of an orrery's gear train (tooth counts, backlash, pinion wear,
    crank rate, ...) and Mars's position error after a turn of the crank, with noise that grows
    with the backlash."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        sd = 0.05 + 0.2 * torch.sigmoid(x[:, 1])
        y = torch.tanh(x @ w / 3) + 0.6 * torch.sin(x @ v / 2)
        yield x, y + sd * torch.randn(batch, generator=gen)


@scenario(
    family="orrery_gear_train_error_gaussian_nll_net",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2 trunk; mean and spread heads) predicting a mean and softplus variance of an orrery's Mars position error from 10 standardised readings of its gear train, Gaussian NLL, Adam at 3e-3 with two param groups and a LambdaLR: the heads at full rate, the trunk with a warm-up written min(1, step // warm) for min(1, step / warm), warm = 300 on a 240-step run. The integer division keeps the trunk's multiplier at exactly 0: fc1 and fc2 never move (relative update 0) while the heads learn on random features. The loss falls, but stays well above a twin with the true division; finite.",
)
def h234_orrery_integer_warmup(ctx: Context) -> None:
    steps, warm = 240, 300

    def run(c, trunk_lambda):
        gen = seeded(23409)
        model = OrreryNet()
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        heads = list(model.mean.parameters()) + list(model.spread.parameters())
        opt = torch.optim.Adam([{"params": trunk}, {"params": heads}], lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [trunk_lambda, lambda s: 1.0])
        w0 = model.fc1.weight.detach().clone()
        m0 = model.mean.weight.detach().clone()
        _train(c, model, opt, _gears(gen, 64), steps, _gauss_nll, sched=sched)
        with torch.no_grad():
            return float((model.fc1.weight - w0).norm()), float((model.mean.weight - m0).norm())

    twin = _Quiet()
    run(twin, lambda s: min(1.0, (s + 1) / 30))
    moved_trunk, moved_head = run(ctx, lambda s: min(1, s // warm))
    ls = ctx.losses
    ctx.check("fc1 never moved", moved_trunk == 0.0)
    ctx.check("the mean head moved", moved_head > 0.1)
    ctx.check("loss fell", _mean(ls[-20:]) < _mean(ls[:20]) - 0.2)
    ctx.check(
        "loss at the end over 0.3 nats above the twin's",
        _mean(ls[-20:]) > _mean(twin.losses[-20:]) + 0.3,
    )
    ctx.check("finite", _finite(ls))


# -- hair hygrometer: one logger's -9999 sentinel -------------------------------------------------


def _hygro(gen, batch, seed=10):
    """Eight standardised readings of a hair hygrometer in a museum case (hair tension, case
    temperature, time since calibration, ...) and its drift from the reference, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="hygrometer_hair_drift_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a museum hair hygrometer's drift from 8 standardised readings, SGD with momentum 0.9 at 0.01, Huber loss. At step 130 one sample comes from a logger that writes -9999 when its temperature probe drops out; the loader standardises it without masking the sentinel, so one reading is about -9999 in standard units. That one sample's gradient on fc1 is thousands of times the usual: the loss jumps over 5x on the next steps and the run recovers over the following ~80 steps; finite.",
)
def h234_hygrometer_sentinel(ctx: Context) -> None:
    gen = seeded(23410)
    onset = 130
    model = Stack(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[5, 1] = -9999.0
            seen["x_min"] = float(x.min())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _hygro(gen, 64),
        220,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("one reading at -9999 in the onset batch", seen.get("x_min", 0.0) < -9000)
    ctx.check(
        "gradient at the onset over 100x the median before", gn[onset] > 100 * _median(gn[:onset])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite before the onset", _finite(ls[:onset]))
    ctx.check(
        "loss over 5x its pre-onset level just after",
        max(ls[onset : onset + 5]) > 5 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("finite over the run", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


def _panels(gen, batch, seed=11):
    """Eight readings of a kirigami-cut paper panel (cut length, cut spacing, sheet weight,
    humidity, ...) with heavy-tailed (Student-t, 2 degrees of freedom) scatter from the hand
    measurements, and the panel's stretch stiffness, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    t = torch.distributions.StudentT(2.0)
    while True:
        clean = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(clean @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        x = clean + 0.3 * t.sample((batch, 8))
        yield x, y


@scenario(
    family="kirigami_panel_stiffness_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a kirigami panel's stretch stiffness from 8 hand-measured readings with heavy-tailed (Student-t, df 2) scatter, so single readings of 10-50 standard units turn up every few batches; Adadelta at 1.0, Huber loss, gradient norm clipped at 1, ReduceLROnPlateau (factor 0.5, patience 20). Healthy control.",
)
def h234_control_kirigami_heavy_tails(ctx: Context) -> None:
    gen = seeded(23411)
    torch.manual_seed(23411)
    model = Stack(8, hidden=64, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    big = []

    def watch(step, out, x, y):
        big.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _panels(gen, 64),
        240,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("readings over 10 standard units seen", max(big) > 10)
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))


class Squidge(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop(F.relu(self.fc1(x)))
        return self.head(F.relu(self.fc2(h)))


@scenario(
    family="tiddlywinks_squidge_shot_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP with dropout (fc1, drop, fc2, head) classifying a tiddlywinks shot (pot, squop, boondock, bristol, gromp) from 12 standardised readings of the squidge stroke, 10% noisy labels, SGD with Nesterov momentum 0.9, OneCycleLR to 0.1, cross-entropy with label smoothing 0.1, gradient norm clipped at 2. Healthy control.",
)
def h234_control_tiddlywinks(ctx: Context) -> None:
    gen = seeded(23412)
    steps = 220
    model = Squidge()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    base = _kinds(gen, 64, 12, 5, seed=12, noise=1.2)

    def noisy():
        while True:
            x, y = next(base)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)

    hits = []

    def watch(step, out, x, y):
        hits.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        clip=2.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.7))
    ctx.check("train accuracy over 70% at the end", _mean(hits[-20:]) > 0.7)
    ctx.check("finite", _finite(ls))


class TiedAE(nn.Module):
    """A tied-weight autoencoder of 48-sample adze-stroke traces: enc, and a decoder that reuses
    enc.weight transposed (its own bias only)."""

    def __init__(self, d_in=48, code=12):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.t(), self.dec_bias)


def _strokes(gen, batch):
    """48-sample accelerometer traces of an adze hewing a log: a decaying chip-off transient at a
    random offset and pitch over a low hum, normalised."""
    t = torch.arange(48.0)
    while True:
        at = torch.randint(4, 24, (batch, 1), generator=gen).float()
        f = 0.3 + 0.5 * torch.rand(batch, 1, generator=gen)
        a = 0.5 + torch.rand(batch, 1, generator=gen)
        dt = (t - at).clamp(min=0)
        x = a * torch.exp(-dt / 6) * torch.sin(f * dt) * (t >= at).float()
        x = x + 0.2 * torch.sin(0.1 * t) + 0.03 * torch.randn(batch, 48, generator=gen)
        yield x, x


@scenario(
    family="adze_hewing_chip_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A tied-weight autoencoder (enc, decoder reusing enc.weight transposed) compressing 48-sample accelerometer traces of an adze hewing a log to 12 codes, RAdam at 3e-3, MSE, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2, StepLR (gamma 0.5 every 80 steps). Healthy control.",
)
def h234_control_adze_tied_fp16(ctx: Context) -> None:
    gen = seeded(23413)
    model = TiedAE()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 32),
        200,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.5))
    ctx.check("finite", _finite(ls))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)
