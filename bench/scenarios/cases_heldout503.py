"""Held-out set 503 (``h503_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sea-ice pancake-drift transformer with a k-nearest-neighbour memory whose query/key
projections fell into the no-decay group at the embedding's lr (attention logits grow, AdamW), a
stilt-walking stride regressor with a hand-written decoupled weight decay of the wrong sign (slow
climb, SGD momentum), a canal-lock sluice-discharge Gaussian-NLL net taking sqrt of a negative
head (NaN, RAdam), a handbell-casting rim-thickness regressor whose validation hook multiplies one
step's loss by 1e4 (Adam's second moment poisoned), a fell-running descent regressor whose StepLR
gamma is typed 10 for 0.1 (past 2/sharpness, full-batch SGD), a bobsleigh split-time ReLU RNN
with its recurrent weights initialised at gain 1.6 (exploding through time, Adagrad), a saddlery
stitch-tension regressor whose first layer's group lr is typed 1e-9 (frozen, RMSprop), a cheese-
cave rind BCE net fed one shard in raw units (Adamax), a sheepdog-trial outrun regressor trained
one step with the criterion left at reduction="sum" (SGD Nesterov) and a kora string-pluck
classifier whose temperature is read in percent (softmax collapse, NAdam).

Controls: a lava-lamp blob-height GRU seq2seq with teacher forcing annealed 1 -> 0 (Adam), a cajon
slap-tone classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR, label smoothing,
clipping) and a quilting-frame batting-loft tied autoencoder (SGD momentum, Huber,
ReduceLROnPlateau, accumulation 2, noisy batches).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


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
    weight=None,
    clip=None,
    sched=None,
    after=None,
    logged=None,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)`` changes a batch, ``weight(step)``
    multiplies the backpropagated loss, ``logged(step, loss, x)`` is what the logger shows,
    ``after(step, loss)`` runs after the optimizer step. Stops after a non-finite loss."""
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
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        shown = logged(step, loss, x) if logged is not None else loss
        losses.append(float(shown.detach()))
        ctx.step(shown.detach())
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


# -- 1. attention logit growth: a kNN-memory transformer's q/k in the no-decay group ---------------


class _LocalAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y)


class _KNNMemory(nn.Module):
    """Each query attends over its top-k keys retrieved from a FIFO cache of past hidden states
    (stored detached, as in Memorizing Transformers); keys and values are projected on read."""

    def __init__(self, dim, topk=8, size=256):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.topk, self.size = topk, size
        self.register_buffer("cache", torch.zeros(0, dim))
        self.peak = 0.0

    def forward(self, h):
        b, t, d = h.shape
        if self.cache.shape[0] >= self.topk:
            q = self.q(h)
            keys, vals = self.k(self.cache), self.v(self.cache)
            scores = q @ keys.T / math.sqrt(d)
            top, idx = scores.topk(self.topk, dim=-1)
            self.peak = float(top.detach().abs().max())
            read = (torch.softmax(top, -1).unsqueeze(-1) * vals[idx]).sum(-2)
        else:
            read = torch.zeros_like(h)
        if self.training:
            self.cache = torch.cat([self.cache, h.detach().reshape(-1, d)])[-self.size :]
        return self.out(read)


