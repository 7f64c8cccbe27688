"""Held-out set 458 (``h458_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a cooper's cask croze-depth twelve-layer tanh regressor initialised with orthogonal gain 3
typed for 1 (gradients grow back through depth, clipped, Adamax), a river-distributary avulsion
graph attention network over generated channel graphs whose curriculum loss-weight table reads
400 for 0.4 at step 120 (one gradient burst, clipped, SGD momentum), a tabla dayan stroke
classifier whose logits are divided by a temperature typed 1e-3 for 1e0 (the softmax saturates,
plain SGD), a hailstone lobe-census regressor taking log(count / total) with no floor (an empty
lobe bin at step 100, log 0, NaN, AdamW), a reed-thatch coat-depth Huber regressor fed one shard
in millimetres (one corrupted batch, RAdam), a wheelwright tyre-shrink two-group regressor whose
trunk lr is typed 1e-9 for 1e-3 (fc1 and fc2 frozen, Adagrad), an aurora-oval boundary regressor
whose hand-written L2 penalty is subtracted (a slow climb, NAdam), an epee touch classifier
feeding raw logits to nll_loss (the head's logits grow without bound, Adam), a bobbin-lace pin
tension regressor whose fc2 biases are initialised to -3.0 for -0.03 (its ReLUs dead, RMSprop)
and a saddler tree-flocking regressor whose static 2**20 loss scale is not divided back for one
resumed step (Adam's second moment poisoned, the updates stall).

Controls: a waterspout vortex-pressure conv1d forecaster trained with progressive resizing (the
trace length doubles from 16 to 32 at step 120; SGD Nesterov, warm-up and cosine decay,
clipping); an fp16 bagpipe chanter-reed GELU classifier (GradScaler, AdamW under OneCycleLR,
label smoothing, clipping); a coppice stool-ring tied-weight autoencoder classifier (Adam,
ReduceLROnPlateau, accumulation over 2, label smoothing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _params_norm(model):
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
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
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
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
    return losses, norms


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


# -- 1. exploding gradients: a deep tanh stack at the wrong gain -----------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


COOPER_GAIN = 3.0


@scenario(
    family="cooper_cask_croze_depth_deep_tanh_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Cooper's cask croze-depth regressor (a twelve-layer tanh MLP on stave thickness, "
    "bilge and head-diameter readings, MSE, Adamax, clipping at 1). The init helper is called "
    "with orthogonal gain 3 typed for 1: the stack is in the chaotic regime and the gradient "
    "grows going back through depth, the first layers' weight gradients tens of times the last "
    "layer's (against a few times at gain 1).",
)
def h458_cooper_cask_gain_typo(ctx) -> None:
    def ratios(gain, c, steps=150):
        gen = seeded(4581)
        model = _DeepTanh(gain=gain)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
        rs = []

        # measure the depth ratio on the gradients the optimizer is about to use
        orig_step = opt.step

        def step_and_measure(*a, **k):
            g0 = model.layers[0].weight.grad
            gl = model.layers[-1].weight.grad
            if g0 is not None and gl is not None:
                rs.append(float(g0.norm() / gl.norm().clamp_min(1e-30)))
            return orig_step(*a, **k)

        opt.step = step_and_measure
        losses, _ = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, seed=4581),
            steps,
            F.mse_loss,
            clip=1.0,
            attach=c is not None,
        )
        return rs, losses

    ref, _ = ratios(1.0, None, steps=20)
    rs, losses = ratios(COOPER_GAIN, ctx)
    ctx.check("first layer's gradient over 20x the last's", _mean(rs[:10]) > 20 * 1.0)
    ctx.check("under 5x at gain 1", _mean(ref[:10]) < 5.0)
    ctx.check("loss finite", _finite(losses))


# -- 2. gradient spike: a graph attention network with a loss-weight typo --------------------------


class _GATLayer(nn.Module):
    """Dense multi-head graph attention (Velickovic et al.): each node attends over its
    neighbours (and itself), e_ij = LeakyReLU(a_src . W h_i + a_dst . W h_j)."""

    def __init__(self, d_in, d_out, heads, concat=True):
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.lin = nn.Linear(d_in, heads * d_out, bias=False)
        self.a_src = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.a_dst = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.bias = nn.Parameter(torch.zeros(heads * d_out if concat else d_out))

    def forward(self, h, adj):
        b, n, _ = h.shape
        wh = self.lin(h).reshape(b, n, self.heads, self.d_out)
        src = (wh * self.a_src).sum(-1)  # b, n, heads
        dst = (wh * self.a_dst).sum(-1)
        e = F.leaky_relu(src[:, :, None, :] + dst[:, None, :, :], 0.2)  # b, i, j, heads
        e = e.masked_fill(~adj[..., None], float("-inf"))
        alpha = torch.softmax(e, dim=2)
        out = torch.einsum("bijh,bjhd->bihd", alpha, wh)
        out = out.reshape(b, n, -1) if self.concat else out.mean(2)
        return out + self.bias


class _ChannelGAT(nn.Module):
    def __init__(self, d_in=6, hidden=8, heads=4, classes=3):
        super().__init__()
        self.gat1 = _GATLayer(d_in, hidden, heads)
        self.gat2 = _GATLayer(hidden * heads, classes, heads, concat=False)

    def forward(self, inp):
        x, adj = inp
        h = F.elu(self.gat1(x, adj))
        return self.gat2(h, adj).reshape(-1, self.gat2.d_out)


def _channel_graphs(gen, graphs=16, nodes=12, d_in=6, classes=3, seed=4582):
    """Random distributary graphs (edges with p 0.25, self-loops); a node's class is the argmax
    of a fixed projection of its neighbourhood's mean reading."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(d_in, classes, generator=g)
    while True:
        x = torch.randn(graphs, nodes, d_in, generator=gen)
        a = torch.rand(graphs, nodes, nodes, generator=gen) < 0.25
        adj = a | a.transpose(1, 2) | torch.eye(nodes, dtype=torch.bool)
        mean = (adj.float() @ x) / adj.float().sum(-1, keepdim=True)
        y = (0.5 * x + mean) @ proj
        yield (x, adj), y.argmax(-1).reshape(-1)


