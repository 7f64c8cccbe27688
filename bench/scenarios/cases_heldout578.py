"""Held-out set 578 (``h578_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: petanque boule-spread Set Transformer whose pooling-attention q/k group lr is typed 3e-1
for 3e-4 (attention_logit_growth, AdamW, param groups); sepak-takraw rally-length classifier
with hand-written label smoothing typed -0.1 for 0.1 (output_logit_divergence, Adamax);
kalimba tine-pitch regressor whose StepLR gamma is typed 10 for 0.1 (sharpness_above_limit,
plain SGD); canoe-polo throw 12-deep ReLU MLP initialised with the uniform bound sqrt(6/fan_in)
used as a normal std (exploding_gradients, SGD momentum); bandoneon bellows-air regressor whose
fc2 group lr multiplier is typed 1e-6 (update_ratio_out_of_range, RMSprop, param groups);
fulgurite branch-count classifier fed one shard with an unmasked -9999 missing-value sentinel
(data_outlier, NAdam, clipping); taiko drum-strike BCE classifier whose resumed accumulation step
reads a loss weight of 100 (gradient_spike, SGD Nesterov, accumulation, clipping); sandbar
migration Gaussian NLL net whose std is sqrt of an unclamped variance head (nonfinite, RAdam);
kendo strike-speed regressor whose speed-gun offset is applied cumulatively (loss_divergence,
Adagrad); mooring-line snap-load regressor whose first step after a loader restart uses a stale
loss scale of 1e4 (adam_second_moment_poisoned, Adam).
Controls: coopering barrel-hoop classifier that rolls back at step 150 to its step-130
checkpoint after a preemption (alarming-looking, AdamW, warm-up + cosine, clipping); cajon
slap-tone 1-D conv classifier (SGD momentum, OneCycleLR, label smoothing, accumulation);
dry-stone wall batter Huber regressor (Adadelta, ReduceLROnPlateau, noisy targets, clipping).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


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
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. attention logit growth: Set Transformer pooling q/k group lr typed 3e-1 ------------------


class _MAB(nn.Module):
    """Multi-head attention block of a Set Transformer (Lee et al. 2019), logits kept."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.last_logits = None

    def forward(self, xq, xk):
        b, n, d = xq.shape
        m = xk.shape[1]
        h = self.heads
        q = self.q(xq).reshape(b, n, h, -1).transpose(1, 2)
        k = self.k(xk).reshape(b, m, h, -1).transpose(1, 2)
        v = self.v(xk).reshape(b, m, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_logits = logits.detach()
        a = torch.softmax(logits, dim=-1) @ v
        x = self.ln1(xq + a.transpose(1, 2).reshape(b, n, d))
        return self.ln2(x + self.o(F.relu(x)))


class _SetTransformer(nn.Module):
    def __init__(self, d_in=3, dim=32, heads=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.sab = _MAB(dim, heads)
        self.seed = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pma = _MAB(dim, heads)
        self.head = nn.Linear(dim, 1)

    def forward(self, pts):
        x = self.embed(pts)
        x = self.sab(x, x)
        pooled = self.pma(self.seed.expand(x.shape[0], -1, -1), x)
        return self.head(pooled[:, 0]).squeeze(-1)


def _boules(gen, batch, n=12):
    """Boule positions around the jack (at the origin) and team flags; target: how much nearer
    team A's best boule lies than team B's."""
    while True:
        pos = 1.5 * torch.randn(batch, n, 2, generator=gen)
        team = (torch.rand(batch, n, generator=gen) < 0.5).float()
        team[:, 0], team[:, 1] = 1.0, 0.0
        dist = pos.norm(dim=-1)
        a = torch.where(team > 0, dist, torch.full_like(dist, 1e3)).min(1).values
        bb = torch.where(team < 1, dist, torch.full_like(dist, 1e3)).min(1).values
        yield torch.cat([pos, 2 * team[..., None] - 1], -1), bb - a


@scenario(
    family="petanque_boule_spread_set_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("pma",),
    diverges=None,
    heldout=True,
    note="Petanque boule-spread Set Transformer (embed, one self-attention block, pooling by "
    "multi-head attention with a learnt seed, linear head; MSE on how much nearer team A's best "
    "boule lies to the jack than team B's; AdamW with param groups). The pooling block's "
    "query/key projections get their own no-decay group whose lr is typed 3e-1 for 3e-4: "
    "their weights run away and the pooling attention logits q.k/sqrt(d) grow over 20x, the "
    "pooling attention saturating onto single boules.",
)
def h578_petanque_pma_qk_lr_typo(ctx):
    gen = seeded(5781)
    model = _SetTransformer()
    qk = [model.pma.q.weight, model.pma.q.bias, model.pma.k.weight, model.pma.k.bias]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 0.01},
            {"params": qk, "lr": 3e-1, "weight_decay": 0.0},
        ]
    )
    peaks, sab_peaks, ents = [], [], []

    def after(step):
        lg = model.pma.last_logits
        peaks.append(float(lg.abs().max()))
        sab_peaks.append(float(model.sab.last_logits.abs().max()))
        p = torch.softmax(lg, -1)
        ents.append(float(-(p * torch.log(p + 1e-12)).sum(-1).mean()))

    losses, _ = _train(ctx, model, opt, _boules(gen, 32), 150, F.mse_loss, after=after)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("pooling attention logits grow over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "pooling logits grow far more than self-attention's",
        peaks[-1] / peaks[0] > 5 * (sab_peaks[-1] / sab_peaks[0]),
    )
    ctx.check("pooling attention entropy falls below a third of its start", ents[-1] < ents[0] / 3)


