"""Held-out set 326 (``h326_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a katazome stencil-defect multi-label GELU net whose two
annotators' tags are merged by adding (targets of 2, the head's logits grow without bound), a
neon-bending tube-glow two-group regressor whose trunk multiplier is typed 1e-4 for 1e-1 (trunk
frozen), a hole-punch-cloud lifetime Weibull NLL net whose scale lost its softplus (log 0, NaN), a
frog-jumping distance SiLU Huber regressor whose partial-batch rescale multiplies one step's loss
by 64 (one gradient burst), an extreme-ironing session-time ReLU regressor fed one shard with
unmasked -9999 missing-value sentinels (one corrupted batch), a stylophone stylus-pitch tanh MLP
whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness), a vibraslap rattle-decay ReLU Elman
RNN whose recurrent matrix gets orthogonal gain 2 (He's variance factor for the ReLU gain) (gradients grow through time), a
pinstriping brush-stroke ReLU classifier whose Adamax lr is typed 1e0 for 1e-3 (ReLUs die), a
cristal-Baschet rod-tone cosine classifier whose CLIP-style logit scale is stored already
exponentiated and exponentiated again (softmax saturates), a tabla dayan-tuning GELU regressor
whose phase-two loss weight is read from the warm-up key for one step (Adam's second moment
poisoned), and three controls (a hobby-horse show-jumping fault classifier with class-balanced
cross-entropy weights under AdamW, a flexatone shake-pitch fp16 Conv1d classifier with a
GradScaler, OneCycleLR and label smoothing, an aquatint rosin-ground etch-depth Gaussian NLL net
with accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` returns the validation loss for a ReduceLROnPlateau ``sched``. Stops after
    a non-finite loss; returns the step it stopped at."""
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
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y - 0.3 + noise * torch.randn(batch, generator=gen)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9, priors=None):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    p = torch.ones(classes) if priors is None else torch.tensor(priors)
    while True:
        y = torch.multinomial(p, batch, replacement=True, generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1, act1, fc2, act2, (drop), head."""

    def __init__(self, d_in, hidden, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.drop(self.features(x)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- katazome: two annotators' defect tags merged by adding, targets of 2 -------------------------

TAGS_KZ = 24


def _stencils(gen, batch, seed):
    """Katazome (stencil-dyeing) stencil scans as 16 readings; two annotators each mark which
    of 24 defect tags (bleeding paste, torn bridges, lifted silk gauze, ...) they see."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, TAGS_KZ, generator=g) / 2.0
    b = -1.0 + 0.5 * torch.randn(TAGS_KZ, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        z = x @ w + b
        a1 = (z + 0.3 * torch.randn(batch, TAGS_KZ, generator=gen) > 0).float()
        a2 = (z + 0.3 * torch.randn(batch, TAGS_KZ, generator=gen) > 0).float()
        yield x, a1 + a2  # meant torch.maximum(a1, a2): the merge adds, agreed tags become 2.0


@scenario(
    family="katazome_stencil_defect_multilabel_bce_net",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) tagging katazome (Japanese stencil-dyeing) stencils with 24 defect labels from 16 scan readings, BCE with logits, Adam at 3e-3, 220 steps. The multi-hot targets merge two annotators' tag vectors with scatter_add (a1 + a2) where a union (maximum) was meant, so every tag both annotators marked has target 2.0: BCE with a target above 1 keeps falling as that logit rises, so the head's logits on those tags grow without bound (the loss goes negative) while the model otherwise trains.",
)
def h326_katazome_added_annotator_tags(ctx: Context) -> None:
    gen = seeded(32601)
    model = Trunk(16, 64, out=TAGS_KZ, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peaks, above = [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().amax(1).mean()))
        above.append(float((y > 1).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _stencils(gen, 64, 32601),
        220,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("some targets are above 1 (merged by adding)", _mean(above) > 0.02)
    ctx.check(
        "the head's mean largest logit grows over 20x from step 0",
        _mean(peaks[-20:]) > 20 * abs(peaks[0]),
    )
    ctx.check("it still grows late", _mean(peaks[-20:]) > 1.3 * _mean(peaks[100:120]))
    ctx.check("the BCE goes negative", min(ctx.losses) < 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- neon bending: the trunk's lr multiplier typed 1e-4 for 1e-1 ----------------------------------


@scenario(
    family="neon_bending_tube_glow_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the glow uniformity of a hand-bent neon tube from ten readings (bend temperature, bombarding current, gas pressure, ...), RMSprop at 1e-3 with two parameter groups, MSE, 200 steps. The trunk group (fc1, fc2) is meant to train at base_lr * 1e-1 and the multiplier is typed 1e-4: fc1 and fc2 move by a negligible fraction of their norm while the head alone fits what it can, and the loss settles above what the model reaches when the trunk trains.",
)
def h326_neon_bending_trunk_multiplier_typo(ctx: Context) -> None:
    gen = seeded(32602)
    model = Trunk(10, 64, act=nn.SiLU)
    base = 1e-3
    opt = torch.optim.RMSprop(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": base * 1e-4},
            {"params": model.head.parameters()},
        ],
        lr=base,
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32602), 200, F.mse_loss)
    mv = _moves(model, start)
    trunk = max(mv["fc1.weight"], mv["fc2.weight"])
    ctx.check("fc1 and fc2 move under 1e-3 of their norm", trunk < 1e-3)
    ctx.check("the head moves over 50% of its norm", mv["head.weight"] > 0.5)
    ctx.check("the head moves over 1000x as much as the trunk", mv["head.weight"] > 1000 * trunk)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hole-punch cloud: a Weibull NLL whose scale lost its softplus --------------------------------


class LifetimeNet(nn.Module):
    """tanh trunk, a Weibull shape head (softplus + 0.5) and a scale head through scale_act."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.shape_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)
        self.scale_act = nn.ReLU()  # ported from softplus(x) + 1e-3 as a bare ReLU
        nn.init.constant_(self.scale_head.bias, 1.0)
        nn.init.normal_(self.scale_head.weight, std=0.02)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        k = F.softplus(self.shape_head(h)) + 0.5
        lam = self.scale_act(self.scale_head(h))
        return torch.cat([k, lam], -1)


def _weibull_nll(out, t):
    k, lam = out[:, 0], out[:, 1]
    z = t / lam
    return (-torch.log(k) + torch.log(lam) - (k - 1) * torch.log(z) + z**k).mean()


def _punch_holes(gen, batch, seed):
    """Hole-punch (fallstreak) clouds: eight readings of the supercooled altocumulus deck; the
    hole's lifetime (hours) is Weibull with a scale that varies by a factor of about 30."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        lam = torch.exp(0.8 * torch.tanh(x @ w / 2.0) * 2.0 - 0.5)
        u = torch.rand(batch, generator=gen).clamp_min(1e-6)
        yield x, lam * (-torch.log(u)) ** (1 / 1.8)


@scenario(
    family="hole_punch_cloud_lifetime_weibull_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale_head", "scale_act"),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh net (fc1, act1, fc2, act2, a shape head through softplus + 0.5, a scale head 'scale_head' through 'scale_act') predicting how long a hole-punch (fallstreak) cloud stays open, with a hand-written Weibull negative log-likelihood, RAdam at 3e-3, 300 steps. The scale's softplus(x) + 1e-3 was ported as a bare ReLU: training pushes the scale of short-lived holes down until one row's scale_head output crosses zero, the scale is exactly 0, log(0) = -inf and (t / 0) ** k = inf meet in the loss, and it is NaN from that step.",
)
def h326_hole_punch_cloud_scale_relu(ctx: Context) -> None:
    gen = seeded(32603)
    model = LifetimeNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    lows = []

    def watch(step, out, x, y):
        lows.append(float(out.detach()[:, 1].min()))

    stop = _loop(ctx, model, opt, _punch_holes(gen, 64, 32603), 300, _weibull_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN/inf at some step after 20", bad is not None and bad > 20)
    ctx.check("a row's scale is exactly 0 at that step", bad is not None and lows[bad] == 0.0)
    ctx.check("every scale was positive before it", bad is not None and min(lows[:bad]) > 0.0)
    ctx.check("the loss fell before", bad is not None and _fell(ctx.losses[:bad], 5, 0.95))
    ctx.check("the run stopped there", stop == bad)


# -- frog jumping: a stale partial-batch rescale multiplies one step's loss by 64 -----------------

ONSET_FJ = 140


@scenario(
    family="frog_jumping_contest_distance_silu_huber_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FJ,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the three-jump distance of a frog-jumping contest entry from nine readings (body length, leg span, water temperature, ...), ASGD at 2e-2, Huber loss, gradient clipping at 5.0, 240 steps. The loop rescales a short last batch by full_batch / rows; at step 140 a refactor passes the loss's dimension count (1) for rows on an ordinary full batch, so that one step's loss is multiplied by 64: the gradient bursts by that factor on ordinary data, the clipped step disturbs the weights, and the run recovers.",
)
def h326_frog_jumping_partial_batch_rescale(ctx: Context) -> None:
    gen = seeded(32604)
    model = Trunk(9, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)

    def backprop(step, loss, accumulate):
        rows = 1 if step == ONSET_FJ else 64  # meant the batch's row count
        return loss * (64 / rows)

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 9, 32604),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=5.0,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    pre = _median(gn[ONSET_FJ - 30 : ONSET_FJ])
    ctx.check("the gradient at onset is over 30x the median before", gn[ONSET_FJ] > 30 * pre)
    ctx.check(
        "the loss of that batch is ordinary (under 2x the steps before)",
        ls[ONSET_FJ] < 2 * _median(ls[ONSET_FJ - 20 : ONSET_FJ]),
    )
    ctx.check(
        "the run recovers (last 20 under 1.5x the 20 before onset)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_FJ - 20 : ONSET_FJ]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- extreme ironing: one shard's unmasked -9999 missing-value sentinels --------------------------

ONSET_EI = 110


@scenario(
    family="extreme_ironing_session_time_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_EI,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how long an extreme-ironing session (ironing a shirt on a crag or under water) takes from twelve standardised readings, SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0, 220 steps. The batch at step 110 comes from a shard whose altitude column carries the logger's -9999 missing-value sentinel unmasked in a dozen rows: that batch's loss jumps by orders of magnitude, the clipped step disturbs the weights, and the run recovers on the ordinary batches that follow.",
)
def h326_extreme_ironing_sentinel_shard(ctx: Context) -> None:
    gen = seeded(32605)
    model = Trunk(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scale = []

    def alter(step, x, y):
        if step == ONSET_EI:
            x = x.clone()
            x[:12, 3] = -9999.0  # missing altitude, never masked in this shard
        scale.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 12, 32605), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_EI - 20 : ONSET_EI])
    ctx.check(
        "the shard's inputs are over 100x the usual scale", scale[ONSET_EI] > 100 * _median(scale)
    )
    ctx.check("the bad batch's loss is over 100x the steps before", ls[ONSET_EI] > 100 * pre)
    ctx.check("the run recovers (last 20 under 2x the loss before)", _mean(ls[-20:]) < 2 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- stylophone: StepLR gamma typed 10 for 0.1 takes SGD past 2/sharpness -------------------------


def _sharpness(model, loss_fn, batch, iters=20):
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
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


ONSET_ST = 80


@scenario(
    family="stylophone_stylus_pitch_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_ST,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a stylophone's pitch error from eight stylus readings (contact position, pressure, battery voltage, ...), plain SGD at 0.05, MSE, StepLR every 80 steps, 200 steps. StepLR's gamma is typed 10 for 0.1: at step 80 the learning rate rises tenfold to 0.5, past the 2/sharpness stability limit (top Hessian eigenvalue measured by power iteration), and the loss oscillates and grows geometrically until it overflows.",
)
def h326_stylophone_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(32606)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_ST, gamma=10.0)  # meant 0.1
    probe = next(_gauges(torch.Generator().manual_seed(7), 256, 8, 32606))
    lams, lrs = {}, []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0 or step == ONSET_ST:
            lams[step] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _gauges(gen, 64, 8, 32606), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:ONSET_ST])
    lam_on = lams[ONSET_ST]
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check(
        "under the limit before onset (lr x sharpness < 2)",
        max(lrs[s] * lams[s] for s in lams if s < ONSET_ST) < 2.0,
    )
    ctx.check("past it from onset (lr x sharpness > 2)", lrs[ONSET_ST] * lam_on > 2.0)
    ctx.check("the loss fell before onset", low < 0.5 * ls[0])
    ctx.check(
        "the loss blew up over 1e4x its low after onset",
        blown is not None
        and blown > ONSET_ST
        and (_first_bad(ls) is not None or max(ls) > 1e4 * low),
    )


