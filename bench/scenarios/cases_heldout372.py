"""Held-out set 372 (``h372_``): hand-written models of trades, sports, instruments and natural
phenomena not covered before: a gaita chanter-reed cumulative-link ordinal net whose link takes
the log of a grade's probability with the clamp dropped (log 0, NaN at step 35), a log-raft
drift tanh regressor whose linear scaling rule leaves out the / 256 (past 2/sharpness during
warm-up), a gouren throw-force Gaussian-NLL net whose resumed step keeps a static loss scale of
65536 (Adam's second moment poisoned), a boatbuilder plank-springback tanh regressor whose
hand-written L2 penalty is subtracted (a slow climb), a gill-net bycatch ReLU BCE net fed one
harbour's shard in raw units (one corrupted batch), a fishing-net knot-slip GELU Huber regressor
whose resumed step sums the loss (one gradient burst), a river-rapid ReLU classifier whose
layer-wise lr decay is typed 0.01 for 0.9 (lower layers frozen), a wherry oar-timing ReLU
regressor under OneCycleLR with max_lr typed 1.0 (dead ReLUs), an artistic-swimming prototype
classifier whose width's exponent sign is flipped (softmax collapse), a fire-dance staff Elman
RNN whose recurrent matrix gets 3x the tanh gain (gradients grow through time), and three
controls (an ice-dance twizzle ordinal net with softplus-gap thresholds, a surfski tied
autoencoder, a sailing-canoe SiLU Huber regressor under fp16 autocast with a GradScaler).

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


# -- radial-basis-function networks -----------------------------------------------------------------


# -- ordinal regression: cumulative-link thresholds ---------------------------------------------------


def _ordinal(gen, batch, d_in, seed, cuts, noise=0.3):
    """Readings whose grade is a latent score cut at ``cuts`` (len(cuts) + 1 ordered grades)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    cuts = torch.tensor(cuts)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in) * 2.0 + noise * torch.randn(batch, generator=gen)
        yield x, torch.bucketize(z, cuts)


class RawCutpoints(nn.Module):
    """Cumulative-link (proportional odds) log-probabilities with free thresholds: P(y <= k) =
    sigmoid(t_k - s), P(y = k) = P(y <= k) - P(y <= k - 1), floored at ``eps`` before the log."""

    def __init__(self, grades, eps=1e-6):
        super().__init__()
        self.thresholds = nn.Parameter(torch.linspace(-1.5, 1.5, grades - 1))
        self.eps = eps

    def cut(self):
        return self.thresholds

    def forward(self, s):
        cdf = torch.sigmoid(self.cut()[None, :] - s[:, None])
        ones = torch.ones_like(s)[:, None]
        cdf = torch.cat([torch.zeros_like(ones), cdf, ones], 1)
        p = cdf[:, 1:] - cdf[:, :-1]
        return torch.log(p.clamp_min(self.eps) if self.eps > 0 else p)  # log P(y = k)


class SoftplusGapCutpoints(RawCutpoints):
    """The same link with ordered thresholds: t_0 then t_0 + cumsum(softplus(gap))."""

    def __init__(self, grades, eps=1e-6):
        super().__init__(grades, eps)
        del self.thresholds
        self.first = nn.Parameter(torch.tensor(-1.5))
        gap = math.log(math.expm1(3.0 / (grades - 2)))
        self.gaps = nn.Parameter(torch.full((grades - 2,), gap))

    def cut(self):
        return torch.cat([self.first[None], self.first + torch.cumsum(F.softplus(self.gaps), 0)])


class OrdinalNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> score (one latent score) -> link (log P(grade))."""

    def __init__(self, d_in, grades, link, hidden=48, eps=1e-6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.score = nn.Linear(hidden, 1)
        self.link = link(grades, eps)

    def forward(self, x):
        s = self.score(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.link(s)


GAITA_DIV = 35


@scenario(
    family="gaita_chanter_reed_hardness_raw_threshold_cumulative_link_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("link",),
    diverges=GAITA_DIV,
    heldout=True,
    note="A hand-written cumulative-link ordinal net (fc1, act1, fc2, act2, score, link: four thresholds on one latent score) grading the hardness of a gaita (Galician bagpipe) chanter reed into five ordered grades from eight readings, Adam at 3e-2, NLL of the ordinal distribution, 240 steps. The link was ported from a recipe that floors each grade's probability sigmoid(t_k - s) - sigmoid(t_{k-1} - s) with clamp_min(1e-6) before the log; the port dropped the clamp. As the score sharpens, at step 34 both sigmoids of a grade saturate for a reed far from it, its probability is exactly 0, log 0 = -inf in link (not in the target's entry, so the loss is still finite), the backward gives 0 * inf = NaN in the thresholds' gradient, and the loss is NaN at step 35. The thresholds stay ordered throughout: the log of 0 is the cause.",
)
def h372_gaita_reed_raw_thresholds(ctx: Context) -> None:
    gen = seeded(37201)
    model = OrdinalNet(8, 5, RawCutpoints, eps=0.0)  # the port dropped clamp_min(1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    zeros, ordered, nan_grad = [], [], []

    def watch(step, out, x, y):
        zeros.append(int(torch.isneginf(out.detach()).sum()))
        t = model.link.thresholds.detach()
        ordered.append(bool((t[1:] > t[:-1]).all()))

    def inspect(step):
        nan_grad.append(bool(model.link.thresholds.grad.isnan().any()))

    _loop(
        ctx,
        model,
        opt,
        _ordinal(gen, 64, 8, 3721, [-1.2, -0.05, 0.05, 1.2]),
        240,
        F.nll_loss,
        classifier=True,
        watch=watch,
        inspect=inspect,
    )
    bad = _first_bad(ctx.losses)
    first_zero = next((i for i, z in enumerate(zeros) if z > 0), None)
    ctx.check(f"the loss is first non-finite at step {GAITA_DIV}", bad == GAITA_DIV)
    ctx.check(
        f"a grade probability in link is first exactly 0 (log gives -inf) at step {GAITA_DIV - 1}",
        first_zero == GAITA_DIV - 1,
    )
    ctx.check(
        f"the thresholds' gradient is first NaN at step {GAITA_DIV - 1}",
        nan_grad.index(True) == GAITA_DIV - 1 if True in nan_grad else False,
    )
    ctx.check("the thresholds stayed ordered until then", all(ordered[: GAITA_DIV - 1]))
    ctx.check("the loss fell before it", bad is not None and _fell(ctx.losses[:bad], k=5))


@scenario(
    family="ice_dance_twizzle_level_softplus_gap_ordinal_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written cumulative-link ordinal net (fc1, act1, fc2, act2, score, link) grading an ice-dance twizzle into five ordered levels from eight readings; the thresholds are kept ordered as t_0 + cumsum(softplus(gaps)) and each level's probability is clamped at 1e-6 before the log. AdamW with weight decay under OneCycleLR (max 3e-2), gradients clipped at 1.0, NLL of the ordinal distribution, 240 steps. A control.",
)
def h372_ice_dance_softplus_gap_ordinal(ctx: Context) -> None:
    gen = seeded(37202)
    model = OrdinalNet(8, 5, SoftplusGapCutpoints)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _ordinal(gen, 64, 8, 3722, [-1.2, -0.05, 0.05, 1.2]),
        steps,
        F.nll_loss,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    t = model.link.cut().detach()
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("the thresholds are strictly increasing", bool((t[1:] > t[:-1]).all()))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- artistic swimming: a prototype classifier's width inverted (softmax saturates) -------------------


class ProtoHead(nn.Module):
    """logits = -|h - c_k|^2 / (2 sigma^2), one learnable prototype per class."""

    def __init__(self, dim, classes, sigma):
        super().__init__()
        self.prototypes = nn.Parameter(0.5 * torch.randn(classes, dim))
        self.sigma = sigma

    def forward(self, h):
        d2 = (h[:, None, :] - self.prototypes[None]).pow(2).sum(-1)
        return -d2 / (2 * self.sigma**2)


class ProtoNet(nn.Module):
    def __init__(self, d_in, classes, sigma, dim=16, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.head = ProtoHead(dim, classes, sigma)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="artistic_swimming_figure_prototype_distance_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU prototype classifier (fc1, act1, fc2 to a 64-d embedding, head: logits -|h - c_k|^2 / (2 sigma^2) with one learnable prototype per class) naming an artistic-swimming figure among six from twelve readings, RAdam at 2e-3, cross-entropy, 200 steps. The width sigma was meant as sqrt(dim) = 8 and written dim ** -0.5 (the exponent's sign flipped), so the logits are 4096x too large: under 5% of the rows are collapsed at step 0, over half the rows' target probability is exactly 1.0 in float32 over the last 20 steps (about 93%), while the same distances at the intended sigma collapse none; the loss is noisy from confidently wrong rows.",
)
def h372_artistic_swimming_sigma_inverted(ctx: Context) -> None:
    gen = seeded(37203)
    dim = 64
    model = ProtoNet(12, 6, sigma=dim**-0.5, dim=dim)  # meant: sigma = dim ** 0.5
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    collapsed, intended = [], []

    def watch(step, out, x, y):
        o = out.detach()
        collapsed.append(float((torch.softmax(o, -1).gather(1, y[:, None]) == 1.0).float().mean()))
        p = torch.softmax(o / dim**2, -1)  # the same distances at the intended sigma
        intended.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3723, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of the rows are collapsed at step 0", collapsed[0] < 0.05)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check(
        "at the intended sigma the same distances collapse under 5% of the rows",
        _mean(intended[-20:]) < 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- gill net: one harbour's shard with mesh and depth in raw units (one corrupted batch) -------------


@scenario(
    family="gill_net_bycatch_risk_relu_bce_net",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) giving the bycatch risk of a gill-net set from ten standardised readings of mesh, depth, soak time, water temperature and season, BCE with logits, Adagrad at 2e-2, gradients clipped at 1.0, 240 steps. At step 130 one harbour's shard arrives with mesh in millimetres, depth in centimetres and soak in minutes, never standardised (about 600 for about 0): the loss and the gradient norm are over 20x the steps before, the clipped step recovers and the loss is back within 2x by step 170.",
    onset=130,
)
def h372_gill_net_raw_units_shard(ctx: Context) -> None:
    gen = seeded(37204)
    model = Trunk(10, 64)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(3724)
    w = torch.randn(10, generator=g)

    def batches():
        for x, _ in _readings(gen, 64, 10, 3724):
            yield x, (x @ w / math.sqrt(10) + 0.3 * torch.randn(64, generator=gen) > 0).float()

    def alter(step, x, y):
        if step == 130:
            x = x.clone()
            x[:, :3] = 600.0 + 150.0 * x[:, :3]  # mesh in mm, depth in cm, soak in minutes: raw
        return x, y

    _loop(
        ctx,
        model,
        opt,
        batches(),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 130 is over 20x the mean of the 20 before",
        ls[130] > 20 * _mean(ls[110:130]),
    )
    ctx.check(
        "the gradient at step 130 is over 20x the median of the 20 before",
        gs[130] > 20 * _median(gs[110:130]),
    )
    ctx.check(
        "the loss is back under 2x its pre-shard level by step 170",
        _mean(ls[160:170]) < 2 * _mean(ls[110:130]),
    )
    ctx.check("the loss fell before the shard", _mean(ls[110:130]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- wherry: OneCycleLR max_lr typed 1.0 for 1e-2 under Adam (the ReLUs die) -------------------------


@scenario(
    family="wherry_oar_catch_timing_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the catch timing of a wherry rower's oar from ten readings, Adam under OneCycleLR with max_lr typed 1.0 for 1e-2, MSE, 240 steps. As the one-cycle warm-up raises the rate, the large Adam steps drive fc2's pre-activations negative: under a tenth of act2's units are dead at step 0, about 80% by step 10 and all of them from about step 70 on; they stay dead as the rate anneals, the loss stays above the targets' variance (nothing learnt), finite.",
    onset=0,
)
def h372_wherry_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(37205)
    model = Trunk(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps)  # meant 1e-2
    dead, spread = [], []

    def watch(step, out, x, y):
        dead.append(_dead(model.features(x)))
        spread.append(float(y.var()))

    def timings():
        for x, y in _readings(gen, 64, 10, 3725):
            yield x, 1.2 + 0.5 * y

    _loop(ctx, model, opt, timings(), steps, F.mse_loss, watch=watch, sched=sched)
    ctx.check("under a tenth of act2's units are dead at step 0", dead[0] < 0.1)
    ctx.check(
        "over 90% of act2's units are dead in each of the last 50 steps", min(dead[-50:]) > 0.9
    )
    ctx.check(
        "the last 20 steps' loss is above the targets' variance (nothing learnt)",
        _mean(ctx.losses[-20:]) > _mean(spread[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- log raft: the linear scaling rule without the / 256 (past 2/sharpness) ----------------------------

LOG_RAFT_DIV = 0


@scenario(
    family="log_raft_drift_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the drift speed of a log raft from ten readings of current, wind and load, plain SGD on batches of 512 with linear warm-up (LinearLR from 0.01 over 100 steps), MSE. The linear scaling rule was written lr = 0.005 * batch, the / 256 left out (2.56 for 1e-2): lr x top Hessian eigenvalue (power iteration) is about 0.14 at step 0, passes 2 by step 10 of the warm-up, the loss oscillates, passes 1e6 at step 40 and overflows to inf at step 50.",
)
def h372_log_raft_linear_scaling(ctx: Context) -> None:
    gen = seeded(37206)
    model = Trunk(10, 64, act=nn.Tanh)
    batch, base = 512, 0.005
    lr = base * batch  # meant: base * batch / 256
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=100)
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 10, 3726))
    ratio = {}

    def before(step):
        if step % 5 == 0:
            ratio[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, batch, 10, 3726),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss overflows to a non-finite value", bad is not None)
    ctx.check("lr x sharpness is under 2 at the start of warm-up", ratio[0] < 2.0)
    ctx.check("lr x sharpness passes 2 before the blow-up", max(ratio.values()) > 2.0)
    ctx.check("the loss blows up past 100x its start", max(ctx.losses) > 100 * ctx.losses[0])
    ctx.check("the loss fell first", _mean(ctx.losses[5:15]) < _mean(ctx.losses[:3]))


# -- fire dance: a hand-written Elman RNN with the feed-forward tanh gain on its recurrence -----------


class Elman(nn.Module):
    """inp -> rec (h_t = tanh(inp(x_t) + rec(h_{t-1}))) -> head on the last state."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.hs = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.hs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.hs.append(h)
        return self.head(h).squeeze(-1)