# -- 2. output logit divergence: hand-written label smoothing typed -0.1 -------------------------


def _smoothed_ce(eps):
    def loss_fn(logits, y):
        k = logits.shape[-1]
        t = F.one_hot(y, k).float() * (1 - eps) + eps / k
        return -(t * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss_fn


@scenario(
    family="sepak_takraw_rally_length_logit_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sepak-takraw rally-length classifier (ReLU MLP on serve speed, roll-spike height, "
    "block reach, court position and fatigue readings; 6 rally-length buckets; Adamax). The "
    "hand-written label-smoothing loss takes eps = -0.1 (typed for 0.1; F.cross_entropy would "
    "have refused it): the targets give the wrong classes negative weight, the loss has no lower "
    "bound, and the head's logits grow without bound (over 20x) while the logged loss goes "
    "negative.",
)
def h578_sepak_takraw_negative_smoothing(ctx):
    gen = seeded(5782)
    model = _Net(10, hidden=48, out=6)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe[0]).abs().max()))

    batches = _classes(gen, 64, 10, 6, 57820)
    probe = next(batches)
    with torch.no_grad():
        m0 = float(model(probe[0]).abs().max())
    losses, _ = _train(
        ctx, model, opt, batches, 200, _smoothed_ce(-0.1), classifier=True, after=after
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head logits over 20x their start", mags[-1] > 20 * m0)
    ctx.check("head logits still growing in the last quarter", mags[-1] > 1.2 * mags[150])
    ctx.check("logged loss goes negative", _mean(losses[-10:]) < 0)


# -- 3. sharpness above limit: StepLR gamma typed 10 for 0.1 -------------------------------------

SHARP_ONSET = 60


@scenario(
    family="kalimba_tine_pitch_sgd_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHARP_ONSET,
    heldout=True,
    note="Kalimba tine-pitch regressor (tanh MLP on tine length, width, thickness, bridge "
    "position, steel hardness and tuning-slide offset, MSE, plain SGD with StepLR every 60 "
    "steps). The StepLR gamma is typed 10 for 0.1: at step 60 the lr rises tenfold, lr x "
    "(top Hessian eigenvalue) passes 2 and the loss blows up.",
)
def h578_kalimba_steplr_gamma_typo(ctx):
    gen = seeded(5783)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    batches = _readings(gen, 64, 6, 57830)
    probe = next(batches)
    products = {}

    def before(step):
        if step in (1, 30, 58, 59, 60, 61, 62):
            products[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss, before=before, sched=sched)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    first_cross = crossed[0] if crossed else None
    best = min(losses[:SHARP_ONSET])
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * best]
    ctx.check("trained before the step", _fell(losses[:SHARP_ONSET]))
    ctx.check(
        "lr x sharpness below 2 before step 60", max(products[s] for s in (1, 30, 58, 59)) < 2.0
    )
    ctx.check("lr x sharpness past 2 at step 60", first_cross == SHARP_ONSET)
    ctx.check(
        "loss blows up (over 20x its best) after the crossing",
        bool(blown) and blown[0] >= SHARP_ONSET,
    )