# -- vibraslap: the recurrent matrix gets the feed-forward ReLU gain ------------------------------


class ElmanReLU(nn.Module):
    """A hand-written ReLU Elman recurrence: h_t = relu(ih(x_t) + hh(h_{t-1}))."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[0], self.hh.in_features)
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return h


class RattleNet(nn.Module):
    def __init__(self, d_in=3, hidden=48):
        super().__init__()
        self.rnn = ElmanReLU(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        self.keep = None
        # the init helper written for the feed-forward layers, applied to every weight matrix
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(
                    m.weight, gain=2.0
                )  # He's variance factor 2, not its gain sqrt(2)

    def forward(self, x):
        return self.head(self.rnn(x, self.keep)).squeeze(-1)


def _rattles(gen, batch, seed, length=20):
    """A vibraslap's rattle: 20 frames of (envelope, teeth-strike rate, jawbone angle); the
    target is the (standardised) decay time."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        decay = torch.rand(batch, 1, generator=gen) * 0.15 + 0.02
        t = torch.arange(length)[None, :].float()
        env = torch.exp(-decay * t) * (1 + 0.1 * torch.randn(batch, length, generator=gen))
        rate = 0.5 * torch.randn(batch, 1, generator=gen).expand(batch, length)
        ang = 0.3 * torch.randn(batch, length, generator=gen)
        x = torch.stack([env, rate, ang], -1)
        y = (decay[:, 0] - 0.095) / 0.045 + 0.2 * (x.mean(1) @ w)
        yield x, y