def _spins(gen, batch, length, seed):
    """Accelerometer traces of a spinning staff; the target is the mean spin rate."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(2, 3, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        rate = 0.2 + 0.6 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        base = torch.stack([torch.sin(rate * t + phase), torch.cos(rate * t + phase)], -1)
        x = base @ mix + 0.2 * torch.randn(batch, length, 3, generator=gen)
        yield x, (rate.squeeze(-1) - 0.5) * 4


@scenario(
    family="fire_dance_staff_spin_rate_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (inp, rec: h_t = tanh(inp(x_t) + rec(h_{t-1})), head on the last state) reading 30-step accelerometer traces of a fire-dance staff to predict its spin rate, RMSprop at 1e-3, MSE, gradients clipped at 1.0, 120 steps. The recurrent matrix was initialised orthogonal with gain 3 x calculate_gain('tanh') (5.0; a recurrent matrix wants gain 1): the state is chaotic, the gradient at the first hidden state is millions of times that at the last at step 0 and through the run, the raw gradient norm is far over the clip threshold, rec carries about half of it; the clipped run stays finite and its loss falls only a little.",
)
def h372_fire_dance_recurrent_gain(ctx: Context) -> None:
    gen = seeded(37207)
    gain = 3.0 * nn.init.calculate_gain("tanh")  # meant: 1.0 for a recurrent matrix
    model = Elman(3, 48, gain)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ratios, share = [], []

    def inspect(step):
        first, last = model.hs[0].grad, model.hs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))
        rec = float(model.rec.weight.grad.norm())
        share.append(rec / max(ctx.grad_norms[-1], 1e-30))

    _loop(ctx, model, opt, _spins(gen, 32, 30, 3727), 120, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check(
        "the gradient at the first state is over 20x that at the last at step 0", ratios[0] > 20
    )
    ctx.check("and over 10x on average through the run", _mean(ratios) > 10)
    ctx.check("the raw gradient norm is over the clip threshold", _median(ctx.grad_norms) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- river raft: layer-wise lr decay typed 0.01 for 0.9 (the lower layers frozen) --------------------


class Deep(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> fc3 -> act3 -> head."""

    def __init__(self, d_in, hidden, out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


@scenario(
    family="river_rafting_rapid_class_llrd_relu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, fc3, act3, head) classifying a river rapid into six classes from fourteen readings, NAdam at 2e-3 with layer-wise learning-rate decay, one param group per layer at lr x decay ** depth_from_top, cross-entropy with label smoothing 0.05, 200 steps. The decay was typed 0.01 for 0.9: fc1's rate is 2e-9 and fc2's 2e-7, so fc1 moves under 1e-6 of its norm and fc2 under 1e-3 while they get gradients, fc3 moves about 5% and the head over 300%; the loss falls slowly on near-frozen lower layers.",
)
def h372_river_raft_llrd_typo(ctx: Context) -> None:
    gen = seeded(37208)
    model = Deep(14, 64, 6)
    lr, decay = 2e-3, 0.01  # meant: decay 0.9
    layers = [model.fc1, model.fc2, model.fc3, model.head]
    opt = torch.optim.NAdam(
        [
            {"params": m.parameters(), "lr": lr * decay ** (len(layers) - 1 - i)}
            for i, m in enumerate(layers)
        ]
    )
    start = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "fc3", "head")}
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 3728, spread=1.4),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
    )
    moved = {n: _rel_change(w, getattr(model, n).weight) for n, w in start.items()}
    ctx.check("fc1 moved under 1e-5 of its norm", moved["fc1"] < 1e-5)
    ctx.check("fc2 moved under 1e-3 of its norm", moved["fc2"] < 1e-3)
    ctx.check("the head moved over 10% of its norm", moved["head"] > 0.1)
    ctx.check("the model got nonzero gradients every step", all(g > 0 for g in ctx.grad_norms))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fishing net: the resumed step's criterion built with reduction="sum" (one gradient burst) -------


