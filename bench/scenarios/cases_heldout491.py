"""Held-out set 491 (``h491_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, among them graph convolutional networks.

Faults: an avalanche slab-release 10-layer leaky-ReLU MLP initialised with gain 1.5 (exploding
gradients, SGD momentum), an alpaca-shearing fleece-weight regressor fed one shard in grams for
kilograms (SGD, clipped), a coppersmith kettle-planishing regressor whose auxiliary loss weight
is read 1e5 for one step (Adam's second moment poisoned), an ice-climbing screw-hold regressor
whose weights are restored from an early checkpoint once (a loss spike it recovers from, NAdam),
a geyser eruption-interval net taking log of a reading with no clamp (NaN, Adagrad), a bell
foundry casting-tone regressor whose encoder group keeps lr 0 from a freeze phase (Adadelta), a
katazome dye-shade classifier whose temperature is typed 0.002 (softmax collapse, AdamW), an
oyster-dredging catch classifier whose hidden bias is initialised at -5 (dead ReLUs, Adamax), a
mycelium-colony GCN node classifier whose consistency-loss weight is read 300 for one step
(gradient spike, SGD Nesterov) and a tide-mill wheel-power regressor whose L2 penalty is
subtracted (a slow climb, ASGD).

Controls: a termite-mound chamber 8-layer GCN whose node features over-smooth (Adam, its loss
plateaus above the shallow GCN's floor); a harpsichord quill-pluck classifier under fp16
autocast with a GradScaler (AdamW, OneCycleLR, label smoothing, clipping); a peat-bog water-table
Huber regressor (RMSprop, two param groups, ReduceLROnPlateau, gradient accumulation 2).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
    forward=None,
):
    """``before(step)`` first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss,
    out)`` is the loss actually backpropagated, ``after(step, loss)`` runs after the optimizer
    step. Stops after a non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a
    reference run outside the monitor."""
    forward = forward or (lambda m, x: m(x))
    if attach:
        ctx.attach(model, opt)
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
            out = forward(model, x)
            if classifier and attach:
                ctx.targets(y if y.dim() == 1 else y.reshape(-1))
            loss = loss_fn(out, y)
            total = backprop(step, loss, out) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
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


# -- graphs: a hand-written GCN over generated community graphs ------------------------------------


def _community_graph(seed, nodes=160, communities=4, p_in=0.12, p_out=0.02, d_feat=12, noise=1.6):
    """A stochastic block model graph, its symmetrically normalised adjacency with self-loops
    D^-1/2 (A + I) D^-1/2, noisy node features around community prototypes, labels, train mask."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(nodes) % communities
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    upper = torch.triu((torch.rand(nodes, nodes, generator=g) < prob).float(), 1)
    adj = upper + upper.T + torch.eye(nodes)
    dinv = adj.sum(1).rsqrt()
    a_hat = dinv[:, None] * adj * dinv[None, :]
    protos = torch.randn(communities, d_feat, generator=g)
    x = protos[y] + noise * torch.randn(nodes, d_feat, generator=g)
    mask = torch.rand(nodes, generator=g) < 0.6
    return a_hat, x, y, mask