@scenario(
    family="vibraslap_rattle_decay_relu_elman_rnn",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rnn", "rnn.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Elman RNN ('rnn' with input map rnn.ih and recurrent map rnn.hh, then head) reading 20 frames of a vibraslap's rattle to predict its decay time, SGD with Nesterov momentum at 1e-3, MSE, gradient clipping at 1.0, 150 steps. The init helper written for the feed-forward layers passes He's variance factor 2 as the orthogonal gain (the ReLU gain is sqrt(2)) and is applied to every weight matrix including the recurrent one, so the recurrence amplifies by well over 1 per frame: the loss starts in the tens of thousands, the gradient reaching the first hidden state is over 20x the last one's and the raw gradient norm is in the hundreds or more; clipping keeps the run finite and the loss only creeps down.",
)
def h326_vibraslap_recurrent_relu_gain(ctx: Context) -> None:
    gen = seeded(32607)
    model = RattleNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios = []

    def before(step):
        model.keep = [] if step % 10 == 0 else None

    def after(step):
        if model.keep:
            first = float(model.keep[0].grad.norm())
            last = float(model.keep[-1].grad.norm()) + 1e-12
            ratios.append(first / last)
        model.keep = None

    _loop(
        ctx,
        model,
        opt,
        _rattles(gen, 32, 32607),
        150,
        F.mse_loss,
        before=before,
        after=after,
        clip=1.0,
    )
    ctx.check("the first state's gradient is over 20x the last's", _median(ratios) > 20)
    ctx.check("the raw gradient norm is over 100 at its median", _median(ctx.grad_norms) > 100)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pinstriping: Adamax lr typed 1e0 for 1e-3, the ReLUs die --------------------------------------


