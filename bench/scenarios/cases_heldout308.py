"""Held-out set 308 (``h308_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kyykka (Finnish skittles) throw regressor whose per-shard
loss-weight table lost a decimal point for one shard (one gradient spike), a ham-radio
band-opening tagger whose skimmer counts were never divided by the number of skimmers (BCE targets
of 2, head logits grow without bound), a lucha canaria bout classifier whose Adam learning rate was
typed 1e-1 (ReLUs die), a rounders hit-distance regressor fed one shard logged in centimetres (one
corrupted batch), an ant-trail junction message-passing net on generated trail graphs whose mean
aggregation divides by a zero degree (0/0, NaN), a hand-forged nail heading regressor initialised
with orthogonal gain 2.0 (gradients grow through depth), a shell-cameo layer classifier whose
trunk learning-rate multiplier was typed 1e-5 (trunk frozen), a pinhole-camera exposure regressor
whose OneCycleLR max_lr was typed 100x (learning rate past 2/sharpness), a crystal-radio signal
fp16 regressor whose criterion is sum-reduced (fp16 overflow under a GradScaler), a
hay-rake tine pull-out regressor whose hand-written weight decay divides by the factor (slow
climb of the loss), and three controls (a quipu cord-purpose bag-of-knots classifier with Adagrad on sparse
features, a bat-and-trap strike-outcome fp16 classifier with a GradScaler and OneCycleLR, a
plumb-bob settle-time Gaussian NLL net with NAdam, accumulation and ReduceLROnPlateau).

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    alter=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
    scaled=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, out, y, loss)`` returns the loss actually backpropagated,
    ``scaled(step)`` sees the gradients before the scaler unscales them, ``after(step)`` runs
    after the optimizer step; stops after a non-finite loss. Returns the step it stopped at."""
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
            out = out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)
            loss = loss_fn(out, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaled is not None:
            scaled(step)
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


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


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


# -- kyykka: the per-shard loss-weight table lost a decimal point for one shard ------------------

ONSET_KYY = 90


@scenario(
    family="kyykka_karttu_throw_nesterov_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KYY,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing two things about a kyykka (Finnish skittles) throw of the karttu bat (flight distance, number of skittles cleared out of the square; standardised) from 10 standardised readings of the thrower's swing, SGD Nesterov momentum 0.9 at 1e-2, Huber loss, gradient accumulation over 2 micro-batches, clipping at 1.0, 160 steps. Each shard has a loss weight from a CSV table; shard 7's weight 1.00 was typed as 100 (the decimal point lost), and shard 7 is read only at step 90: that step backpropagates 100x the loss on ordinary data, the gradient spikes about 100x (the logged Huber loss, unweighted, stays ordinary). Clipping bounds the step and the run goes on training.",
)
def h308_kyykka_shard_weight_typo(ctx: Context) -> None:
    gen = seeded(30801)
    model = Stack(10, 64, out=2, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        return loss * (100.0 if step == ONSET_KYY else 1.0)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=801, outputs=2),
        160,
        F.huber_loss,
        clip=1.0,
        accumulate=2,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_KYY - 20 : ONSET_KYY])
    ctx.check("the gradient at step 90 is over 50x the usual", g[ONSET_KYY] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_KYY + 1 : ONSET_KYY + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90's batches is ordinary",
        ls[ONSET_KYY] < 2.0 * _mean(ls[ONSET_KYY - 10 : ONSET_KYY]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- ham radio: skimmer counts never divided by the number of skimmers ---------------------------


class BandTagger(nn.Module):
    def __init__(self, d_in=12, hidden=48, bands=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, bands)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _band_reports(gen, batch, d_in=12, bands=6, seed=802):
    """Propagation readings (solar flux, K index, hour, season, ...) and, per band, how many of
    the two reverse-beacon skimmers heard it (0, 1 or 2)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, bands, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(2.5 * x @ w)
        heard = (torch.rand(batch, bands, 2, generator=gen) < p[..., None]).float().sum(-1)
        yield x, heard


@scenario(
    family="ham_radio_band_opening_rmsprop_bce_tagger",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) tagging which of 6 amateur-radio bands are open (multi-label, BCE with logits) from 12 standardised propagation readings (solar flux, K index, hour, season, ...), RMSprop at 3e-3, 300 steps. The soft target of a band is meant to be the share of the two reverse-beacon skimmers that heard it, but the division by the number of skimmers was dropped in the export: targets are 0, 1 or 2. A target of 2 is beyond any sigmoid, the BCE gradient sigmoid(z) - 2 never vanishes, so the head's logits for bands heard by both skimmers climb without bound (over 20x and past 30) and the loss goes negative. Finite, no blow-up.",
)
def h308_ham_radio_counts_not_shares(ctx: Context) -> None:
    gen = seeded(30802)
    model = BandTagger()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    probe = next(_band_reports(torch.Generator().manual_seed(8), 256))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _band_reports(gen, 64),
        300,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ls = ctx.losses
    ctx.check("the peak head logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak head logit passed 30", peaks[-1] > 30.0)
    ctx.check("the peak head logit still grows at the end", peaks[-1] > 1.2 * peaks[-6])
    ctx.check("the loss went negative", _mean(ls[-10:]) < 0.0)
    ctx.check("finite throughout", _finite(ls))


# -- lucha canaria: Adam's learning rate typed 1e-1 kills the ReLUs -------------------------------


@scenario(
    family="lucha_canaria_bout_mana_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of 6 throws (manas) ends a lucha canaria (Canarian wrestling) bout from 16 standardised readings of grip, stance and weight, Adam, cross-entropy, 200 steps. The learning rate in the config was typed 1e-1 for 1e-3: the first Adam steps move every bias and weight by about 0.1, pushing most of fc2's units negative on every input; those ReLUs get no gradient again and the net trains on what is left, its loss stuck far above a bug-free twin's.",
)
def h308_lucha_canaria_lr_typo(ctx: Context) -> None:
    gen = seeded(30803)
    model = Stack(16, 64, out=6, act=nn.ReLU)
    twin = Stack(16, 64, out=6, act=nn.ReLU)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 16, 6, seed=803, noise=1.0))[0]
    dead: list[float] = []

    def measure():
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(probe))))
            dead.append(float((h <= 0).all(0).float().mean()))

    def after(step):
        if step % 10 == 9:
            measure()

    measure()

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=803, noise=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    topt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    tgen = torch.Generator().manual_seed(30803)
    tb = _kinds(tgen, 64, 16, 6, seed=803, noise=1.0)
    tl = []
    for _ in range(200):
        x, y = next(tb)
        loss = F.cross_entropy(twin(x), y)
        loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
        tl.append(float(loss.detach()))
    ctx.check("under 10% of fc2's units dead at the start", dead[0] < 0.1)
    ctx.check("over half of fc2's units dead from step 50 on", min(dead[5:]) > 0.5)
    ctx.check(
        "the loss ends over 1.5x the bug-free twin's",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(tl[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rounders: one shard's hit distances logged in centimetres ------------------------------------

ONSET_ROU = 110


@scenario(
    family="rounders_hit_distance_momentum_mse_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROU,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how far a rounders hit travels (standardised metres) from 10 standardised readings of the bat swing and the bowl, SGD momentum 0.9 at 1e-2, MSE, clipping at 5.0, 220 steps. The batch at step 110 comes from one scorer's shard whose distances were logged in centimetres (100x, in standardised units): the loss on that batch is thousands of times the usual and its gradient is far above the rest; clipping bounds the step, the run is thrown off for a while and recovers.",
)
def h308_rounders_centimetre_shard(ctx: Context) -> None:
    gen = seeded(30804)
    model = Stack(10, 64, out=1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 100.0) if step == ONSET_ROU else (x, y)

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=804), 220, F.mse_loss, clip=5.0, alter=alter
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _mean(ls[ONSET_ROU - 10 : ONSET_ROU])
    ctx.check("the loss at step 110 is over 100x the steps before", ls[ONSET_ROU] > 100 * before)
    ctx.check(
        "the gradient at step 110 is over 50x the usual",
        g[ONSET_ROU] > 50 * _median(g[ONSET_ROU - 20 : ONSET_ROU]),
    )
    ctx.check("the loss recovered", _mean(ls[-10:]) < 2.0 * before)
    ctx.check("the loss fell", _fell(ls))


# -- ant trails: mean aggregation divides by a junction's degree, zero for a cut-off junction -----


class TrailMessagePassing(nn.Module):
    """One round of message passing: h_i' = tanh(self(h_i) + sum_j A_ij msg(h_j) / deg_i)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.msg = nn.Linear(dim_in, dim_out)
        self.self_lin = nn.Linear(dim_in, dim_out)

    def forward(self, h, adj):
        deg = adj.sum(-1, keepdim=True)
        agg = (adj @ self.msg(h)) / deg  # no clamp: 0/0 for a junction with no trail
        return torch.tanh(self.self_lin(h) + agg)


class TrailNet(nn.Module):
    def __init__(self, d_in=6, dim=32):
        super().__init__()
        self.mp1 = TrailMessagePassing(d_in, dim)
        self.mp2 = TrailMessagePassing(dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, inputs):
        x, adj = inputs
        h = self.mp2(self.mp1(x, adj), adj)
        return self.head(h).squeeze(-1)


def _trail_graphs(gen, batch=8, nodes=14, d_in=6, radius=0.65, seed=805):
    """Random geometric graphs of trail junctions in a unit square (joined within ``radius``),
    junction readings (pheromone, slope, food distance, ...) and ant traffic per junction, which
    depends on the junction's readings and its neighbours' mean."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    v = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        pos = torch.rand(batch, nodes, 2, generator=gen)
        dist = torch.cdist(pos, pos)
        adj = ((dist < radius) & ~torch.eye(nodes, dtype=torch.bool)).float()
        x = torch.randn(batch, nodes, d_in, generator=gen)
        deg = adj.sum(-1, keepdim=True).clamp(min=1.0)
        nb = (adj @ x) / deg
        y = (
            torch.tanh(x @ w)
            + torch.sin(2.0 * nb @ v)
            + 0.05 * torch.randn(batch, nodes, generator=gen)
        )
        yield (x, adj), y


def _isolated_at(steps, seed):
    gen = torch.Generator().manual_seed(seed)
    src = _trail_graphs(gen)
    for step in range(steps):
        (_, adj), _ = next(src)
        if (adj.sum(-1) == 0).any():
            return step
    return None


NAN_ANT = 75


@scenario(
    family="ant_trail_junction_traffic_mpnn",
    optimizer="Adam",
    cause="nonfinite",
    where=("mp1",),
    diverges=NAN_ANT,
    heldout=True,
    onset=NAN_ANT,
    note="A hand-written two-round message-passing network (mp1, mp2: h' = tanh(self_lin(h) + sum of neighbours' msg(h) / degree), then a Linear head) regressing the ant traffic at every junction of a foraging trail network from 6 junction readings (pheromone, slope, distance to food, ...), on generated random geometric graphs of 14 junctions (8 graphs a batch), Adam at 3e-3, MSE, 150 steps. The mean aggregation divides by the degree with no clamp; the generator seldom leaves a junction with no trail within reach, and the first batch with such a cut-off junction (step 75) makes mp1 compute 0/0: NaN in the junction's state, in the prediction and the loss at step 75.",
)
def h308_ant_trail_zero_degree(ctx: Context) -> None:
    gen = seeded(30809)
    model = TrailNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    stop = _train(ctx, model, opt, _trail_graphs(gen), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check(
        "the first batch with a cut-off junction is step 75", _isolated_at(150, 30809) == NAN_ANT
    )
    ctx.check("the loss is NaN at step 75", _first_bad(ls) == NAN_ANT and math.isnan(ls[NAN_ANT]))
    ctx.check("the run stopped there", stop == NAN_ANT)
    ctx.check("finite and falling before it", _finite(ls[:NAN_ANT]) and _fell(ls[:NAN_ANT]))


# -- nail heading: orthogonal init with gain 2.0 grows the gradient through depth ----------------


class NailHeadingNet(nn.Module):
    def __init__(self, d_in=8, width=48, depth=12):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(d_in if i == 0 else width, width) for i in range(depth)]
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=2.0)  # "ReLU gain is 2" (that is the variance)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.outs.append(z)
            x = F.relu(z)
        return self.head(x).squeeze(-1)


@scenario(
    family="nailer_heading_blow_count_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer ReLU MLP (layers.0 ... layers.11, width 48, then head) regressing how many hammer blows a nailer needs to head a hand-forged nail in the nail header from 8 standardised readings (rod gauge, heat colour, ...), plain SGD at 1e-4, MSE, clipping at 1.0, 150 steps. The init helper calls nn.init.orthogonal_(w, gain=2.0) because 'the ReLU gain is 2' (2 is the variance factor; the gain is sqrt(2)): every layer scales the signal by about sqrt(2), forwards and backwards, so the gradient grows about 2^5.5 through depth: the loss gradient at layers.0's output is over 20x that at layers.11's output and the total gradient is far above the clip throughout. Clipped, finite, no blow-up.",
)
def h308_nailer_orthogonal_gain_two(ctx: Context) -> None:
    gen = seeded(30806)
    model = NailHeadingNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratios: list[float] = []

    def scaled(step):
        ratios.append(float(model.outs[0].grad.norm() / model.outs[-1].grad.norm()))

    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=806), 150, F.mse_loss, clip=1.0, scaled=scaled
    )
    ctx.check(
        "the gradient at layers.0's output over 20x that at layers.11's at the start",
        ratios[0] > 20.0,
    )
    ctx.check("still over 10x at the end", _median(ratios[-20:]) > 10.0)
    ctx.check("the gradient norm is over 10x the clip", _median(ctx.grad_norms) > 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- shell cameo: the trunk's lr multiplier typed 1e-5 -------------------------------------------


@scenario(
    family="cameo_shell_layer_grade_two_group_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (trunk fc1, act1, fc2, act2; head) grading which of 5 layers of a conch shell a cameo carver has reached (from 14 standardised readings of colour and translucency), AdamW with two param groups (trunk, head), cross-entropy with label smoothing 0.1, 200 steps. The fine-tuning recipe sets the trunk's lr multiplier to 1e-5 (meant 1e-1): the trunk trains at 2e-8, its weights move by under a thousandth of their size in the whole run (updates about 1e-7 of the weights a step) while the head's move by over a percent; the loss falls only as far as a linear head on random features allows.",
)
def h308_cameo_trunk_mult_typo(ctx: Context) -> None:
    gen = seeded(30807)
    model = Stack(14, 64, out=5, act=nn.ReLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    base = 2e-3
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": base * 1e-5, "weight_decay": 0.01},
            {"params": model.head.parameters(), "lr": base, "weight_decay": 0.01},
        ]
    )
    t0, h0 = (
        torch.cat([_flat(model.fc1), _flat(model.fc2)]),
        _flat(model.head),
    )
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=807, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
    )
    t1, h1 = torch.cat([_flat(model.fc1), _flat(model.fc2)]), _flat(model.head)
    trunk_move = float((t1 - t0).norm() / t0.norm())
    head_move = float((h1 - h0).norm() / h0.norm())
    ctx.check("the trunk moved by under 1e-3 of its norm", trunk_move < 1e-3)
    ctx.check("the head moved by over 1% of its norm", head_move > 1e-2)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.95))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pinhole camera: OneCycleLR's max_lr typed 100x -----------------------------------------------


def _sharpness(model, x, y, iters=12):
    """Top Hessian eigenvalue of the MSE on (x, y) by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


ONSET_PIN = 20


@scenario(
    family="pinhole_camera_exposure_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_PIN,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the log exposure time of a pinhole camera shot from 8 standardised readings (pinhole diameter, focal length, light meter, film speed, ...), plain SGD under OneCycleLR (cycle_momentum off), MSE, 200 steps. The recipe's max_lr was typed 3.0 for 0.03: the warm-up ramps the learning rate from 0.12 upwards, and once it passes 2/sharpness (the top Hessian eigenvalue, measured every 10 steps by power iteration; crossed by step 20 at lr 0.4 against a sharpness near 6) the loss, which had been falling, climbs and blows up.",
)
def h308_pinhole_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(30810)
    model = Stack(8, 32, out=1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3.0, total_steps=steps, pct_start=0.5, cycle_momentum=False
    )
    px, py = next(_readings(torch.Generator().manual_seed(10), 256, 8, seed=810))
    seen: list[tuple[int, float, float]] = []

    def before(step):
        if step % 10 == 0:
            seen.append((step, opt.param_groups[0]["lr"], _sharpness(model, px, py)))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=810),
        steps,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    best = min(ls[:end])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 20 * best + 1.0), None)
    crossed = next((s for s, lr, lam in seen if lam > 0 and lr > 2.0 / lam), None)
    ctx.check("the loss fell first", blow is not None and _fell(ls[: min(blow, 60)], k=5))
    ctx.check("the loss blew up (over 20x its best, plus 1)", blow is not None)
    ctx.check(
        "the learning rate passed 2/sharpness before the blow-up",
        crossed is not None and blow is not None and crossed <= blow,
    )
    ctx.check("the crossing is at step 20 (on the 10-step grid)", crossed == ONSET_PIN)
    ctx.check("the learning rate was under 2/sharpness at the start", seen[0][1] < 2.0 / seen[0][2])