class _GraphConv(nn.Module):
    """H' = Â H W (the propagation is by the fixed normalised adjacency)."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, a_hat, h):
        return a_hat @ self.lin(h)


class _GCN(nn.Module):
    def __init__(self, d_in, hidden, classes, depth=2):
        super().__init__()
        sizes = [d_in] + [hidden] * (depth - 1) + [classes]
        self.convs = nn.ModuleList(
            _GraphConv(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, a_hat, x):
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(a_hat, h)
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return h


def _graph_batches(gen, a_hat, x, y, mask, jitter=0.1):
    """Full-batch node classification; a little feature jitter each step (feature dropout-like)."""
    while True:
        yield x + jitter * torch.randn(x.shape, generator=gen), y


def _masked_ce(mask):
    return lambda out, y: F.cross_entropy(out[mask], y[mask])


# -- 1. exploding gradients: a deep leaky-ReLU MLP initialised with gain 1.5 ----------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain * math.sqrt(2.0))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.leaky_relu(lin(x), 0.1)
        return self.head(x).squeeze(-1)


@scenario(
    family="avalanche_slab_release_deep_leaky_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Avalanche slab-release depth regressor (10-layer leaky-ReLU MLP on snowpack layer "
    "readings, MSE, SGD momentum 0.9). The init helper is called with gain 1.5 where 1.0 was "
    "meant (He scaling times 1.5): activations and gradients grow ~1.5x per layer, the first "
    "layer's gradient dwarfs the head's and the loss blows up.",
)
def h491_avalanche_init_gain(ctx) -> None:
    gen = seeded(4911)
    model = _Deep(12, 32, 10, gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    x, y = next(_readings(gen, 64, 12, 4911))
    outs, h = [], x
    for lin in model.layers:
        z = lin(h)
        z.retain_grad()
        outs.append(z)
        h = F.leaky_relu(z, 0.1)
    F.mse_loss(model.head(h).squeeze(-1), y).backward()
    first = float(outs[0].grad.norm())
    last = float(outs[-1].grad.norm())
    opt.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 12, 4911), 120, F.mse_loss)
    ctx.check(
        "the gradient at layers.0's output over 10x the last layer's at init", first > 10 * last
    )
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * _mean(losses[:5]),
    )


# -- 2. data outlier: one shard in grams instead of kilograms -------------------------------------


@scenario(
    family="alpaca_shearing_fleece_weight_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="Alpaca-shearing fleece-weight regressor (ReLU MLP on body measurements, MSE, plain SGD "
    "with clipping at 1.0). One shard at step 100 comes from a farm that logs fleece weights in "
    "grams, not kilograms: the targets are 1000x, the loss and gradient jump for that batch, "
    "clipping holds the update and the run recovers.",
    onset=100,
)
def h491_alpaca_gram_shard(ctx) -> None:
    gen = seeded(4912)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 8, 4912), 200, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check(
        "loss at 100 over 1000x the median before", losses[100] > 1000 * _median(losses[80:100])
    )
    ctx.check(
        "gradient at 100 over 100x the median before", norms[100] > 100 * _median(norms[80:100])
    )
    ctx.check(
        "recovers (last 20 under 3x the pre-onset median)",
        _mean(losses[-20:]) < 3 * _median(losses[80:100]),
    )
    ctx.check("trained before onset", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))


# -- 3. adam second moment poisoned: an auxiliary-loss weight read 1e5 for one step ----------------


@scenario(
    family="coppersmith_kettle_planish_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="Coppersmith kettle-planishing wall-thickness regressor (tanh MLP, MSE, Adam with "
    "beta2 0.9999). A config reload at step 60 reads the smoothness-loss weight as 1e5 for one "
    "step: one giant gradient fills Adam's second moment, and for the rest of the run the "
    "updates are a tiny fraction of what they were, so the loss stalls where it was.",
    onset=60,
)
def h491_coppersmith_aux_weight(ctx) -> None:
    gen = seeded(4913)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))

    def backprop(step, loss, out):
        return loss * 1e5 if step == 60 else loss

    moves = []
    prev = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        cur = [p.detach().clone() for p in model.parameters()]
        moves.append(
            math.sqrt(sum(float((c - q).norm() ** 2) for c, q in zip(cur, prev, strict=True)))
        )
        prev[:] = cur

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4913),
        200,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check("gradient at 60 over 1e4x the median before", norms[60] > 1e4 * _median(norms[40:60]))
    ctx.check(
        "updates after 110 under 0.2x those before 60",
        _median(moves[110:]) < 0.2 * _median(moves[40:60]),
    )
    ctx.check(
        "the loss stalls (last 20 over 0.8x steps 62-80)",
        _mean(losses[-20:]) > 0.8 * _mean(losses[62:80]),
    )
    ctx.check("trained before onset", _mean(losses[50:60]) < 0.8 * _mean(losses[:10]))


# -- 4. loss spike: weights restored once from an early checkpoint ---------------------------------


@scenario(
    family="ice_climbing_screw_hold_relu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-climbing screw-hold strength regressor (ReLU MLP on ice temperature, screw length "
    "and angle, MSE, NAdam). A watchdog restart at step 150 reloads the model from the step-2 "
    "checkpoint (the newest was not found) while the optimizer state carries on: the loss jumps "
    "back to its early level once, with no gradient burst or mechanism, and the run recovers.",
    onset=150,
)
def h491_ice_screw_stale_checkpoint(ctx) -> None:
    gen = seeded(4914)
    model = _Net(9, 48, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}

    def after(step, loss):
        if step == 2:
            saved.update({k: v.clone() for k, v in model.state_dict().items()})
        if step == 149:
            model.load_state_dict(saved)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 9, 4914), 260, F.mse_loss, after=after
    )
    base = _median(losses[130:150])
    ctx.check("loss at 150 over 3x the median before", losses[150] > 3 * base)
    ctx.check(
        "recovers (last 20 under 1.5x the pre-onset median)", _mean(losses[-20:]) < 1.5 * base
    )
    ctx.check(
        "no gradient burst (under 10x the median before)", norms[150] < 10 * _median(norms[130:150])
    )


# -- 5. nonfinite: log of a reading with no clamp ---------------------------------------------------


class _LogFeatures(nn.Module):
    def forward(self, x):
        return torch.log(x)


class _GeyserNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.logfeat = _LogFeatures()
        self.body = _Net(d_in, hidden, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.logfeat(x))


@scenario(
    family="geyser_eruption_interval_log_feature_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=90,
    heldout=True,
    note="Geyser eruption-interval regressor (log of pool temperature excess, discharge and "
    "tremor readings into a SiLU MLP, MSE, Adagrad). The log feature has no clamp; at step 90 a "
    "dead tremor sensor reports 0 for some rows, log(0) = -inf in logfeat and the loss is NaN.",
    onset=90,
)
def h491_geyser_log_zero(ctx) -> None:
    gen = seeded(4915)
    model = _GeyserNet(6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def raw():
        for x, y in _readings(gen, 64, 6, 4915):
            yield torch.exp(0.5 * x), y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:8, 3] = 0.0
        return x, y

    losses, _ = _train(ctx, model, opt, raw(), 150, F.mse_loss, alter=alter)
    ctx.check("finite before 90", _finite(losses[:90]))
    ctx.check("loss non-finite at 90", len(losses) == 91 and not math.isfinite(losses[90]))
    ctx.check("trained before the fault", _mean(losses[80:90]) < 0.8 * _mean(losses[:10]))


# -- 6. update ratio out of range: an encoder group left at lr 0 -----------------------------------


@scenario(
    family="bell_foundry_casting_tone_two_group_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Bell-foundry casting-tone regressor (ReLU MLP on bell profile and alloy readings, Huber "
    "loss, Adadelta with two param groups). The encoder group fc1 was frozen at lr 0 for a "
    "warm-start phase and the unfreeze callback edits a copy of the param groups: fc1 never "
    "moves while fc2 and the head train.",
)
def h491_bell_foundry_frozen_group(ctx) -> None:
    gen = seeded(4916)
    model = _Net(10, 48, 1)
    enc = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adadelta([{"params": enc, "lr": 0.0}, {"params": rest, "lr": 1.0}])
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4916), 200, F.huber_loss)
    m1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    m2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", m1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", m2 > 0.05)
    ctx.check("finite", _finite(losses))


# -- 7. softmax collapse: a temperature typed 0.002 ----------------------------------------------


class _Tempered(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.body = _Net(d_in, 48, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.body(x) / self.temperature


@scenario(
    family="katazome_dye_shade_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("body.head",),
    diverges=None,
    heldout=True,
    note="Katazome stencil-dye shade classifier (GELU MLP on mordant, soak and colour readings, "
    "cross-entropy, AdamW). The softmax temperature is typed 0.002 for 2.0: logits are 1000x, "
    "the softmax saturates, most rows' target probability rounds to exactly 1.0 and the rest "
    "carry huge losses.",
)
def h491_katazome_temperature(ctx) -> None:
    gen = seeded(4917)
    model = _Tempered(12, 6, 0.002)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batches = _grades(gen, 64, 12, 6, 4917)
    losses, _ = _train(ctx, model, opt, batches, 120, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("finite", _finite(losses))


# -- 8. loss of plasticity: a hidden bias initialised at -5 ---------------------------------------


@scenario(
    family="oyster_dredging_catch_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Oyster-dredging catch-grade classifier (ReLU MLP on tow speed, depth and salinity, "
    "cross-entropy, Adamax). The init copies a 'sparse activations' recipe and sets fc1's bias "
    "to -5: nearly every fc1 unit is never positive, gets no gradient and stays dead; the loss "
    "stays near chance.",
)
def h491_oyster_dead_bias(ctx) -> None:
    gen = seeded(4918)
    model = _Net(8, 48, 5)
    nn.init.constant_(model.fc1.bias, -5.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 8, 5, 4918)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check("loss near chance (over 0.8 ln 5)", _mean(losses[-10:]) > 0.8 * math.log(5))


# -- 9. gradient spike: a GCN whose consistency-loss weight is read 300 for one step ---------------


@scenario(
    family="mycelium_colony_gcn_node_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Mycelium-colony node classifier (hand-written 2-layer GCN, D^-1/2 (A+I) D^-1/2, over a "
    "generated hyphal network with 4 colonies, masked cross-entropy, SGD Nesterov, clipping at "
    "2). A loss-weight schedule reads its table with an off-by-one at step 110 and multiplies "
    "the loss by 300 for that step: one gradient burst, clipped, and the run carries on.",
    onset=110,
)
def h491_mycelium_gcn_weight_bug(ctx) -> None:
    gen = seeded(4919)
    a_hat, x, y, mask = _community_graph(4919)
    model = _GCN(x.shape[1], 32, 4, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def backprop(step, loss, out):
        return loss * 300.0 if step == 110 else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _graph_batches(gen, a_hat, x, y, mask),
        200,
        _masked_ce(mask),
        classifier=True,
        backprop=backprop,
        clip=2.0,
        forward=lambda m, feats: m(a_hat, feats),
    )
    ctx.check(
        "gradient at 110 over 50x the median before", norms[110] > 50 * _median(norms[90:110])
    )
    ctx.check("trained", _fell(losses))
    ctx.check(
        "loss at 110 ordinary (under 2x the median before)",
        losses[110] < 2 * _median(losses[90:110]),
    )


# -- 10. loss divergence: an L2 penalty subtracted ---------------------------------------------------


@scenario(
    family="tide_mill_wheel_power_penalty_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tide-mill wheel-power regressor (SiLU MLP on head of water, gate opening and wheel "
    "speed, MSE, ASGD). The L2 penalty is written loss - wd * ||w||^2: after fitting, the "
    "weights are pushed outward every step and the loss climbs slowly with no other mechanism.",
)
def h491_tide_mill_penalty_sign(ctx) -> None:
    gen = seeded(4920)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)

    def backprop(step, loss, out):
        return loss - 4e-1 * sum((p**2).sum() for p in model.parameters())

    w0 = _wnorm(model)
    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 8, 4920), 160, F.mse_loss, backprop=backprop
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    ctx.check("trained first (best under 0.7x the start)", best < 0.7 * _mean(losses[:10]))
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no NaN (a slow climb)", _finite(losses))
    ctx.check(
        "no single jump (no step over 4x the mean of the 10 before)",
        all(losses[i] < 4 * _mean(losses[i - 10 : i]) for i in range(10, len(losses))),
    )
    ctx.check("weights grew over 1.5x", _wnorm(model) > 1.5 * w0)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="termite_mound_chamber_deep_gcn",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Termite-mound chamber classifier: eight stacked hand-written graph convolutions "
    "(D^-1/2 (A+I) D^-1/2) over a generated tunnel network with 4 chamber kinds, masked "
    "cross-entropy, Adam. The node features over-smooth through eight propagations, so the loss "
    "plateaus well above the floor a shallow 2-layer GCN reaches on the same graph: an ordinary "
    "run, no fault.",
)
def h491_termite_deep_gcn(ctx) -> None:
    gen = seeded(4921)
    a_hat, x, y, mask = _community_graph(4921)
    fwd = lambda m, feats: m(a_hat, feats)  # noqa: E731
    shallow = _GCN(x.shape[1], 32, 4, depth=2)
    ref, _ = _train(
        ctx,
        shallow,
        torch.optim.Adam(shallow.parameters(), lr=1e-2),
        _graph_batches(torch.Generator().manual_seed(1), a_hat, x, y, mask),
        200,
        _masked_ce(mask),
        attach=False,
        forward=fwd,
    )
    model = _GCN(x.shape[1], 32, 4, depth=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _graph_batches(gen, a_hat, x, y, mask),
        200,
        _masked_ce(mask),
        classifier=True,
        forward=fwd,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _mean(losses[-10:]) < 0.9 * _mean(losses[:10]))
    ctx.check("plateaus over 2x the shallow floor", _mean(losses[-20:]) > 2 * _mean(ref[-20:]))


@scenario(
    family="harpsichord_quill_pluck_fp16_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Harpsichord quill-pluck voicing classifier (GELU MLP on pluck transients) under fp16 "
    "autocast with a torch.amp.GradScaler, AdamW, OneCycleLR, label smoothing 0.1, clipping at "
    "1.0: an ordinary mixed-precision run.",
)
def h491_harpsichord_fp16(ctx) -> None:
    gen = seeded(4922)
    model = _Net(16, 64, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 16, 5, 4922, spread=1.5)
    losses = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.step(loss)
        losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _fell(losses))


@scenario(
    family="peat_bog_water_table_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Peat-bog water-table regressor (SiLU MLP on rainfall, evaporation and sphagnum cover, "
    "Huber loss, RMSprop with two param groups, ReduceLROnPlateau, gradient accumulation 2, "
    "noisy gauges): an ordinary run.",
)
def h491_peat_bog_control(ctx) -> None:
    gen = seeded(4923)
    model = _Net(10, 48, 1, act=nn.SiLU)
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.RMSprop([{"params": rest, "lr": 1e-3}, {"params": head, "lr": 3e-4}])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4923, noise=0.2),
        200,
        F.huber_loss,
        after=after,
        accumulate=2,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _fell(losses))