AVULSION_STEP = 120


@scenario(
    family="river_distributary_avulsion_graph_attention_classifier",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=AVULSION_STEP,
    note="River-distributary avulsion-risk node classifier (a hand-written two-layer graph "
    "attention network, four heads attending over each channel node's neighbours, on generated "
    "delta graphs, cross-entropy, SGD momentum, clipping at 1). The curriculum loss-weight "
    "table has step 120 typed 400 for 0.4: for that one step the backpropagated loss is 1000x "
    "its usual weight, the gradient bursts on an ordinary batch and logged loss, and the "
    "clipped run recovers.",
)
def h458_distributary_gat_weight_typo(ctx) -> None:
    gen = seeded(4582)
    model = _ChannelGAT()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    weights = {AVULSION_STEP: 400.0}

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _channel_graphs(gen),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=lambda s, loss: loss * weights.get(s, 0.4) / 0.4,
        clip=1.0,
    )
    k = AVULSION_STEP
    ctx.check(
        "gradient over 50x the median before at step 120",
        norms[k] > 50 * _median(norms[k - 50 : k]),
    )
    ctx.check("the logged loss ordinary at step 120", losses[k] < 2 * _median(losses[k - 50 : k]))
    ctx.check("trained", _fell(losses))
    ctx.check(
        "recovers: last 20 under 1.5x the median before",
        _mean(losses[-20:]) < 1.5 * _median(losses[k - 50 : k]),
    )


# -- 3. softmax collapse: a temperature typo -------------------------------------------------------


TABLA_T = 1e-3


class _TempNet(_Net):
    def __init__(self, temperature):
        super().__init__(64, 64, 10, act=nn.GELU)
        self.temperature = temperature
        self.last_logits = None

    def forward(self, x):
        out = super().forward(x) / self.temperature
        self.last_logits = out.detach()
        return out