# -- 4. exploding gradients: uniform bound used as a normal std ---------------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="canoe_polo_throw_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Canoe-polo throw-distance regressor (8-deep ReLU MLP on paddle angle, hull speed, "
    "release height, arm reach, wind and spin; MSE, SGD momentum 0.9). The custom init uses "
    "the Kaiming-uniform bound sqrt(6/fan_in) as a normal std (3x the variance He init keeps): "
    "each layer scales the signal by about sqrt(3), the gradient grows back through depth, "
    "the gradient at layers.0's output is over 20x that at the last hidden layer's and the loss blows up.",
)
def h578_canoe_polo_init_std_bound(ctx):
    gen = seeded(5784)
    model = _Deep(6, 32, 8)
    for layer in model.layers:
        nn.init.normal_(layer.weight, std=math.sqrt(6.0 / layer.in_features))
        nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratio, outs = {}, {}
    model.layers[0].register_forward_hook(lambda m, i, o: outs.__setitem__("first", o))
    model.layers[-1].register_forward_hook(lambda m, i, o: outs.__setitem__("last", o))

    def backprop(step, loss):
        if step == 0:
            g0, g1 = torch.autograd.grad(loss, [outs["first"], outs["last"]], retain_graph=True)
            ratio["r"] = float(g0.norm()) / float(g1.norm())
        return loss

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57840), 120, F.mse_loss, backprop=backprop
    )
    first = losses[0]
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * max(first, 1.0)]
    ctx.check(
        "gradient at layers.0's output over 20x the last hidden layer's", ratio.get("r", 0.0) > 20
    )
    ctx.check("loss blows up (non-finite or over 100x)", bool(blown))


# -- 5. update ratio out of range: fc2 group lr multiplier typed 1e-6 ----------------------------


@scenario(
    family="bandoneon_bellows_air_rmsprop_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Bandoneon bellows air-flow regressor (SiLU MLP on bellows travel, button count, "
    "reed-chamber volume, valve leak and player pressure; MSE; RMSprop with per-layer param "
    "groups scaled by a multiplier table). fc2's multiplier is typed 1e-6 (the weight-decay "
    "value pasted into the lr column): fc2's updates are about a millionth of its weights and "
    "it never moves, while the other layers train and the loss falls.",
)
def h578_bandoneon_group_mult_typo(ctx):
    gen = seeded(5785)
    model = _Net(5, hidden=48, act=nn.SiLU)
    base = 2e-3
    mult = {"fc1": 1.0, "fc2": 1e-6, "head": 1.0}
    opt = torch.optim.RMSprop(
        [{"params": getattr(model, n).parameters(), "lr": base * m} for n, m in mult.items()]
    )
    w = {n: _flat(getattr(model, n)) for n in mult}
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 57850), 200, F.mse_loss)
    rel = {n: float((_flat(getattr(model, n)) - w[n]).norm() / w[n].norm()) for n in mult}
    ctx.check("loss fell", _fell(losses))
    ctx.check("fc2 relative change below 1e-4", rel["fc2"] < 1e-4)
    ctx.check("fc1 and head moved over 1e-2", rel["fc1"] > 1e-2 and rel["head"] > 1e-2)


# -- 6. data outlier: one shard with an unmasked -9999 sentinel ----------------------------------

OUTLIER_STEP = 110


@scenario(
    family="fulgurite_branch_count_nadam_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Fulgurite branch-count classifier (GELU MLP on strike current, sand grain size, "
    "moisture, quartz fraction, depth and crust thickness; 5 branch-count classes; NAdam, "
    "gradient clipping at 1.0). One shard (the batch at step 110) comes from a field logger "
    "that writes -9999 for missing moisture and depth, and the loader does not mask it: the "
    "loss jumps over 20x and the gradient over 10x on that batch alone; clipping keeps the "
    "update bounded and the run recovers.",
)
def h578_fulgurite_sentinel_shard(ctx):
    gen = seeded(5786)
    model = _Net(6, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 2] = -9999.0
            x[:, 4] = -9999.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 5, 57860),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    pre = losses[OUTLIER_STEP - 20 : OUTLIER_STEP]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 20x at the shard", losses[OUTLIER_STEP] > 20 * _median(pre))
    ctx.check(
        "gradient over 10x at the shard",
        norms[OUTLIER_STEP] > 10 * _median(norms[OUTLIER_STEP - 20 : OUTLIER_STEP]),
    )
    ctx.check("recovers within 2x of before", _mean(losses[-10:]) < 2 * _mean(pre))


# -- 7. gradient spike: resumed accumulation step reads loss weight 100 ---------------------------

SPIKE_STEP = 140


