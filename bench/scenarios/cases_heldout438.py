"""Held-out set 438 (``h438_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an incense-maker's resin-molecule volatility message-passing network fed one supplier's
shard with vapour pressures in pascals for kilopascals (one corrupted batch), a kabaddi
ankle-hold outcome classifier whose softmax temperature is typed 0.002 for 2.0 (softmax
saturates), a lirone bow-pressure two-group regressor whose trunk group's lr is typed 1e-9 for
1e-2 (a frozen trunk), a pewter-mould shrinkage regressor whose hand-written decoupled weight
decay has its sign flipped (a slow climb), a fumarole gas-ratio net whose log ratio has no clamp
(log of x/0 when an H2S cell reads 0), a chinlone cane-ball regressor whose end-of-shard step sums
the per-row losses (one gradient burst), a skijoring tow-speed regressor resumed from a stale
early checkpoint (a one-off loss spike), a hammered-zither key-action deep ReLU MLP whose He init
gain is typed 3 for sqrt(2) (gradients grow through depth), a pelota glove-strike classifier
trained with nll_loss on raw logits (the head's logits grow without bound) and a cloisonne kiln
firing regressor whose debug step backpropagates the loss still multiplied by 2**16 (Adam's second
moment is filled and the updates stall).

Controls: a curragh-rowing stroke-length Huber regressor (NAdam under StepLR, clipping), a
bodhran-tipper stroke fp16 Conv1d classifier (GradScaler, AdamW under OneCycleLR, label
smoothing, clipping) and a moraine-lake outburst Gaussian-NLL net (SGD Nesterov, warm-up then
cosine, accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


# -- generated molecules and a message-passing network --------------------------------------------

ATOM_TYPES = 4  # C, O, N, S
BOND_TYPES = 3  # single, double, aromatic


def _molecule_pool(seed, count=1024):
    """Random small molecules: a spanning tree plus a few ring bonds, typed atoms and bonds, and a
    volatility-like property (atom and bond contributions, a size term, a ring term)."""
    g = torch.Generator().manual_seed(seed)
    atom_w = torch.tensor([0.30, -0.55, -0.40, -0.20])
    bond_w = torch.tensor([0.05, -0.25, 0.15])
    pool = []
    for _ in range(count):
        n = int(torch.randint(5, 13, (1,), generator=g))
        atoms = torch.multinomial(torch.tensor([0.6, 0.2, 0.12, 0.08]), n, True, generator=g)
        src = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        pairs = [(s, i) for i, s in zip(range(1, n), src, strict=True)]
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            a, b = torch.randint(0, n, (2,), generator=g).tolist()
            if a != b and (a, b) not in pairs and (b, a) not in pairs:
                pairs.append((a, b))
        bonds = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), len(pairs), True, generator=g)
        rings = len(pairs) - (n - 1)
        y = (
            atom_w[atoms].sum()
            + bond_w[bonds].sum()
            - 0.08 * n
            + 0.3 * rings
            + 0.2 * torch.tanh(atom_w[atoms].sum())
        )
        e = torch.tensor(pairs, dtype=torch.long).T
        pool.append(
            (F.one_hot(atoms, ATOM_TYPES).float(), e, F.one_hot(bonds, BOND_TYPES).float(), y)
        )
    ys = torch.stack([p[3] for p in pool])
    mu, sd = ys.mean(), ys.std()
    return [(x, e, b, (y - mu) / sd) for x, e, b, y in pool]


def _molecule_batches(gen, pool, batch=32):
    """Collate random molecules into one disjoint graph (both bond directions) and a graph index."""
    while True:
        pick = torch.randint(0, len(pool), (batch,), generator=gen).tolist()
        xs, srcs, dsts, feats, graph, ys = [], [], [], [], [], []
        offset = 0
        for gi, k in enumerate(pick):
            x, e, b, y = pool[k]
            xs.append(x)
            srcs += [e[0] + offset, e[1] + offset]
            dsts += [e[1] + offset, e[0] + offset]
            feats += [b, b]
            graph.append(torch.full((len(x),), gi, dtype=torch.long))
            ys.append(y)
            offset += len(x)
        yield (
            (torch.cat(xs), torch.cat(srcs), torch.cat(dsts), torch.cat(feats), torch.cat(graph)),
            torch.stack(ys),
        )


class _MessageLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.msg = nn.Linear(2 * dim + BOND_TYPES, dim)
        self.upd = nn.Linear(2 * dim, dim)

    def forward(self, h, src, dst, bond):
        m = F.silu(self.msg(torch.cat([h[src], h[dst], bond], 1)))
        agg = torch.zeros_like(h).index_add_(0, dst, m)
        return h + F.silu(self.upd(torch.cat([h, agg], 1)))


class _MoleculeNet(nn.Module):
    """Atom embedding, three message-passing layers with bond features, sum readout, a head."""

    def __init__(self, dim=32, layers=3):
        super().__init__()
        self.embed = nn.Linear(ATOM_TYPES, dim)
        self.mp = nn.ModuleList(_MessageLayer(dim) for _ in range(layers))
        self.readout = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, graph):
        x, src, dst, bond, index = graph
        h = self.embed(x)
        for layer in self.mp:
            h = layer(h, src, dst, bond)
        pooled = torch.zeros(int(index.max()) + 1, h.shape[1]).index_add_(0, index, self.readout(h))
        return self.head(F.silu(pooled) / 4.0).squeeze(-1)


INCENSE_SHARD = 100


@scenario(
    family="incense_maker_resin_volatility_mpnn",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=INCENSE_SHARD,
    note="Incense-maker's resin-molecule volatility regressor: a hand-written message-passing "
    "network over generated molecules (typed atoms, bond-type edge features, three message "
    "layers, sum readout, MSE, Adam, clipping at 1). One supplier's shard, served at step 100, "
    "logs the vapour pressure in pascals for kilopascals (targets 1000x): one corrupted batch, "
    "loss and gradient burst, the run recovers.",
)
def h438_incense_pascal_shard(ctx) -> None:
    gen = seeded(4381)
    pool = _molecule_pool(4381)
    model = _MoleculeNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == INCENSE_SHARD else (x, y)

    losses = _loop(
        ctx, model, opt, _molecule_batches(gen, pool), 200, F.mse_loss, alter=alter, clip=1.0
    )
    before, gb = losses[60:INCENSE_SHARD], ctx.grad_norms[60:INCENSE_SHARD]
    ctx.check("the model learnt before the shard", _mean(losses[80:100]) < 0.6 * _mean(losses[:10]))
    ctx.check(
        "loss at the shard over 100x the median before",
        losses[INCENSE_SHARD] > 100 * _median(before),
    )
    ctx.check(
        "gradient at the shard over 20x the median before",
        ctx.grad_norms[INCENSE_SHARD] > 20 * _median(gb),
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 2 * _mean(before[-20:]))


KABADDI_T = 0.002  # typed for 2.0


@scenario(
    family="kabaddi_ankle_hold_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kabaddi ankle-hold outcome classifier (ReLU MLP over tracked raid features, "
    "cross-entropy on logits divided by a temperature, AdamW). The temperature is typed 0.002 for "
    "2.0 in the config: the logits are 1000x too sharp and the softmax rounds the target "
    "probability to exactly 1.0 on most rows.",
)
def h438_kabaddi_temperature_typo(ctx) -> None:
    gen = seeded(4382)
    model = _Net(16, 48, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    data = _grades(gen, 64, 16, 6, 4382, spread=1.2)
    fracs, fracs_ref, losses = [], [], []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        raw = model(x)
        logits = raw / KABADDI_T
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        fracs.append(collapsed_fraction(logits.detach(), y))
        fracs_ref.append(collapsed_fraction(raw.detach() / 2.0, y))
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 30 steps",
        _mean(fracs[-30:]) > 0.5,
    )
    ctx.check("under 5% at temperature 2.0 on the same logits", _mean(fracs_ref[-30:]) < 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="lirone_bow_pressure_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Lirone bow-pressure regressor (tanh trunk and a linear head in two param groups, MSE, "
    "Adagrad). The trunk group's lr is typed 1e-9 for 1e-2: the trunk receives gradients but "
    "its weights do not move, only the head learns.",
)
def h438_lirone_trunk_lr_typo(ctx) -> None:
    gen = seeded(4383)
    model = nn.Module()
    model.trunk = nn.Sequential(nn.Linear(10, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
    model.head = nn.Linear(48, 1)
    model.forward = lambda x: model.head(model.trunk(x)).squeeze(-1)
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    t0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    grads = []

    def after(step):
        grads.append(float(model.trunk[0].weight.grad.norm()))

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4383), 200, F.mse_loss, after=after)
    ctx.check("trunk.0 moves under 1e-5 of its norm", _rel_change(t0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 receives gradients", _median(grads) > 1e-4)
    ctx.check("the head moves over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("finite", _finite(losses))


PEWTER_WD = 0.5


@scenario(
    family="pewter_mould_shrinkage_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Pewter casting mould-shrinkage regressor (SiLU MLP, MSE, Adamax with a hand-written "
    "decoupled weight decay after each step). The decay is written p.mul_(1 + lr * wd) for "
    "p.mul_(1 - lr * wd): the weights inflate a little every step and the loss climbs slowly.",
)
def h438_pewter_decay_sign(ctx) -> None:
    gen = seeded(4384)
    model = _Net(10, 48, 1, act=nn.SiLU)
    lr = 1e-2
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * PEWTER_WD)

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4384), 260, F.mse_loss, after=after)
    w1 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5
    low = min(losses)
    ctx.check("the loss over the last 20 steps over 3x its lowest", _mean(losses[-20:]) > 3 * low)
    ctx.check(
        "climbing through the second half", _mean(losses[-20:]) > 1.5 * _mean(losses[130:150])
    )
    ctx.check("the weight norm over 2x", w1 > 2 * w0)
    ctx.check("finite", _finite(losses))


class _LogRatio(nn.Module):
    """log(SO2 / H2S) of the raw sensor cells, no clamp."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :4] / x[:, 4:8]), x[:, 8:]], 1)