# -- crystal radio: a sum-reduced criterion under fp16 autocast ----------------


def _radio_sets(gen, batch, seed=811):
    """8 readings of a crystal set (coil turns, capacitor setting, cat's whisker spot, ...) and
    the antenna length, standardised, with the tuned station's signal strength (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g) / 3.0
    while True:
        x = torch.randn(batch, 9, generator=gen)
        y = (
            torch.tanh(x @ w)
            + 0.3 * torch.sin(2 * x[:, 8])
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="crystal_radio_signal_fp16_adamax_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1", "fc2", "head"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the signal strength of the station a crystal radio is tuned to from 9 standardised readings of the set (coil turns, capacitor setting, cat's whisker spot, antenna length, ...), batch 512, fp16 autocast with a torch.amp.GradScaler (init scale 65536), Adamax at 2e-3, clipping at 1.0 after unscale_, 150 steps. The criterion was ported from a Keras recipe as MSE with reduction='sum': the backpropagated loss is 512x the logged mean, and the fp16 weight gradients, times the loss scale, overflow to inf (fc1's, fc2's and the head's alike); the scaler skips step after step and its scale falls over 100x, far below where an ordinary run settles. The loss stays finite.",
)
def h308_crystal_radio_sum_reduction(ctx: Context) -> None:
    gen = seeded(30811)
    model = Stack(9, 64, out=1, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    infs: list[dict[str, bool]] = []

    def backprop(step, out, y, loss):
        return F.mse_loss(out, y, reduction="sum")

    def scaled(step):
        infs.append(
            {
                n: not bool(torch.isfinite(m.weight.grad).all())
                for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
            }
        )

    _train(
        ctx,
        model,
        opt,
        _radio_sets(gen, 512),
        150,
        F.mse_loss,
        backprop=backprop,
        scaled=scaled,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    sc = ctx.scales
    ctx.check(
        "the scaled gradient overflowed on over 5 steps", sum(any(d.values()) for d in infs) > 5
    )
    ctx.check("every layer's scaled gradient is inf at the first step", all(infs[0].values()))
    ctx.check("the loss scale fell over 100x", min(sc) < 65536.0 / 100)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- hay rake: the hand-written weight decay divides by its factor -------------------------------------


@scenario(
    family="hay_rake_tine_pullout_radam_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the force to pull a tine out of a hand-made wooden hay rake's head from 10 standardised readings (wood species, hole taper, moisture, ...), RAdam at 3e-3, MSE, 300 steps, with a hand-written per-step weight decay (factor 0.99) applied after the optimizer step. A refactor wrote it `p.div_(decay)` for `p.mul_(decay)`: every weight grows 1% a step, slowly outrunning what Adam's bounded steps can undo; the logged MSE falls for about 60 steps, then climbs steadily with no other mechanism, over 1000x its best by the end. Finite.",
)
def h308_hay_rake_decay_inverted(ctx: Context) -> None:
    gen = seeded(30812)
    model = Stack(10, 64, out=1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    decay = 0.99
    norms: list[float] = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.div_(decay)  # meant p.mul_(decay)
        norms.append(float(_flat(model).norm()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=812),
        300,
        F.mse_loss,
        after=after,
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("the loss fell first", ls[low] < 0.5 * _mean(ls[:5]))
    ctx.check("the loss ends over 10x its best", _mean(ls[-10:]) > 10 * ls[low])
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the climb is gradual (no step over 3x the step before)",
        all(b < 3 * a + 0.1 for a, b in zip(ls[low:], ls[low + 1 :], strict=False)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


class KnotBag(nn.Module):
    """Bag of hashed knot n-grams: EmbeddingBag (mean) -> tanh -> head."""

    def __init__(self, vocab=3000, dim=32, classes=4):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(self.act(self.bag(tokens)))


def _quipu_cords(gen, batch, vocab=3000, length=24, classes=4, seed=813):
    """Each cord: 24 hashed knot n-grams (long knots, figure-eights, spacing, colour), most of
    them common to every purpose, a few from the purpose's own vocabulary: a sparse task."""
    g = torch.Generator().manual_seed(seed)
    own = torch.randint(0, vocab, (classes, 40), generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        tokens = torch.randint(0, vocab, (batch, length), generator=gen)
        mark = torch.rand(batch, length, generator=gen) < 0.25
        pick = own[y][
            torch.arange(batch)[:, None], torch.randint(0, 40, (batch, length), generator=gen)
        ]
        yield torch.where(mark, pick, tokens), y


@scenario(
    family="quipu_cord_purpose_knot_bag_adagrad_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A bag-of-n-grams classifier (EmbeddingBag of 3000 hashed knot n-grams, mean, tanh, head) of what an Inca quipu cord records (census, tribute, calendar, storehouse) from 24 knot n-grams a cord, a quarter of them purpose-specific: a sparse-feature task, Adagrad at 0.1 (each rare n-gram keeps its own large step), cross-entropy, 200 steps. Trains normally.",
)
def h308_quipu_adagrad_control(ctx: Context) -> None:
    gen = seeded(30813)
    model = KnotBag()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    _train(ctx, model, opt, _quipu_cords(gen, 64), 200, F.cross_entropy, classifier=True)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="bat_and_trap_strike_outcome_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP (fc1, act1, fc2, act2, head) classifying the outcome of a bat-and-trap (Kent pub game) strike (caught, bowled out, short, between the posts, boundary) from 12 standardised readings of the trap flick and the swing, fp16 autocast with a torch.amp.GradScaler, AdamW at OneCycleLR max 3e-3 with weight decay 0.01, cross-entropy with label smoothing 0.1, clipping at 1.0 after unscale_, 200 steps. Trains normally.",
)
def h308_bat_and_trap_fp16_control(ctx: Context) -> None:
    gen = seeded(30814)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=814, noise=0.8),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("the loss scale stayed within 4x of its start", min(ctx.scales) >= 256.0)
    ctx.check("finite throughout", _finite(ctx.losses))