@scenario(
    family="pinstriping_brush_stroke_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a pinstriper's sword-brush stroke into eight kinds from twelve readings (paint load, pull speed, line width, ...), Adamax, cross-entropy, 200 steps. The learning rate is typed 1e0 for 1e-3: the first updates, of size about lr per weight, push fc2's pre-activations negative for every input on nearly half of act2's units (measured on a fixed 512-row probe), those units die and stay dead, and the loss stalls well above what the same model reaches at the intended rate.",
)
def h326_pinstriping_adamax_lr_typo(ctx: Context) -> None:
    gen = seeded(32608)
    model = Trunk(12, 64, out=8)
    opt = torch.optim.Adamax(model.parameters(), lr=1.0)  # meant 1e-3
    probe = next(_sorts(torch.Generator().manual_seed(9), 512, 12, 8, 32608))
    dead, masks = [], []

    def before(step):
        with torch.no_grad():
            h = model.features(probe[0])
        dead.append(dead_fraction(h))
        masks.append((h <= 0).all(0))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 12, 8, 32608),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    # the same model at the intended rate, for the loss it should reach
    gen = seeded(32608)
    ref = Trunk(12, 64, out=8)
    ref_opt = torch.optim.Adamax(ref.parameters(), lr=1e-3)
    batches, ref_losses = _sorts(gen, 64, 12, 8, 32608), []
    for _ in range(200):
        x, y = next(batches)
        loss = F.cross_entropy(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss.detach()))
    ctx.check("under 5% of act2's units dead at step 0", dead[0] < 0.05)
    ctx.check("over 40% of them dead on every one of the last 50 steps", min(dead[-50:]) > 0.4)
    ctx.check(
        "the units dead at step 150 are still dead at the end",
        bool((masks[150] <= masks[-1]).all()) and bool(masks[150].any()),
    )
    ctx.check(
        "the loss stalls over 2x what the intended rate reaches",
        _mean(ctx.losses[-50:]) > 2 * _mean(ref_losses[-50:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cristal Baschet: the CLIP-style logit scale exponentiated twice ------------------------------


class CosineHead(nn.Module):
    """Cosine similarity to learned class embeddings times exp(logit_scale)."""

    def __init__(self, dim, classes):
        super().__init__()
        self.classes = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        # meant math.log(1 / 0.07): stores the scale itself, and forward exponentiates it again
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.classes, dim=-1).T
        return cos * self.logit_scale.exp()


class RodToneNet(nn.Module):
    def __init__(self, d_in=14, hidden=64, classes=9):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="cristal_baschet_rod_tone_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU trunk (fc1, act1, fc2) with a CLIP-style cosine head 'head' (learned class embeddings, logits = cos x exp(logit_scale)) classifying which of nine glass rods of a cristal Baschet sounds from fourteen readings (wet-finger friction, rod length, cone resonance, ...), NAdam at 1e-3, cross-entropy, 150 steps. The logit scale is initialised to 1 / 0.07 (the scale itself) where its log was meant, and forward exponentiates it: the logits are about 1.6e6 x cosine, the float32 softmax rounds most rows to exactly 0/1, the target probability is exactly 1.0 for the rows it gets right and the loss is huge and spiky on the rest.",
)
def h326_cristal_baschet_logit_scale_twice(ctx: Context) -> None:
    gen = seeded(32609)
    model = RodToneNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    coll = []

    def watch(step, out, x, y):
        coll.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 14, 9, 32609),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("the applied scale is over 1e5", float(model.head.logit_scale.detach().exp()) > 1e5)
    ctx.check(
        "over a quarter of rows' target softmax is exactly 1.0 late", _mean(coll[-30:]) > 0.25
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tabla: the phase-two loss weight read from the warm-up key for one step ----------------------

ONSET_TB = 100
CFG_TB = {"warmup_steps": 5000, "aux_weight": 0.5}


@scenario(
    family="tabla_dayan_head_tuning_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TB,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how far a tabla's dayan head is off its tuning from ten tapping readings (gajra hammer position, syahi load, humidity, ...), Adam at 1e-3, MSE, 220 steps. At step 100 the run enters its second phase and, for that one step, the loss weight is read as cfg['warmup_steps'] (5000) instead of cfg['aux_weight'] (0.5): one gradient thousands of times its size fills Adam's second moment, and for the following steps the per-weight updates are a small fraction of what they were on ordinary gradients, so the loss stops improving.",
)
def h326_tabla_phase_two_weight_key(ctx: Context) -> None:
    gen = seeded(32610)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    upd, prev = [], {}

    def before(step):
        prev.update(_snapshot(model))

    def after(step):
        mv = [
            float((p.detach() - prev[n]).abs().median())
            for n, p in model.named_parameters()
            if p.dim() == 2
        ]
        upd.append(_mean(mv))

    def backprop(step, loss, accumulate):
        key = "warmup_steps" if step == ONSET_TB else "aux_weight"  # the phase flag read too early
        return loss * CFG_TB[key] * 2.0

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 32610),
        220,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    gn = ctx.grad_norms
    ctx.check(
        "the gradient at onset is over 1000x the median before",
        gn[ONSET_TB] > 1000 * _median(gn[:ONSET_TB]),
    )
    ctx.check(
        "once the burst's momentum has decayed (steps 120-170) the median update is under 1/10 of"
        " the 20 steps before onset",
        _median(upd[ONSET_TB + 20 : ONSET_TB + 70]) < 0.1 * _median(upd[ONSET_TB - 20 : ONSET_TB]),
    )
    ctx.check(
        "the loss stops improving (mean of the last 50 not under the 20 before onset)",
        _mean(ctx.losses[-50:]) >= _mean(ctx.losses[ONSET_TB - 20 : ONSET_TB]),
    )
    ctx.check(
        "gradients after onset are ordinary (under 3x the median before)",
        _median(gn[ONSET_TB + 1 :]) < 3 * _median(gn[:ONSET_TB]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------

PRIORS_HH = [0.45, 0.2, 0.12, 0.1, 0.08, 0.05]


@scenario(
    family="hobby_horse_show_jump_fault_weighted_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, dropout, head) classifying a hobby-horsing show-jumping round into six fault kinds (clear, knock-down, refusal, run-out, stumble, fall: badly imbalanced) from ten readings, AdamW at 3e-3 with weight decay 1e-2, cross-entropy weighted by inverse class frequency (normalised to mean 1), linear warm-up over 20 steps then cosine decay, gradient clipping at 1.0, 200 steps. A healthy control.",
)
def h326_hobby_horse_balanced_control(ctx: Context) -> None:
    gen = seeded(32611)
    model = Trunk(10, 64, out=6, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    inv = 1.0 / torch.tensor(PRIORS_HH)
    weight = inv / inv.mean()
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )

    def loss_fn(out, y):
        return F.cross_entropy(out, y, weight=weight)

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 10, 6, 32611, spread=1.0, priors=PRIORS_HH),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    model.eval()
    x, y = next(
        _sorts(torch.Generator().manual_seed(3), 2000, 10, 6, 32611, spread=1.0, priors=PRIORS_HH)
    )
    with torch.no_grad():
        pred = model(x).argmax(1)
    recall = [float((pred[y == c] == c).float().mean()) for c in range(6)]
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("balanced accuracy over 0.6", _mean(recall) > 0.6)
    ctx.check("finite throughout", _finite(ctx.losses))


class ShakeConv(nn.Module):
    """conv1, act1, conv2, act2, pool, head over (batch, 1, 64) signals."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.GELU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(self.pool(h)[..., 0])


def _shakes(gen, batch, length=64):
    """A flexatone shaken at one of five pitches: 64 samples of a decaying tone plus noise."""
    freqs = torch.tensor([0.06, 0.09, 0.13, 0.18, 0.24])
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(6.28 * freqs[y][:, None] * t + phase) * torch.exp(-t / 48)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="flexatone_shake_pitch_fp16_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU Conv1d classifier (conv1, act1, conv2, act2, pool, head) telling which of five pitches a shaken flexatone plays from 64 noisy samples, Adagrad under OneCycleLR (peak 0.05, no momentum cycling), fp16 autocast with a torch.amp.GradScaler, cross-entropy with label smoothing 0.1, gradient clipping at 1.0 after unscaling, 180 steps. A healthy control.",
)
def h326_flexatone_fp16_control(ctx: Context) -> None:
    gen = seeded(32612)
    model = ShakeConv()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _shakes(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    x, y = next(_shakes(torch.Generator().manual_seed(5), 1000))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))


class EtchNet(nn.Module):
    """SiLU trunk with a mean head and a log-variance head."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.logvar_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.logvar_head(h)], -1)


def _etch_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp(), eps=1e-4)


def _etches(gen, batch, seed):
    """Aquatint plates: nine readings (rosin grain, bath strength, minutes in the ferric
    chloride, ...); the etch depth has a mean and a noise level that both depend on them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    v = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        mu = torch.tanh(x @ w / 3.0)
        sd = 0.1 + 0.3 * torch.sigmoid(x @ v / 3.0)
        yield x, mu + sd * torch.randn(batch, generator=gen)


@scenario(
    family="aquatint_rosin_ground_etch_depth_gaussian_nll_net",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, mean_head, logvar_head) predicting the etch depth of an aquatint plate and its spread from nine readings, Gaussian negative log-likelihood, SGD with momentum 0.9 at 1e-2, accumulation over 2 micro-batches, ReduceLROnPlateau on a fixed validation batch, gradient clipping at 1.0, 220 steps. A healthy control.",
)
def h326_aquatint_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(32613)
    model = EtchNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    val = next(_etches(torch.Generator().manual_seed(11), 512, 32613))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(_etch_nll(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        _etches(gen, 32, 32613),
        220,
        _etch_nll,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check(
        "the loss fell",
        _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5,
    )
    ctx.check("validation NLL under 0", plateau() < 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))