class _FumaroleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logratio = _LogRatio()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(self.logratio(x)))))
        return self.head(h).squeeze(-1)


FUMAROLE_ZERO = 90


@scenario(
    family="fumarole_so2_h2s_log_ratio_gelu_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logratio",),
    diverges=FUMAROLE_ZERO,
    heldout=True,
    onset=FUMAROLE_ZERO,
    note="Fumarole eruption-precursor regressor (GELU net over log(SO2 / H2S) of four raw sensor "
    "pairs, MSE, Adam). The log ratio has no clamp: at step 90 a fouled H2S cell reads 0.0, "
    "log(x / 0) is inf and the loss is non-finite at step 90.",
)
def h438_fumarole_unclamped_log_ratio(ctx) -> None:
    gen = seeded(4385)
    model = _FumaroleNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(4385)
    w = torch.randn(4, generator=g)

    def gas():
        while True:
            so2 = torch.exp(0.5 * torch.randn(64, 4, generator=gen))
            h2s = torch.exp(0.5 * torch.randn(64, 4, generator=gen))
            other = torch.randn(64, 2, generator=gen)
            y = torch.tanh(torch.log(so2 / h2s) @ w / 2) + 0.3 * other[:, 0]
            yield torch.cat([so2, h2s, other], 1), y

    zeroed = []

    def alter(step, x, y):
        if step == FUMAROLE_ZERO:
            x = x.clone()
            x[3, 5] = 0.0
            zeroed.append(bool((x[:, 4:8] == 0).any()))
        return x, y

    losses = _loop(ctx, model, opt, gas(), 150, F.mse_loss, alter=alter)
    ctx.check("a zero H2S reading at step 90", zeroed == [True])
    ctx.check("the loss is finite before step 90", _finite(losses[:FUMAROLE_ZERO]))
    ctx.check("the first non-finite loss is at step 90", _first_bad(losses) == FUMAROLE_ZERO)
    ctx.check("the model learnt before", _mean(losses[70:90]) < 0.8 * _mean(losses[:10]))