class SettleNet(nn.Module):
    """Mean and log-variance of the settle time: fc1, act1, fc2, act2, then mean and logvar heads."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.logvar(h).clamp(-8.0, 8.0)], -1)


def _settle_times(gen, batch, d_in=8, seed=815):
    """Readings (string length, bob mass, wind, ...) and a settle time whose noise depends on
    the wind reading."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        sd = 0.1 + 0.4 * torch.sigmoid(2 * x[:, 0])
        yield x, torch.tanh(x @ w) + 0.5 * x[:, 1] + sd * torch.randn(batch, generator=gen)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="plumb_bob_settle_time_nadam_gaussian_nll_net",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU net with a mean head and a clamped log-variance head predicting how long a surveyor's plumb bob takes to settle from 8 standardised readings (string length, bob mass, wind, ...), with noise that depends on the wind, Gaussian NLL, NAdam at 3e-3, gradient accumulation over 2 micro-batches of 32, ReduceLROnPlateau (patience 20), clipping at 5.0, 240 steps. Trains normally.",
)
def h308_plumb_bob_nll_control(ctx: Context) -> None:
    gen = seeded(30815)
    model = SettleNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _settle_times(gen, 32),
        240,
        _gaussian_nll,
        sched=sched,
        accumulate=2,
        clip=5.0,
    )
    ls = ctx.losses
    ctx.check("the NLL fell by over 0.5", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite throughout", _finite(ls))