@scenario(
    family="tabla_dayan_syahi_stroke_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tabla dayan stroke (bol) classifier (a GELU MLP on 8x8 syahi-contact pressure maps, "
    "the bundled digits standing in, cross-entropy, plain SGD). The logits are divided by a "
    "temperature typed 1e-3 for 1e0: the softmax saturates and most rows' target probability "
    "rounds to exactly 1.0 in float32, against almost none at 1.0.",
)
def h458_tabla_temperature_typo(ctx) -> None:
    def run(t, c):
        gen = seeded(4583)
        model = _TempNet(t)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        fr = []
        batches = digit_batches(gen, 64)

        def alter(step, x, y):
            alter.y = y
            return x, y

        losses, _ = _loop(
            c,
            model,
            opt,
            batches,
            200,
            F.cross_entropy,
            classifier=True,
            alter=alter,
            after=lambda s: fr.append(collapsed_fraction(model.last_logits, alter.y)),
            attach=c is not None,
        )
        return fr, losses

    ref, _ = run(1.0, None)
    fr, losses = run(TABLA_T, ctx)
    ctx.check("over half the rows' target probability exactly 1.0", _mean(fr[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1", _mean(ref[-30:]) < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 4. nonfinite: log of a share with no floor ----------------------------------------------------


class _LogShare(nn.Module):
    def forward(self, counts):
        return torch.log(counts / counts.sum(-1, keepdim=True))


class _LobeNet(nn.Module):
    def __init__(self, lobes=6, hidden=48):
        super().__init__()
        self.logshare = _LogShare()
        self.fc1 = nn.Linear(lobes, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.last_share = None

    def forward(self, counts):
        z = self.logshare(counts)
        self.last_share = z.detach()
        return self.head(F.silu(self.fc2(F.silu(self.fc1(z))))).squeeze(-1)


def _lobe_counts(gen, batch=64, lobes=6, seed=4584):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(lobes, generator=g)
    while True:
        rate = 3.0 + 6.0 * torch.rand(batch, lobes, generator=gen)
        counts = 1.0 + torch.poisson(rate, generator=gen)
        share = torch.log(counts / counts.sum(-1, keepdim=True))
        yield counts, torch.tanh(share @ w / 3.0) + 0.02 * torch.randn(batch, generator=gen)


HAIL_STEP = 100


@scenario(
    family="hailstone_lobe_census_log_ratio_regressor",
    optimizer="AdamW",
    cause="nonfinite",
    where=("logshare",),
    diverges=HAIL_STEP,
    heldout=True,
    onset=HAIL_STEP,
    note="Hailstone lobe-census growth regressor (a SiLU MLP on the log share of each of six "
    "lobe counts, log(count / total), MSE, AdamW). The share is logged with no floor or "
    "+1: a stone at step 100 has an empty lobe bin, log 0 = -inf comes out of the logshare "
    "module, fc1 turns it into inf - inf, and the loss is NaN at step 100.",
)
def h458_hailstone_log_zero(ctx) -> None:
    gen = seeded(4584)
    model = _LobeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == HAIL_STEP:
            x = x.clone()
            x[5, 2] = 0.0
        return x, y

    def after(step):
        seen[step] = bool(torch.isinf(model.last_share).any())

    losses, _ = _loop(ctx, model, opt, _lobe_counts(gen), 200, F.mse_loss, alter=alter, after=after)
    ctx.check("loss finite before step 100", _finite(losses[:HAIL_STEP]))
    ctx.check(
        "loss NaN/inf at step 100",
        len(losses) == HAIL_STEP + 1 and not math.isfinite(losses[HAIL_STEP]),
    )
    ctx.check("the log share -inf at step 100", seen.get(HAIL_STEP, False))
    ctx.check(
        "trained before it", _mean(losses[HAIL_STEP - 10 : HAIL_STEP]) < 0.8 * _mean(losses[:10])
    )


# -- 5. data outlier: one shard in millimetres -----------------------------------------------------


THATCH_STEP = 110


@scenario(
    family="reed_thatch_coat_depth_huber_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=THATCH_STEP,
    note="Reed-thatch coat-depth regressor (a ReLU MLP on bundle length, butt diameter, pitch "
    "and exposure readings, Huber, RAdam, clipping at 5). One survey shard read at step 110 "
    "has its bundle-length and butt-diameter columns in raw millimetres, not standardised: one "
    "corrupted batch, the loss and gradient jump for that step and the run recovers.",
)
def h458_thatch_mm_shard(ctx) -> None:
    gen = seeded(4585)
    model = _Net(8, 48, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == THATCH_STEP:
            x = x.clone()
            x[:, 0] = 1200.0 + 150.0 * x[:, 0]
            x[:, 1] = 250.0 + 30.0 * x[:, 1]
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4585),
        220,
        F.huber_loss,
        alter=alter,
        clip=5.0,
    )
    k = THATCH_STEP
    base = _median(losses[k - 30 : k])
    ctx.check("loss over 20x the median before at step 110", losses[k] > 20 * base)
    ctx.check("gradient over 10x the median before", norms[k] > 10 * _median(norms[k - 30 : k]))
    ctx.check("recovers: last 20 under 2x the median before", _mean(losses[-20:]) < 2 * base)
    ctx.check("loss finite", _finite(losses))


# -- 6. update ratio: a param-group lr typo --------------------------------------------------------


@scenario(
    family="wheelwright_tyre_shrink_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Wheelwright iron-tyre shrink-fit regressor (a ReLU MLP on tyre circumference, heat "
    "colour and felloe readings, MSE, Adagrad with two param groups: the trunk and the head). "
    "The trunk group's lr is typed 1e-9 for 1e-3: fc1 and fc2 receive gradients but barely "
    "move, while the head trains at 1e-2.",
)
def h458_wheelwright_trunk_lr_typo(ctx) -> None:
    gen = seeded(4586)
    model = _Net(8, 48, 1)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    w0 = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    got_grad = []

    orig = opt.step

    def step(*a, **k):
        got_grad.append(float(model.fc1.weight.grad.norm()))
        return orig(*a, **k)

    opt.step = step
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, seed=4586), 200, F.mse_loss)
    ch = {n: _rel_change(w0[n], getattr(model, n).weight) for n in w0}
    ctx.check("fc1 moves under 1e-5 of its norm", ch["fc1"] < 1e-5)
    ctx.check("fc2 moves under 1e-5 of its norm", ch["fc2"] < 1e-5)
    ctx.check("head moves over 5%", ch["head"] > 0.05)
    ctx.check("fc1 receives gradients", _median(got_grad) > 1e-4)
    ctx.check("loss finite", _finite(losses))


# -- 7. loss divergence: a weight-decay sign bug ---------------------------------------------------


AURORA_WD = 2e-2


@scenario(
    family="aurora_oval_boundary_decay_sign_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Aurora-oval equatorward-boundary latitude regressor (a SiLU MLP on solar-wind speed, "
    "IMF Bz and Kp readings, MSE, NAdam). The hand-written L2 penalty is subtracted instead of "
    "added (loss - wd * ||w||^2): the weights grow steadily and the loss, after training, "
    "climbs slowly with no other mechanism.",
)
def h458_aurora_decay_sign(ctx) -> None:
    gen = seeded(4587)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    n0 = _params_norm(model)

    def backprop(step, loss):
        return loss - AURORA_WD * sum((p**2).sum() for p in model.parameters())

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4587), 300, F.mse_loss, backprop=backprop
    )
    means = [_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19)]
    lowest = min(means)
    ctx.check("last 20 over 3x the lowest 20-step mean", _mean(losses[-20:]) > 3 * lowest)
    ctx.check(
        "climbing through the second half", _mean(losses[-20:]) > 1.5 * _mean(losses[150:170])
    )
    ctx.check("weight norm over 2x", _params_norm(model) > 2 * n0)
    ctx.check("loss finite", _finite(losses))