CHINLONE_SUM = 120


@scenario(
    family="chinlone_cane_ball_juggle_relu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHINLONE_SUM,
    note="Chinlone cane-ball juggle-duration regressor (ReLU MLP, MSE, SGD momentum 0.9, clipping "
    "at 1). The end-of-shard step 120 backpropagates reduction='sum' over the 64 rows while the "
    "logged loss is the mean: one gradient burst on an ordinary batch, clipped, the run recovers.",
)
def h438_chinlone_sum_reduction(ctx) -> None:
    gen = seeded(4386)
    model = _Net(12, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def backprop(step, loss):
        return loss * 64 if step == CHINLONE_SUM else loss

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 4386), 220, F.mse_loss, backprop=backprop, clip=1.0
    )
    gb = ctx.grad_norms[80:CHINLONE_SUM]
    ctx.check(
        "gradient at step 120 over 30x the median before",
        ctx.grad_norms[CHINLONE_SUM] > 30 * _median(gb),
    )
    ctx.check(
        "the logged loss at 120 is ordinary",
        losses[CHINLONE_SUM] < 3 * _median(losses[80:CHINLONE_SUM]),
    )
    ctx.check(
        "the run recovers", _finite(losses) and _mean(losses[-20:]) < 1.5 * _mean(losses[100:120])
    )