@scenario(
    family="fishing_net_knot_slip_gelu_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the slip of a fishing-net knot under load from ten readings, Huber loss, SGD momentum 0.9 at 2e-2, gradients clipped at 1.0, 240 steps. The resumed step 140 rebuilds its criterion from the evaluation config with reduction='sum': on a clean batch the gradient is 64x the usual (over 20x the median of the 20 steps before) while the loss is ordinary; the clipped step lets the run go on.",
    onset=140,
)
def h372_fishing_net_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(37209)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def backprop(step, loss):
        return loss * 64 if step == 140 else loss  # the resume path's criterion: reduction="sum"

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3729),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 140 is over 20x the median of the 20 before",
        gs[140] > 20 * _median(gs[120:140]),
    )
    ctx.check("the loss at step 140 is ordinary (clean data)", ls[140] < 2 * _mean(ls[120:140]))
    ctx.check(
        "the loss is back under 2x its earlier level by step 160",
        _mean(ls[155:165]) < 2 * _mean(ls[120:140]),
    )
    ctx.check("the loss fell", _fell(ls[:140]))
    ctx.check("finite throughout", _finite(ls))


# -- boatbuilder: a hand-written L2 penalty subtracted (a slow climb) ---------------------------------


@scenario(
    family="boatbuilder_steam_bent_plank_springback_tanh_regressor",
    optimizer="Adadelta",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the springback of a steam-bent boat plank from ten readings, Adadelta at lr 1.0, MSE on batches of 128, 280 steps. A hand-written L2 penalty on the weights is subtracted from the loss (loss - 0.02 * sum w^2, meant +): the weights' norm grows from about 7 to over 700, the loss falls to about 0.04, then climbs slowly and steadily to over 3x its lowest 20-step mean, with no spike and no NaN.",
)
def h372_boatbuilder_l2_sign(ctx: Context) -> None:
    gen = seeded(37210)
    model = Trunk(10, 64, act=nn.Tanh)
    wd = 2e-2
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    start = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def backprop(step, loss):
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2  # meant: loss + wd * l2

    _loop(ctx, model, opt, _readings(gen, 128, 10, 3730), 280, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    end = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the weights' norm grew over 2x", end > 2.0 * start)


# -- gouren: a static loss scale left on for the resume step (Adam's second moment) -------------------


class MeanVarNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (mean and log-variance of a Gaussian)."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp().clamp_min(1e-4))


@scenario(
    family="gouren_wrestling_throw_force_silu_gaussian_nll_net",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, head giving mean and log-variance) predicting the throw force of a gouren (Breton wrestling) hold from twelve readings, Gaussian NLL, Adam at 1e-3, 260 steps. The fp16 path's static loss scale 65536 is applied on the resumed step 100 and never undone (the run is fp32): on a clean batch the gradient is about 50000x the median of the 20 steps before while the loss is ordinary; Adam's second moment fills with it, and 80-160 steps later the median per-weight update is under a tenth of before while the gradients are not smaller.",
    onset=100,
)
def h372_gouren_static_loss_scale(ctx: Context) -> None:
    gen = seeded(37211)
    model = MeanVarNet(12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    upd, grads, prev = {}, {}, {}

    def backprop(step, loss):
        return loss * 65536.0 if step == 100 else loss  # the fp16 path's static scale, never undone

    def inspect(step):
        grads[step] = ctx.grad_norms[-1]
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        d = torch.cat(
            [
                (p.detach() - w).abs().reshape(-1)
                for p, w in zip(model.parameters(), prev["w"], strict=True)
            ]
        )
        upd[step] = float(d.median())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3731, noise=0.2),
        260,
        _gauss_nll,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    before_g = _median([grads[s] for s in range(80, 100)])
    ctx.check(
        "the gradient at step 100 is over 1000x the median of the 20 before",
        grads[100] > 1000 * before_g,
    )
    ctx.check(
        "the loss at step 100 is ordinary",
        abs(ctx.losses[100] - _mean(ctx.losses[80:100])) < 1.0,
    )
    ctx.check(
        "the median update 80-160 steps later is under a tenth of before",
        _mean([upd[s] for s in range(180, 260)]) < 0.1 * _mean([upd[s] for s in range(60, 100)]),
    )
    ctx.check(
        "the gradients 80-160 steps later are not smaller than before",
        _median([grads[s] for s in range(180, 260)]) > 0.5 * before_g,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class TiedAutoencoder(nn.Module):
    """enc -> act -> decoder with enc's weight transposed (tied), its own bias."""

    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _strokes(gen, batch, seed, d_in=24, rank=4):
    """Noisy paddle-stroke force profiles lying near a low-dimensional set."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        clean = torch.tanh(torch.randn(batch, rank, generator=gen)) @ basis
        yield clean + 0.1 * torch.randn(batch, d_in, generator=gen), clean


@scenario(
    family="surfski_paddle_stroke_tied_autoencoder",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tied-weight autoencoder (enc, act, decoder with enc's weight transposed and its own bias) denoising surfski paddle-stroke force profiles (24 samples near a 4-d set), SGD Nesterov with linear warm-up then cosine annealing (SequentialLR), gradients clipped at 1.0, MSE, 220 steps. A control.",
)
def h372_surfski_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(37212)
    model = TiedAutoencoder(24, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 220
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - 20)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[20])
    _loop(ctx, model, opt, _strokes(gen, 64, 3732), steps, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="canoe_sailing_heel_angle_fp16_silu_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a sailing canoe's heel angle from twelve noisy readings, Huber loss, Adamax at 2e-3, fp16 autocast with a torch.amp.GradScaler, accumulation over 2, ReduceLROnPlateau on a held-out batch, gradients clipped at 1.0, 180 steps. A control.",
)
def h372_canoe_sailing_fp16_plateau(ctx: Context) -> None:
    gen = seeded(37213)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    held = next(_readings(torch.Generator().manual_seed(9), 256, 12, 3733, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3733, noise=0.2),
        180,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the loss scale stayed above 1", min(ctx.scales) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