def _strikes(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        logit = 2.0 * torch.tanh(x @ w / 2) + 0.5 * x[:, 0] * x[:, 1]
        yield x, (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()


@scenario(
    family="taiko_drum_strike_accum_bce_classifier",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Taiko drum-strike clean/flam classifier (GELU MLP on bachi angle, strike speed, "
    "skin tension, rim distance and timing offsets; BCE with logits; SGD Nesterov 0.9, "
    "4-micro-batch gradient accumulation, clipping at 2.0). After a resume at step 140 the "
    "loss weight is read from the old config as 100 (a percentage) for that one step: the "
    "gradient is over 30x its median while the logged loss is ordinary.",
)
def h578_taiko_resume_loss_weight(ctx):
    gen = seeded(5787)
    model = _Net(8, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _strikes(gen, 16, 57870)
    losses, norms = [], []
    for step in range(220):
        weight = 100.0 if step == SPIKE_STEP else 1.0
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            ctx.targets(y.long())
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (weight * loss / 4).backward()
            total += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    before = norms[SPIKE_STEP - 20 : SPIKE_STEP]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 30x its median at step 140", norms[SPIKE_STEP] > 30 * _median(before))
    ctx.check(
        "logged loss ordinary at step 140",
        losses[SPIKE_STEP] < 1.5 * _median(losses[SPIKE_STEP - 20 : SPIKE_STEP]),
    )
    ctx.check("loss fell", _fell(losses, ratio=0.9))


# -- 8. nonfinite: std = sqrt of an unclamped variance head --------------------------------------

SANDBAR_NAN = 103


class _GaussNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.var_head.weight, std=0.01)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    std = torch.sqrt(var)  # no clamp: a negative variance gives NaN
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="sandbar_migration_lognormal_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=SANDBAR_NAN,
    heldout=True,
    note="Sandbar migration-distance Gaussian NLL net (SiLU MLP on tidal range, wave height, "
    "grain size, river discharge and storm count; mean and variance heads; RAdam). The "
    "variance head's output goes straight into sqrt with no softplus or clamp: the NLL "
    "drives the variance down towards the small noise level, the head's output crosses "
    "zero for some sample, sqrt of the negative gives NaN and the loss is NaN.",
)
def h578_sandbar_unclamped_variance(ctx):
    gen = seeded(5788)
    model = _GaussNet(5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mins = []

    def fwd_hook(m, i, o):
        mins.append(float(o.detach().min()))

    model.var_head.register_forward_hook(fwd_hook)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 57880, noise=0.02), 300, _gauss_nll)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss becomes NaN", first_bad is not None)
    ctx.check("finite for the first 20 steps", first_bad is not None and first_bad >= 20)
    ctx.check(
        "variance head output negative at the NaN step",
        first_bad is not None and mins[first_bad] < 0 and min(mins[:first_bad]) >= 0,
    )


# -- 9. loss divergence: speed-gun offset applied cumulatively -----------------------------------


@scenario(
    family="kendo_strike_speed_drifting_target_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Kendo strike-speed regressor (tanh MLP on shinai grip, stance width, fumikomi "
    "stride, kiai timing and men/kote/do target; MSE; Adagrad). The speed-gun calibration "
    "offset is added to the stored target every time a session is reloaded instead of once, "
    "so the target drifts a little each step; Adagrad's shrinking steps cannot keep up and the "
    "loss climbs slowly, with no jump, to over twice its best.",
)
def h578_kendo_cumulative_offset(ctx):
    gen = seeded(5789)
    model = _Net(5, hidden=32, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)

    def alter(step, x, y):
        return x, y + 0.05 * step

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 57890), 300, F.mse_loss, alter=alter)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 10. adam second moment poisoned: stale loss scale 1e4 for one step --------------------------

POISON_STEP = 100


@scenario(
    family="mooring_line_snap_load_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=POISON_STEP,
    heldout=True,
    note="Mooring-line snap-load regressor (GELU MLP on line diameter, fibre type, wave "
    "period, surge, pre-tension and chafe wear; MSE; Adam beta2 0.999). On the first step "
    "after a data-loader restart (step 100) the loss is multiplied by a stale loss scale of "
    "1e4 left in the config: one gradient over 1000x fills Adam's second moment, which "
    "decays over a thousand steps, so the updates afterwards are under a tenth of before and "
    "the fit stalls.",
)
def h578_mooring_stale_loss_scale(ctx):
    gen = seeded(57810)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, prev = [], {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step):
        moves.append(float((_flat(model) - prev["w"]).norm()))

    def backprop(step, loss):
        return loss * 1e4 if step == POISON_STEP else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 57811),
        200,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    pre = moves[POISON_STEP - 20 : POISON_STEP]
    post = moves[POISON_STEP + 40 : POISON_STEP + 70]
    ctx.check("finite throughout", _finite(losses))
    ctx.check(
        "gradient over 1000x at step 100",
        norms[POISON_STEP] > 1000 * _median(norms[POISON_STEP - 20 : POISON_STEP]),
    )
    ctx.check("updates afterwards under 0.1x before", _mean(post) < 0.1 * _mean(pre))
    ctx.check(
        "fit stalls: the last 50 steps improve under 5%",
        _mean(losses[-10:]) > 0.95 * _mean(losses[POISON_STEP + 40 : POISON_STEP + 50]),
    )