# -- 8. output logit divergence: nll_loss on raw logits --------------------------------------------


@scenario(
    family="fencing_epee_touch_raw_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Epee fencing touch classifier (a ReLU MLP on blade-contact and lunge readings, four "
    "touch targets, Adam). The loss is F.nll_loss on the raw logits with the log_softmax "
    "forgotten: minimising -logit[target] has no floor, the head's logits grow without bound "
    "and the 'loss' goes far below zero.",
)
def h458_epee_raw_nll(ctx) -> None:
    gen = seeded(4588)
    model = _Net(16, 64, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    peak = []

    def alter(step, x, y):
        with torch.no_grad():
            peak.append(float(model(x).abs().max()))
        return x, y

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 4, seed=4588),
        200,
        F.nll_loss,
        classifier=True,
        alter=alter,
    )
    ctx.check("max |logit| over 20x its start", _mean(peak[-10:]) > 20 * _mean(peak[:5]))
    ctx.check("still growing", _mean(peak[-10:]) > 1.2 * _mean(peak[-40:-30]))
    ctx.check("the 'loss' below -10", losses[-1] < -10)


# -- 9. loss of plasticity: fc2 biases at -3 -------------------------------------------------------


@scenario(
    family="bobbin_lace_pin_tension_dead_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Bobbin-lace pin-tension regressor (a ReLU MLP on thread gauge, pair count and pricking "
    "readings, MSE, RMSprop). The init code sets fc2's biases to -3.0 for -0.03: every fc2 "
    "ReLU is negative on every input from the start, the units are dead, no gradient reaches "
    "them or fc1, and the run learns little more than a constant.",
)
def h458_bobbin_lace_dead_bias(ctx) -> None:
    def run(bias, c):
        gen = seeded(4589)
        model = _Net(8, 48, 1)
        nn.init.constant_(model.fc2.bias, bias)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        data = _readings(gen, 64, 8, seed=4589)
        losses, _ = _loop(c, model, opt, data, 200, F.mse_loss, attach=c is not None)
        x, _ = next(data)
        with torch.no_grad():
            dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
        return dead, losses

    ref_dead, ref_losses = run(-0.03, None)
    dead, losses = run(-3.0, ctx)
    ctx.check("over 80% of fc2's units dead", dead > 0.8)
    ctx.check("under 20% at -0.03", ref_dead < 0.2)
    ctx.check("loss over 1.3x the reference's", _mean(losses[-20:]) > 1.3 * _mean(ref_losses[-20:]))
    ctx.check("loss finite", _finite(losses))