SKIJOR_RESUME = 120


@scenario(
    family="skijoring_horse_tow_speed_gelu_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SKIJOR_RESUME,
    note="Skijoring horse-tow speed regressor (GELU MLP, MSE, RAdam). A resume at step 120 loads "
    "the weights of a stale step-5 checkpoint (the 'latest' symlink was not updated) while "
    "keeping the optimizer state: the loss jumps back up for a step or two and the run recovers.",
)
def h438_skijoring_stale_checkpoint(ctx) -> None:
    gen = seeded(4387)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    saved = {}

    def after(step):
        if step == 5:
            saved.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        if step == SKIJOR_RESUME - 1:
            model.load_state_dict(saved)

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4387), 220, F.mse_loss, after=after)
    pre = _median(losses[100:SKIJOR_RESUME])
    ctx.check("the loss at the resume over 3x the median before", losses[SKIJOR_RESUME] > 3 * pre)
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 1.5 * pre)


class _DeepNet(nn.Module):
    """Ten ReLU layers ``layers.0`` .. ``layers.9`` and a head; keeps each layer's output."""

    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-30))


@scenario(
    family="hammered_zither_key_action_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Hammered-zither key-action regressor (10-layer ReLU MLP, MSE, plain SGD, clipping at 1). "
    "The He init gain is typed 3 for sqrt(2): every layer multiplies the backward signal by about "
    "2, and dL/d(layers.0 output) is hundreds of times dL/d(layers.9 output).",
)
def h438_zither_init_gain(ctx) -> None:
    gen = seeded(4388)
    model = _DeepNet(12, 32, 10, 3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []

    def after(step):
        ratios.append(_depth_ratio(model))

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 4388), 120, F.mse_loss, after=after, clip=1.0
    )
    seeded(4388)
    ref = _DeepNet(12, 32, 10, math.sqrt(2.0))
    x, y = next(_readings(torch.Generator().manual_seed(1), 64, 12, 4388))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0 out) over 50x dL/d(layers.9 out) at the start", ratios[0] > 50)
    ctx.check("and over 20x in median", _median(ratios) > 20)
    ctx.check("under 5x at gain sqrt(2)", _depth_ratio(ref) < 5)
    ctx.check("the raw gradient over 10x the clip", _median(ctx.grad_norms) > 10)
    ctx.check("finite", _finite(losses))