class _DriftTransformer(nn.Module):
    def __init__(self, vocab=16, dim=32, length=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.local = _LocalAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.memory = _KNNMemory(dim)
        self.ln3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.embed(idx) + self.pos(torch.arange(idx.shape[1]))
        h = h + self.local(self.ln1(h))
        h = h + self.memory(self.ln2(h))
        h = h + self.ff(self.ln3(h))
        return self.head(h)


def _drift_sequences(gen, batch=16, length=17, vocab=16, patterns=24, seed=5031):
    """Pancake-ice drift codes: each sequence is one of a bank of drift patterns, 10% noisy."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randint(0, vocab, (patterns, length), generator=g)
    while True:
        seq = bank[torch.randint(0, patterns, (batch,), generator=gen)].clone()
        noise = torch.rand(seq.shape, generator=gen) < 0.1
        seq[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=gen)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="sea_ice_pancake_drift_knn_memory_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("memory",),
    diverges=None,
    heldout=True,
    note="Sea-ice pancake-drift code model: a hand-written pre-LN transformer (local causal "
    "attention, then a k-nearest-neighbour memory where each query attends over its top-8 keys "
    "from a cache of 256 past hidden states, GELU feed-forward), next-code cross-entropy over "
    "generated drift sequences, AdamW. The param-group filter meant for the embedding tables (lr 3e-2, no weight decay) "
    "matches module names 'embed', 'pos', 'q', 'k', so the memory's query and key projections "
    "land in it: "
    "they grow unchecked and the memory's q.k/sqrt(d) logits grow over 20x.",
)
def h503_sea_ice_knn_memory_logits(ctx) -> None:
    gen = seeded(5031)
    model = _DriftTransformer()
    # meant: the embedding tables only; the name match also catches memory.q.* and memory.k.*
    fast = [
        p for n, p in model.named_parameters() if n.split(".")[-2] in ("embed", "pos", "q", "k")
    ]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 2e-3, "weight_decay": 0.05},
            {"params": fast, "lr": 3e-2, "weight_decay": 0.0},
        ]
    )
    peaks = []

    def after(step, loss):
        peaks.append(model.memory.peak)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _drift_sequences(gen),
        200,
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        after=after,
    )
    early = _mean(peaks[2:12])
    ctx.check("the memory's attention logits grew over 20x", max(peaks[-20:]) > 20 * early)
    ctx.check("the loss stayed finite", _finite(losses))


# -- 2. loss divergence: a hand-written decoupled weight decay with the wrong sign ----------------


@scenario(
    family="stilt_walking_stride_wd_sign_silu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Stilt-walking stride-length regressor (SiLU MLP on stilt height, cadence, gait and "
    "ground features, MSE, SGD momentum 0.9). The training loop applies its own decoupled weight "
    "decay after each step as p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights inflate "
    "slowly and the loss, after falling, climbs back with no other mechanism.",
)
def h503_stilt_walking_wd_sign(ctx) -> None:
    gen = seeded(5032)
    model = _Net(10, 48, 1, act=nn.SiLU)
    lr, wd = 0.02, 0.25
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norm0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # sign bug: decay meant as 1 - lr * wd

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 50320), 300, F.mse_loss, after=after)
    norm1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    runs = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9, 10)]
    ctx.check("the loss climbed over 3x from its low", _finite(losses) and runs[-1] > 3 * min(runs))
    ctx.check("the weights grew over 3x", norm1 > 3 * norm0)


# -- 3. nonfinite: sqrt of a negative head in the discharge feature -------------------------------


class _Celerity(nn.Module):
    """Sluice discharge feature sqrt(2 g (upstream - downstream)), no clamp."""

    def forward(self, levels):
        return torch.sqrt(2 * 9.81 * (levels[:, 0] - levels[:, 1]))[:, None]


class _SluiceNet(nn.Module):
    def __init__(self, d_other=6, hidden=48):
        super().__init__()
        self.celerity = _Celerity()
        self.fc1 = nn.Linear(d_other + 1, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([self.celerity(x[:, :2]) / 5.0, x[:, 2:]], 1)
        h = self.act2(self.fc2(self.act1(self.fc1(h))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _sluice_batches(gen, batch=64):
    while True:
        up = 2.0 + 3.0 * torch.rand(batch, generator=gen)
        down = up - 0.2 - 2.0 * torch.rand(batch, generator=gen)
        other = torch.randn(batch, 6, generator=gen)
        q = 0.6 * torch.sqrt(2 * 9.81 * (up - down)) / 5 + 0.2 * other[:, 0]
        y = q + 0.05 * (1 + other[:, 1].abs()) * torch.randn(batch, generator=gen)
        yield torch.cat([up[:, None], down[:, None], other], 1), y


CANAL_ONSET = 90


@scenario(
    family="canal_lock_sluice_discharge_sqrt_head_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("celerity",),
    diverges=CANAL_ONSET,
    onset=CANAL_ONSET,
    heldout=True,
    note="Canal-lock sluice discharge net (tanh MLP with mean and log-variance heads, Gaussian "
    "NLL, RAdam). Its celerity module computes sqrt(2 g (upstream - downstream)) with no clamp; "
    "at step 90 a batch from a lock being filled has one paddle reading with the downstream "
    "level above the upstream one, the sqrt of the negative head is NaN and so is the loss.",
)
def h503_canal_lock_sqrt_negative_head(ctx) -> None:
    gen = seeded(5033)
    model = _SluiceNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == CANAL_ONSET:
            x = x.clone()
            x[5, 1] = x[5, 0] + 0.3  # reversed head while the chamber fills
        return x, y

    losses, _ = _train(ctx, model, opt, _sluice_batches(gen), 200, _gauss_nll, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN first at the reversed-head batch", first_bad == CANAL_ONSET)
    ctx.check("the loss fell before it", _fell(losses[:CANAL_ONSET], ratio=0.9))


# -- 4. Adam's second moment poisoned: a validation hook scales one step's loss by 1e4 -------------

HANDBELL_ONSET = 100


@scenario(
    family="handbell_casting_rim_thickness_loss_sum_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=HANDBELL_ONSET,
    heldout=True,
    note="Handbell-casting rim-thickness regressor (tanh MLP on bell diameter, alloy tin share, "
    "mould temperature and pour rate, MSE, Adam with beta2 0.999). A validation hook that fires "
    "at step 100 multiplies the loss by 1e4 to report it in micrometres and leaves the scaled "
    "loss as the one backpropagated: one gradient over 1e3x the median fills Adam's second "
    "moment: after the first steps' momentum tail the update per unit of gradient falls over 5x "
    "and the loss, knocked up by that tail, recovers only slowly.",
)
def h503_handbell_poisoned_second_moment(ctx) -> None:
    gen = seeded(5034)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps_sizes, vs = [], []
    prev = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        cur = [p.detach().clone() for p in model.parameters()]
        steps_sizes.append(
            float(torch.cat([(c - q).flatten() for c, q in zip(cur, prev, strict=True)]).norm())
        )
        prev[:] = cur
        v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
        vs.append(float(v.sqrt().median()))

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 50340),
        260,
        F.mse_loss,
        weight=lambda s: 1e4 if s == HANDBELL_ONSET else 1.0,
        after=after,
    )
    o = HANDBELL_ONSET
    eff = [a / (b + 1e-30) for a, b in zip(steps_sizes, norms, strict=True)]
    ctx.check("the gradient at onset over 1e3x the median", norms[o] > 1e3 * _median(norms[:o]))
    ctx.check("Adam's median sqrt(v) over 30x", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "update per unit gradient after onset under 0.2x",
        _mean(eff[o + 40 : o + 100]) < 0.2 * _mean(eff[o - 40 : o]),
    )
    ctx.check("the loss stays finite", _finite(losses))


# -- 5. sharpness above limit: StepLR gamma typed 10 for 0.1 --------------------------------------

FELL_ONSET = 80


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="fell_running_descent_steplr_gamma_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=FELL_ONSET,
    heldout=True,
    note="Fell-running descent-time regressor (tanh MLP on gradient, scree share, leg length "
    "and runner features, 256 fixed race records full-batch, MSE, plain SGD). Its StepLR is "
    "configured with gamma=10 where 0.1 was meant: at step 80 the lr rises 10x, lr * sharpness "
    "goes from under 2 to over 2 and the loss blows up.",
)
def h503_fell_running_steplr_gamma(ctx) -> None:
    gen = seeded(5035)
    model = _Net(8, 64, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 50350))
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=FELL_ONSET, gamma=10.0)
    lr_sharp = {}

    def before(step):
        if step in (FELL_ONSET - 1, FELL_ONSET):
            lr_sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, x, y)

    def batches():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 160, F.mse_loss, before=before, sched=sched)
    ctx.check("lr * sharpness under 2 before the step", lr_sharp.get(FELL_ONSET - 1, 9) < 2)
    ctx.check("lr * sharpness over 2 after it", lr_sharp.get(FELL_ONSET, 0) > 2)
    pre = min(losses[:FELL_ONSET])
    post = [v if math.isfinite(v) else float("inf") for v in losses[FELL_ONSET:]]
    ctx.check("the loss blew up over 100x", max(post) > 100 * pre)


# -- 6. exploding gradients: recurrent weights initialised at gain 1.6 ----------------------------


class _SplitRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.6):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _split_batches(gen, batch=32, length=30):
    while True:
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -5:, 0].sum(1) - 0.5 * x[:, -3:, 1].sum(1))
        yield x, y


@scenario(
    family="bobsleigh_run_split_identity_relu_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Bobsleigh run split-time ReLU RNN (hand-written cell over 30 timing-eye readings of "
    "push speed, runner pressure and curve g, MSE, Adagrad). The recurrent matrix is initialised "
    "orthogonal with gain 1.6 (the input layer's gain pasted in): states and gradients grow "
    "through time: the first loss is hundreds of times the trained one and dL/dh at the first "
    "step is many times that at the last.",
)
def h503_bobsleigh_recurrent_gain(ctx) -> None:
    gen = seeded(5036)
    model = _SplitRNN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ratios, growth = [], []

    def logged(step, loss, x):
        st = model.states
        if st and st[0].grad is not None:
            ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-30)))
            growth.append(float(st[-1].detach().norm() / (st[0].detach().norm() + 1e-30)))
        return loss

    losses, _ = _train(ctx, model, opt, _split_batches(gen), 150, F.mse_loss, logged=logged)
    ctx.check("dL/dh at t=0 over 10x that at t=T", bool(ratios) and ratios[0] > 10)
    ctx.check("the state grew over 10x through time", bool(growth) and growth[0] > 10)
    ctx.check("the first loss over 100x the median", losses[0] > 100 * _median(losses))


# -- 7. update ratio out of range: first layer's group lr typed 1e-9 ------------------------------


@scenario(
    family="saddlery_stitch_tension_two_group_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Saddlery stitch-tension regressor (GELU MLP on thread gauge, awl size, leather "
    "thickness and stitch pitch, Huber, RMSprop with two param groups). The first layer's group "
    "has lr 1e-9 typed for 1e-3: fc1 barely moves (relative change under 1e-5) while the rest "
    "trains normally.",
)
def h503_saddlery_frozen_fc1(ctx) -> None:
    gen = seeded(5037)
    model = _Net(9, 48, 1, act=nn.GELU)
    rest = list(model.fc2.parameters()) + list(model.head.parameters())
    opt = torch.optim.RMSprop(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-3}]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 9, 50370), 200, F.huber_loss)
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-5", r1 < 1e-5)
    ctx.check("fc2 moved over 5%", r2 > 0.05)
    ctx.check("the loss fell", _fell(losses, ratio=0.8))


# -- 8. data outlier: one shard in raw sensor units -----------------------------------------------

CHEESE_ONSET = 120


def _rind_batches(gen, batch=64, seed=50380):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        x = torch.randn(batch, 7, generator=gen)
        p = torch.sigmoid(2.0 * x @ w / math.sqrt(7) + 0.5 * x[:, 0] * x[:, 1])
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    family="cheese_cave_rind_humidity_bad_shard_bce_net",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=CHEESE_ONSET,
    heldout=True,
    note="Cheese-cave rind-mould risk net (ReLU MLP on humidity, temperature, airflow and "
    "turning features, BCE with logits, Adamax, clipping at 1). The shard read at step 120 comes "
    "from a logger that wrote raw counts (features about 400x their standardised scale): the "
    "loss jumps over 20x for that batch, the gradient is clipped, and the run recovers.",
)
def h503_cheese_cave_raw_shard(ctx) -> None:
    gen = seeded(5038)
    model = _Net(7, 48, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == CHEESE_ONSET:
            x = 400.0 * x.abs() + 100.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _rind_batches(gen),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    o = CHEESE_ONSET
    pre = _mean(losses[o - 20 : o])
    ctx.check("the loss jumped over 20x at the bad shard", losses[o] > 20 * pre)
    ctx.check("the gradient jumped over 20x", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("the run recovered", _finite(losses) and _mean(losses[-20:]) < 1.5 * pre)


# -- 9. gradient spike: the criterion left at reduction="sum" for one step ------------------------

SHEEPDOG_ONSET = 110


@scenario(
    family="sheepdog_trial_outrun_sum_reduction_relu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SHEEPDOG_ONSET,
    heldout=True,
    note="Sheepdog-trial outrun-time regressor (ReLU MLP on field size, sheep count, wind and "
    "dog features, MSE, SGD Nesterov, clipping at 1). The evaluation helper sets the shared "
    "criterion's reduction to 'sum' and restores 'mean' only after the next training step: the "
    "step at 110 backpropagates the sum over 256 samples (gradient over 30x the median) while "
    "the logger, which always divides by the batch size, shows an ordinary loss.",
)
def h503_sheepdog_sum_reduction(ctx) -> None:
    gen = seeded(5039)
    model = _Net(8, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    crit = nn.MSELoss()

    def before(step):
        crit.reduction = "sum" if step == SHEEPDOG_ONSET else "mean"

    def logged(step, loss, x):
        return loss / x.shape[0] if crit.reduction == "sum" else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 8, 50390),
        220,
        crit,
        before=before,
        logged=logged,
        clip=1.0,
    )
    o = SHEEPDOG_ONSET
    ctx.check("the gradient spiked over 30x the median", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("the logged loss stayed ordinary", losses[o] < 2 * _mean(losses[o - 10 : o]))
    ctx.check("the loss fell and stayed finite", _fell(losses))


# -- 10. softmax collapse: temperature read in percent --------------------------------------------


class _KoraNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature
        self.last_logits = out.detach()
        return out


@scenario(
    family="kora_string_pluck_temperature_bug_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kora string-pluck technique classifier (ReLU MLP on onset spectrum features, 6 "
    "techniques, cross-entropy, NAdam). The config's 'temperature: 1' is read by code that "
    "expects percent and divides by 100, so the logits are divided by 0.01: over half the rows' "
    "softmax gives the target probability exactly 1.0 in float32.",
)
def h503_kora_temperature_percent(ctx) -> None:
    gen = seeded(5040)
    model = _KoraNet(temperature=1 / 100)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 6, 50400, spread=0.6)
    fracs = []

    def logged(step, loss, x):
        fracs.append(collapsed_fraction(model.last_logits, model.last_y))
        return loss

    def alter(step, x, y):
        model.last_y = y
        return x, y

    losses, _ = _train(
        ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter, logged=logged
    )
    ctx.check("over half the rows' target probability is exactly 1.0", _mean(fracs[-30:]) > 0.5)
    ctx.check("the loss is finite", _finite(losses))


# -- 11. control: teacher forcing annealed from 1 to 0 -------------------------------------------


class _BlobSeq2Seq(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.encoder = nn.GRU(1, hidden, batch_first=True)
        self.decoder = nn.GRUCell(1, hidden)
        self.head = nn.Linear(hidden, 1)
        self.tf_ratio = 1.0
        self.gen = torch.Generator().manual_seed(50410)

    def forward(self, x, future):
        _, h = self.encoder(x.unsqueeze(-1))
        h = h[0]
        prev = x[:, -1:]
        outs = []
        for t in range(future.shape[1]):
            h = self.decoder(prev, h)
            out = self.head(h)
            outs.append(out)
            teach = torch.rand(x.shape[0], 1, generator=self.gen) < self.tf_ratio
            prev = torch.where(teach, future[:, t : t + 1], out)
        return torch.cat(outs, 1)


@scenario(
    family="lava_lamp_blob_teacher_forcing_gru_seq2seq",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lava-lamp blob-height forecaster (GRU encoder over 16 past heights, GRU-cell decoder "
    "over 12 future ones, MSE, Adam, clipping at 1). The teacher-forcing ratio is annealed "
    "linearly from 1 to 0 over the first 60% of training: the loss rises as the decoder is fed "
    "its own predictions, then falls. Control.",
)
def h503_lava_lamp_teacher_forcing(ctx) -> None:
    gen = seeded(5041)
    model = _BlobSeq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    steps = 250
    losses = []
    t = torch.arange(28, dtype=torch.float32)
    for step in range(steps):
        model.tf_ratio = max(0.0, 1.0 - step / (0.6 * steps))
        f = 0.15 + 0.25 * torch.rand(32, 1, generator=gen)
        ph = 6.3 * torch.rand(32, 1, generator=gen)
        a = 0.5 + 0.5 * torch.rand(32, 1, generator=gen)
        s = a * torch.sin(f * t + ph) + 0.3 * torch.sin(2.1 * f * t + ph)
        s = s + 0.03 * torch.randn(s.shape, generator=gen)
        x, future = s[:, :16], s[:, 16:]
        loss = F.mse_loss(model(x, future), future)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
    runs = [_mean(losses[i : i + 10]) for i in range(0, steps - 9, 10)]
    low = min(range(len(runs) // 2), key=lambda i: runs[i])
    ctx.check("the loss rose as teacher forcing was withdrawn", max(runs[low:]) > 1.3 * runs[low])
    ctx.check("the loss fell overall and stayed finite", _fell(losses, ratio=0.5))


# -- 12. control: fp16 autocast + GradScaler, OneCycleLR, label smoothing ------------------------


@scenario(
    family="cajon_slap_tone_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cajon slap-tone classifier (GELU MLP on contact-mic spectrum features, 5 strokes, "
    "cross-entropy with label smoothing 0.1, AdamW, OneCycleLR, clipping at 1, fp16 autocast "
    "with a GradScaler). Control.",
)
def h503_cajon_fp16_onecycle(ctx) -> None:
    gen = seeded(5042)
    model = _Net(16, 64, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 16, 5, 50420, spread=1.3)
    losses = []
    for _ in range(steps):
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
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss.detach())
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell and stayed finite", _fell(losses, ratio=0.6))


# -- 13. control: a tied autoencoder, Huber, ReduceLROnPlateau, accumulation ---------------------


class _TiedAutoencoder(nn.Module):
    def __init__(self, d=20, code=6):
        super().__init__()
        self.encoder = nn.Linear(d, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.T, self.decoder_bias)


@scenario(
    family="quilting_frame_batting_loft_tied_autoencoder",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Quilting-frame batting-loft autoencoder (encoder weights tied to the decoder, tanh "
    "code of 6 over 20 loft-gauge readings, Huber, SGD momentum 0.9, ReduceLROnPlateau, "
    "gradient accumulation 2, clipping at 2, noisy batches). Control.",
)
def h503_quilting_tied_autoencoder(ctx) -> None:
    gen = seeded(5043)
    model = _TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(50430)
    basis = torch.randn(6, 20, generator=g) / 2
    losses = []
    for _ in range(200):
        shown = 0.0
        for _ in range(2):
            z = torch.randn(32, 6, generator=gen)
            x = z @ basis + 0.1 * torch.randn(32, 20, generator=gen)
            loss = F.huber_loss(model(x), x)
            (loss / 2).backward()
            shown += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell and stayed finite", _fell(losses, ratio=0.5))