# -- 10. Adam's second moment poisoned: a static loss scale left in --------------------------------


SADDLER_STEP = 80


@scenario(
    family="saddler_tree_flocking_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SADDLER_STEP,
    note="Saddler's tree-flocking panel-fit regressor (a GELU MLP on wool density, panel and "
    "tree readings, MSE, Adam). On the resumed step 80 the static 2**20 loss scale of a mixed-"
    "precision recipe is applied but not divided back: one gradient a million times too "
    "large fills Adam's second moment and the updates afterwards shrink to almost nothing.",
)
def h458_saddler_loss_scale(ctx) -> None:
    def run(c, poison):
        gen = seeded(4590)
        model = _Net(8, 48, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves = []
        prev = [None]

        def before(step):
            prev[0] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            moves.append(
                math.sqrt(
                    sum(
                        float((p.detach() - q).norm() ** 2)
                        for p, q in zip(model.parameters(), prev[0], strict=True)
                    )
                )
            )

        def backprop(step, loss):
            return loss * 2.0**20 if poison and step == SADDLER_STEP else loss

        losses, norms = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, seed=4590),
            240,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=c is not None,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(None, False)
    losses, norms, moves = run(ctx, True)
    k = SADDLER_STEP
    ctx.check("gradient over 1e4x the median before", norms[k] > 1e4 * _median(norms[k - 40 : k]))
    ctx.check(
        "updates 20-120 steps later under 1/10 of those before",
        _mean(moves[k + 20 : k + 120]) < 0.1 * _mean(moves[k - 40 : k]),
    )
    ctx.check(
        "loss over 1.5x the clean run's at the end",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 11. control: progressive resizing -------------------------------------------------------------


class _VortexConv(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x[:, None, :]))))
        return self.head(h.mean(-1)).squeeze(-1)