@scenario(
    family="pelota_glove_strike_raw_nll_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pelota (xistera) glove-strike zone classifier (ReLU MLP, plain SGD). It is trained with "
    "F.nll_loss on the raw logits, log_softmax forgotten: the 'loss' is minus the target logit, "
    "and the head pushes the logits up without bound.",
)
def h438_pelota_raw_nll(ctx) -> None:
    gen = seeded(4389)
    model = _Net(14, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    peaks = []
    data = _grades(gen, 64, 14, 5, 4389)

    def tapped():
        while True:
            x, y = next(data)
            with torch.no_grad():
                peaks.append(float(model(x).abs().max()))
            yield x, y

    losses = _loop(ctx, model, opt, tapped(), 200, F.nll_loss, classifier=True)
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("and still growing", _mean(peaks[-10:]) > 1.2 * _mean(peaks[-60:-50]))
    ctx.check("the 'loss' below -10", losses[-1] < -10)


CLOISONNE_DEBUG = 40


@scenario(
    family="cloisonne_kiln_firing_time_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CLOISONNE_DEBUG,
    note="Cloisonne kiln firing-time regressor (GELU MLP, MSE, Adam). A debug step 40, left in "
    "after a mixed-precision experiment, backpropagates the loss still multiplied by the loss "
    "scale 2**16: one giant gradient fills Adam's second moment and the updates stall for the "
    "rest of the run.",
)
def h438_cloisonne_unscaled_debug_step(ctx) -> None:
    def run(attach):
        gen = seeded(4390)
        model = _Net(10, 48, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, snap = [], {}

        def before(step):
            snap["w"] = model.fc1.weight.detach().clone()

        def after(step):
            moves.append(float((model.fc1.weight.detach() - snap["w"]).norm()))

        def backprop(step, loss):
            return loss * (2.0**16 if attach and step == CLOISONNE_DEBUG else 1.0)

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, 4390),
            200,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        v = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        return losses, moves, v

    ref_losses, _ref_moves, ref_v = run(False)
    losses, moves, v = run(True)
    ctx.check("Adam's second moment over 1e6x the reference's", v > 1e6 * ref_v)
    ctx.check(
        "the updates after under 1/10 of before",
        _median(moves[60:200]) < 0.1 * _median(moves[10:CLOISONNE_DEBUG]),
    )
    ctx.check(
        "the loss stalls over 1.5x the reference's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="curragh_rowing_stroke_length_huber_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Curragh rowing stroke-length regressor (SiLU MLP, Huber loss, NAdam under StepLR "
    "halving every 60 steps, clipping at 1, noisy oar-sensor readings): an ordinary run.",
)
def h438_curragh_huber_nadam_control(ctx) -> None:
    gen = seeded(4391)
    model = _Net(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 4391, noise=0.15),
        240,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


class _StrokeConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _strokes(gen, batch=32, length=64, classes=5):
    """Bodhran tipper strokes: a decaying tone whose pitch and damping depend on the stroke."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.07 * y.float()
        decay = 0.02 + 0.015 * (y % 3).float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-decay[:, None] * t) * torch.sin(freq[:, None] * t + phase)
        yield x + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="bodhran_tipper_stroke_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bodhran tipper-stroke classifier (ReLU Conv1d, fp16 autocast with a GradScaler, AdamW "
    "under OneCycleLR, label smoothing 0.1, clipping at 1): an ordinary mixed-precision run.",
)
def h438_bodhran_fp16_control(ctx) -> None:
    gen = seeded(4392)
    model = _StrokeConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        _strokes(gen),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()


@scenario(
    family="moraine_lake_outburst_gaussian_nll_tanh_net",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Moraine-dammed lake outburst peak-flow net (tanh MLP with mean and log-variance "
    "outputs, Gaussian NLL, SGD Nesterov, linear warm-up then cosine, accumulation over 2, "
    "clipping at 1, heteroscedastic noise): an ordinary run.",
)
def h438_moraine_gaussian_nll_control(ctx) -> None:
    gen = seeded(4393)
    model = _Net(10, 48, 2, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    steps, warm = 200, 20

    def shape(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    base = _readings(gen, 32, 10, 4393, noise=0.0)

    def noisy():
        while True:
            x, y = next(base)
            yield x, y + (0.05 + 0.3 * x[:, 0].abs()) * torch.randn(len(y), generator=gen)

    losses = _loop(
        ctx, model, opt, noisy(), steps, _gaussian_nll, sched=sched, accumulate=2, clip=1.0
    )
    ctx.check("the loss fell", _mean(losses[-10:]) < _mean(losses[:10]) - 0.3)
    ctx.check("finite", _finite(losses))