# -- 11. healthy, alarming-looking: rollback to the step-130 checkpoint at step 150 ---------------

ROLLBACK_STEP, CKPT_STEP = 150, 130


@scenario(
    family="coopering_barrel_hoop_rollback_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Coopering barrel-hoop fit classifier (ReLU MLP on stave count, bilge diameter, hoop "
    "width, drive depth, oak moisture and toasting level; 7 fit grades; AdamW, linear warm-up "
    "then cosine, clipping at 1.0, checkpoints every 10 steps). As planned after a preemption, "
    "at step 150 the job restores model, optimiser and scheduler from its step-130 checkpoint "
    "and carries on: the logged loss steps back up to where it was 20 steps earlier, then "
    "falls again. Healthy.",
)
def h578_coopering_preemption_rollback(ctx):
    gen = seeded(57812)
    model = _Net(6, hidden=64, out=7)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.01)
    total = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    ckpt, restored = {}, {}

    def after(step):
        if step == CKPT_STEP:
            ckpt["m"] = copy.deepcopy(model.state_dict())
            ckpt["o"] = copy.deepcopy(opt.state_dict())
            ckpt["s"] = copy.deepcopy(sched.state_dict())
        if step == ROLLBACK_STEP:
            model.load_state_dict(ckpt["m"])
            opt.load_state_dict(ckpt["o"])
            sched.load_state_dict(ckpt["s"])
            restored["same"] = bool(
                torch.equal(_flat(model), torch.cat([v.flatten() for v in ckpt["m"].values()]))
            )

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 128, 6, 7, 57813, spread=1.5),
        total,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
        after=after,
    )
    r = ROLLBACK_STEP
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses))
    ctx.check("weights restored to the step-130 checkpoint", restored.get("same", False))
    ctx.check(
        "loss steps back up after the rollback",
        _mean(losses[r + 1 : r + 6]) > 1.1 * _mean(losses[r - 5 : r + 1]),
    )
    ctx.check(
        "then falls again below its pre-rollback level",
        _mean(losses[-20:]) < _mean(losses[r - 10 : r + 1]),
    )


# -- 12. healthy: 1-D conv classifier, OneCycleLR, label smoothing, accumulation -------------------


class _SlapConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 7, padding=3)
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


def _slaps(gen, batch, n=64):
    t = torch.linspace(0, 1, n)
    freqs = torch.tensor([4.0, 7.0, 11.0, 16.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        decay = 2 + 4 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freqs[y][:, None] * t + phase) * torch.exp(-decay * t)
        yield x + 0.3 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="cajon_slap_tone_conv1d_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cajon slap/tone/bass/ghost-note classifier (1-D conv net over generated noisy "
    "decaying strike signals; cross-entropy with label smoothing 0.1; SGD momentum 0.9, "
    "OneCycleLR, 2-micro-batch accumulation). Healthy.",
)
def h578_cajon_onecycle_accum(ctx):
    gen = seeded(57814)
    model = _SlapConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    ctx.attach(model, opt)
    batches = _slaps(gen, 32)
    losses, accs = [], []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
            accs.append(float((out.argmax(-1) == y).float().mean()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses))
    ctx.check("accuracy over 0.7 at the end", _mean(accs[-20:]) > 0.7)


# -- 13. healthy: Huber regressor, Adadelta, ReduceLROnPlateau, noisy targets ---------------------


@scenario(
    family="dry_stone_wall_batter_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dry-stone wall batter-angle regressor (tanh MLP on wall height, through-stone "
    "spacing, hearting fill, stone density, footing width and frost depth; Huber loss on "
    "heavy-tailed noisy surveyed targets; Adadelta, ReduceLROnPlateau, clipping at 5). Healthy.",
)
def h578_dry_stone_adadelta_plateau(ctx):
    gen = seeded(57815)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 64, 6, 57816, noise=0.05)

    def noisy():
        while True:
            x, y = next(base)
            t = torch.distributions.StudentT(2.0).sample((len(y),)) * 0.1
            yield x, y + t

    losses, _ = _train(ctx, model, opt, noisy(), 250, F.huber_loss, clip=5.0, plateau=plateau)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses))