def _vortex_traces(gen, length, batch=64):
    """Pressure traces of a passing waterspout: a decaying oscillation whose decay rate is the
    target (time in units of the full 32-sample trace)."""
    t = torch.arange(length, dtype=torch.float32) / 32.0
    k = 0.5 + 2.0 * torch.rand(batch, 1, generator=gen)
    w = 6.0 + 4.0 * torch.rand(batch, 1, generator=gen)
    phi = 6.28 * torch.rand(batch, 1, generator=gen)
    x = torch.exp(-k * t) * torch.cos(w * t + phi) + 0.05 * torch.randn(
        batch, length, generator=gen
    )
    return x, (k.squeeze(1) - 1.5)


RESIZE_STEP = 120


@scenario(
    family="waterspout_vortex_pressure_progressive_conv1d_forecaster",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Waterspout vortex-decay estimator (a ReLU conv1d over the pressure trace of a passing "
    "vortex, mean pooling, MSE, SGD Nesterov with a 20-step linear warm-up and cosine decay, "
    "clipping at 1) trained with progressive resizing: 16-sample crops, then full 32-sample "
    "traces from step 120. The loss jumps a little at the switch, then falls. Control.",
)
def h458_waterspout_progressive_resize(ctx) -> None:
    gen = seeded(4591)
    model = _VortexConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 240
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )

    def batches():
        step = 0
        while True:
            yield _vortex_traces(gen, 16 if step < RESIZE_STEP else 32)
            step += 1

    losses, _ = _loop(ctx, model, opt, batches(), steps, F.mse_loss, sched=sched, clip=1.0)
    k = RESIZE_STEP
    ctx.check("trained", _fell(losses, ratio=0.5))
    ctx.check("loss finite", _finite(losses))
    ctx.check("the loss jumps at the switch", _mean(losses[k : k + 5]) > _mean(losses[k - 10 : k]))
    ctx.check("then falls below the jump", _mean(losses[-20:]) < _mean(losses[k : k + 5]))


# -- 12. control: fp16 autocast classifier ---------------------------------------------------------


@scenario(
    family="bagpipe_chanter_reed_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bagpipe chanter-reed strength grader (a GELU MLP on reed-gap, scrape and pressure "
    "readings, six grades, fp16 autocast with a GradScaler, AdamW under OneCycleLR, label "
    "smoothing 0.1, clipping at 1). Control.",
)
def h458_bagpipe_reed_fp16(ctx) -> None:
    gen = seeded(4592)
    model = _Net(16, 64, 6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, seed=4592, spread=1.2),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("trained", _fell(losses, ratio=0.6))
    ctx.check("loss finite", _finite(losses))
    ctx.check("loss scale finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))


# -- 13. control: tied-weight autoencoder classifier -----------------------------------------------


class _TiedAE(nn.Module):
    def __init__(self, d_in=64, code=32, classes=10):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(code, classes)
        self.recon_loss = torch.tensor(0.0)

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        recon = F.linear(z, self.enc.weight.t(), self.dec_bias)
        self.recon_loss = F.mse_loss(recon.float(), x.float())
        return self.head(z)


@scenario(
    family="coppice_stool_ring_tied_autoencoder_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Coppice stool growth-ring grader (a tied-weight autoencoder, the decoder the encoder's "
    "transpose, with a classifier head on the code; 8x8 ring-section scans, the bundled digits "
    "standing in; cross-entropy with label smoothing 0.05 plus 0.5 x reconstruction MSE, Adam, "
    "accumulation over 2, ReduceLROnPlateau on the loss). Control.",
)
def h458_coppice_tied_ae(ctx) -> None:
    gen = seeded(4593)
    model = _TiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses: list[float] = []

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05) + 0.5 * model.recon_loss

    def after(step):
        losses.append(ctx.losses[-1])

    got, _ = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 32),
        200,
        loss_fn,
        classifier=True,
        accumulate=2,
        sched=sched,
        plateau=lambda: _mean(losses[-10:]) if losses else 0.0,
        after=after,
    )
    ctx.check("trained", _fell(got, ratio=0.6))
    ctx.check("loss finite", _finite(got))
