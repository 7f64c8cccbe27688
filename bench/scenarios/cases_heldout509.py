"""Held-out set 509 (``h509_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a carillon clapper-decay coordinate network (random Fourier features of time plus a
learnt per-signal code) whose warm-up LambdaLR lost its min(1, .) and keeps raising the lr past
2/sharpness (full-batch SGD); a gong-shimmer classifier over fitted coordinate-network codes
whose loss is nll_loss on raw logits (the head's logits grow without bound, Adam); an alpaca
shearing fleece-mass regressor whose resumed step reads its loss weight as 100 from a percent
config (one gradient burst, SGD Nesterov, clipping); a tinsmith seam-crimp ReLU classifier with
its AdamW lr typed 0.3 for 3e-4 (ReLUs die); a travertine terrace-flow 10-layer ReLU MLP
initialised with std 0.6 instead of He (gradients grow through depth, SGD momentum); a seiche
run-up net taking sqrt of a depth reading that goes below chart datum (RMSprop); a hoof-boot
fitting regressor whose fc1 group lr is typed 3e-9 (NAdam); a kabaddi raid tackle-force
regressor fed one shard in newtons instead of kilonewtons (ASGD, clipping); a guqin harmonic
classifier whose temperature is read in percent (1 -> 0.01, softmax collapse, Adamax); a fen
drain subsidence regressor whose benchmark drifts each step (a slow climb, RAdam).

Controls: an icefall serac-collapse classifier on classes imbalanced 95 to 5 (Adam, warm-up +
cosine); a janggu drum-stroke classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR,
label smoothing, clipping); a tonnellerie stave-toast tied-weight autoencoder (SGD momentum,
ReduceLROnPlateau, accumulation 2, Huber, clipping).
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """The file's loop: ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss; ``after(step, loss)`` runs after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
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


def _sharpness(model, loss_fn, iters=10):
    """Top Hessian eigenvalue of the full-batch loss by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
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


# -- coordinate networks with random Fourier features ------------------------------------------------


class _FourierFeatures(nn.Module):
    """Fixed random Fourier features of a 1-D coordinate: [sin(2 pi B t), cos(2 pi B t)]."""

    def __init__(self, n, sigma, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", sigma * torch.randn(n, generator=g))

    def forward(self, t):
        a = 2 * math.pi * t[:, None] * self.freqs[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=-1)


class _CoordinateNet(nn.Module):
    """f(t; code_i): Fourier features of t concatenated with signal i's learnt code."""

    def __init__(self, signals, code_dim=8, n_freq=32, sigma=3.0, hidden=64, seed=0):
        super().__init__()
        self.rff = _FourierFeatures(n_freq, sigma, seed)
        self.codes = nn.Embedding(signals, code_dim)
        nn.init.normal_(self.codes.weight, std=0.1)
        self.fc1 = nn.Linear(2 * n_freq + code_dim, hidden)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, inp):
        t, i = inp
        h = torch.cat([self.rff(t), self.codes(i)], dim=-1)
        return self.head(self.act(self.fc1(h))).squeeze(-1)


def _ringing_signals(gen, n, points, classes=None):
    """Generated struck-metal decays: a few damped partials per signal on t in [0, 1).
    With ``classes``, the partial ratios depend on the class."""
    t = torch.arange(points) / points
    ratios = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.4, 5.4], [1.0, 1.5, 2.76], [1.0, 3.0, 6.2]])
    labels = torch.randint(0, classes or 1, (n,), generator=gen)
    ys = []
    for k in range(n):
        base = 1.0 + 2.0 * torch.rand((), generator=gen)
        r = ratios[labels[k]] if classes else 1.0 + 3.0 * torch.rand(3, generator=gen)
        amp = 0.3 + 0.7 * torch.rand(3, generator=gen)
        decay = 1.0 + 3.0 * torch.rand(3, generator=gen)
        phase = 2 * math.pi * torch.rand(3, generator=gen)
        wave = (
            amp[:, None]
            * torch.exp(-decay[:, None] * t)
            * torch.sin(2 * math.pi * base * r[:, None] * t + phase[:, None])
        )
        ys.append(wave.sum(0))
    y = torch.stack(ys)
    tt = t.repeat(n)
    ii = torch.arange(n).repeat_interleave(points)
    return (tt, ii), y.reshape(-1), labels


# -- 1. sharpness above limit: the warm-up never stops ------------------------------------------------

CARILLON_WARM = 10


@scenario(
    family="carillon_clapper_decay_rff_coordinate_net",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=CARILLON_WARM,
    note="Carillon clapper-decay coordinate network, hand-written: 32 fixed random Fourier "
    "features of time (sigma 3) concatenated with a learnt 8-d code per bell, a tanh layer and a "
    "linear head fit 16 generated damped-partial strike signals (64 samples each, full batch, "
    "MSE, plain SGD at 0.4/sharpness after warm-up). The warm-up LambdaLR is written "
    "lambda s: s / 10 with its min(1, .) dropped: past step 25 the lr keeps rising linearly, "
    "crosses 2/sharpness and the full-batch loss oscillates and blows up.",
)
def h509_carillon_warmup_past_limit(ctx):
    gen = seeded(5091)
    inp, y, _ = _ringing_signals(gen, 16, 64)
    model = _CoordinateNet(16, seed=5091)

    def full_loss():
        return F.mse_loss(model(inp), y)

    sharp0 = _sharpness(model, full_loss)
    base = 0.4 / sharp0
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / CARILLON_WARM)  # min(1, .) lost
    products = []

    def before(step):
        if step % 10 == 0 and step > 0 and math.isfinite(ctx.losses[-1]) and ctx.losses[-1] < 1e3:
            lam = _sharpness(model, full_loss)
            products.append(opt.param_groups[0]["lr"] * lam)

    def batches():
        while True:
            yield inp, y

    losses, _ = _train(ctx, model, opt, batches(), 220, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite)
    ctx.check("lr * sharpness measured in the run exceeds 2", max(products, default=0.0) > 2.0)
    ctx.check(
        "the loss blows up (over 100x its best, or non-finite)",
        (not _finite(losses)) or losses[-1] > 100 * best,
    )
    ctx.check("it was fitting before (loss under 80% of its start)", best < 0.8 * losses[0])


# -- 2. output logit divergence: a classifier over fitted codes with log_softmax dropped ------------


class _CodeClassifier(nn.Module):
    def __init__(self, code_dim, classes):
        super().__init__()
        self.fc = nn.Linear(code_dim, 32)
        self.act = nn.GELU()
        self.head = nn.Linear(32, classes)

    def forward(self, z):
        return self.head(self.act(self.fc(z)))


@scenario(
    family="gong_shimmer_rff_code_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Gong-shimmer classifier over fitted codes: a hand-written Fourier-feature coordinate "
    "network with one learnt 8-d code per recording first fits 64 generated gong decays of four "
    "partial-ratio families (auto-decoder, Adam, before training); a GELU classifier then "
    "reads the fitted codes (Adam 1e-2). Its loss is F.nll_loss(logits, y) on the raw logits: "
    "the log_softmax was dropped in a refactor, so the loss is -logit[target], unbounded below, "
    "and the head's logits grow without bound.",
)
def h509_gong_code_classifier_raw_nll(ctx):
    gen = seeded(5092)
    inp, y, labels = _ringing_signals(gen, 64, 48, classes=4)
    fitter = _CoordinateNet(64, code_dim=8, n_freq=24, sigma=4.0, hidden=48, seed=5092)
    fopt = torch.optim.Adam(fitter.parameters(), lr=1e-2)
    for _ in range(80):
        fopt.zero_grad()
        F.mse_loss(fitter(inp), y).backward()
        fopt.step()
    codes = fitter.codes.weight.detach().clone()
    codes = (codes - codes.mean(0)) / codes.std(0)

    model = _CodeClassifier(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    peaks = []

    def batches():
        while True:
            idx = torch.randint(0, 64, (32,), generator=gen)
            yield codes[idx], labels[idx]

    def loss_fn(logits, target):
        peaks.append(float(logits.detach().abs().max()))
        return F.nll_loss(logits, target)  # log_softmax dropped

    losses, _ = _train(ctx, model, opt, batches(), 180, loss_fn, classifier=True)
    start = _mean(peaks[:5])
    ctx.check("max |logit| grows over 20x", _mean(peaks[-5:]) > 20 * start)
    ctx.check(
        "the logits are still growing at the end", _mean(peaks[-5:]) > 1.2 * _mean(peaks[-40:-35])
    )
    ctx.check("the loss runs below any cross-entropy (negative)", losses[-1] < -10.0)


# -- 3. gradient spike: a resumed step reads its loss weight in percent -------------------------------

ALPACA_ONSET = 120


@scenario(
    family="alpaca_shearing_fleece_mass_nesterov_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ALPACA_ONSET,
    note="Alpaca-shearing fleece-mass regressor (ReLU MLP on blow count, staple length, comb "
    "width and shearer-pace features, MSE, SGD Nesterov momentum 0.9, clipping at norm 5). The "
    "first step after a resume at 120 reads its loss weight from a config kept in percent, 100 "
    "instead of 1.0: that one step's gradient is 100x larger while the logged loss is ordinary; "
    "clipping holds the update and the run goes on.",
)
def h509_alpaca_resume_loss_weight_percent(ctx):
    gen = seeded(5093)
    model = _Net(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 5093),
        180,
        F.mse_loss,
        weight=lambda s: 100.0 if s == ALPACA_ONSET else 1.0,
        clip=5.0,
    )
    others = norms[:ALPACA_ONSET] + norms[ALPACA_ONSET + 1 :]
    ordinary = _median(losses[ALPACA_ONSET - 20 : ALPACA_ONSET])
    ctx.check("gradient at onset over 50x the median", norms[ALPACA_ONSET] > 50 * _median(others))
    ctx.check("logged loss at onset ordinary (under 2x)", losses[ALPACA_ONSET] < 2 * ordinary)
    ctx.check("the run trains and stays finite", _fell(losses))


# -- 4. loss of plasticity: an lr typo kills the ReLUs ----------------------------------------------


@scenario(
    family="tinsmith_seam_crimp_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Tinsmith seam-crimp classifier (ReLU MLP on crimp depth, sheet gauge, roller pressure "
    "and seam-width features, 6 seam grades, cross-entropy). AdamW's lr is typed 0.3 for 3e-4: "
    "the first large updates push the ReLU pre-activations negative for every input, most of "
    "the hidden units die and the loss stalls far above what the model can reach.",
)
def h509_tinsmith_lr_typo_dead_relus(ctx):
    gen = seeded(5094)
    model = _Net(12, hidden=48, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=0.3, weight_decay=0.01)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(1), 512, 12, 6, 5094))
    with torch.no_grad():
        dead0 = max(
            dead_fraction(model.act1(model.fc1(probe_x))), dead_fraction(model.features(probe_x))
        )
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 6, 5094), 150, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        h1 = model.act1(model.fc1(probe_x))
        dead = max(dead_fraction(h1), dead_fraction(model.act2(model.fc2(h1))))
    ctx.check("under 10% of units dead at init", dead0 < 0.1)
    ctx.check("over half of a hidden layer's units dead at the end", dead > 0.5)
    ctx.check("the loss stalls above 0.8", _mean(losses[-20:]) > 0.8)
    ctx.check("the loss is finite", _finite(losses))


# -- 5. exploding gradients through depth: a bad init std ---------------------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in, hidden, depth, std):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="travertine_terrace_flow_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Travertine-terrace flow regressor (10-layer ReLU MLP, width 32, on spring discharge, "
    "CO2 degassing and rimstone-pool features, MSE, SGD momentum 0.9 at 5e-5). The init writes "
    "normal_(std=0.4) where He init wants sqrt(2/32) = 0.25: each layer multiplies the signal "
    "and the backward signal by about 1.6, the gradient at the first layer is orders of "
    "magnitude above the last, and the loss blows up.",
)
def h509_travertine_bad_init_std(ctx):
    gen = seeded(5095)
    model = _DeepNet(10, 32, 10, std=0.4)
    opt = torch.optim.SGD(model.parameters(), lr=5e-5, momentum=0.9)
    x0, y0 = next(_readings(torch.Generator().manual_seed(2), 128, 10, 5095))
    zs, h = [], x0
    for layer in model.layers:
        zs.append(layer(h))
        zs[-1].retain_grad()
        h = F.relu(zs[-1])
    F.mse_loss(model.head(h).squeeze(-1), y0).backward()
    ratio = float(zs[0].grad.norm() / zs[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5095), 150, F.mse_loss)
    ctx.check("dL/dz at layers.0 over 50x the last layer's", ratio > 50)
    ctx.check(
        "the loss blows up (non-finite or over 1e6x the target scale)",
        (not _finite(losses)) or max(losses) > 1e6,
    )


# -- 6. nonfinite: sqrt of a depth reading below chart datum ------------------------------------------

SEICHE_ONSET = 90


class _Celerity(nn.Module):
    """Shallow-water wave speed sqrt(g h) from the depth reading (column 0)."""

    def forward(self, x):
        return torch.sqrt(9.81 * x[:, :1])


class _SeicheNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.celerity = _Celerity()
        self.fc1 = nn.Linear(d_in + 1, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)
        self.last_c = None

    def forward(self, x):
        c = self.celerity(x)
        self.last_c = c.detach()
        h = self.act2(self.fc2(self.act1(self.fc1(torch.cat([x, c / 10.0], dim=-1)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="seiche_runup_celerity_sqrt_rmsprop_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("celerity",),
    diverges=SEICHE_ONSET,
    heldout=True,
    onset=SEICHE_ONSET,
    note="Lake-seiche run-up regressor (SiLU MLP on basin depth, fetch, wind set-up and "
    "pressure-jump features plus a celerity feature sqrt(g h), MSE, RMSprop 1e-3). The celerity "
    "module takes sqrt of the gauge depth with no clamp; at step 90 a batch from a gauge that "
    "reads below chart datum at low water has negative depths: sqrt gives NaN and the loss is "
    "NaN at 90.",
)
def h509_seiche_sqrt_negative_depth(ctx):
    gen = seeded(5096)
    model = _SeicheNet(8)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    nan_c = []

    def batches():
        inner = _readings(gen, 64, 8, 5096)
        while True:
            x, y = next(inner)
            x = x.clone()
            x[:, 0] = 2.0 + 8.0 * torch.rand(64, generator=gen)  # depth in metres
            yield x, y + 0.05 * x[:, 0]

    def alter(step, x, y):
        if step == SEICHE_ONSET:
            x = x.clone()
            x[:8, 0] = -0.3 - 0.5 * torch.rand(8, generator=gen)
        return x, y

    def loss_fn(out, y):
        nan_c.append(bool(torch.isnan(model.last_c).any()))
        return F.mse_loss(out, y)

    losses, _ = _train(ctx, model, opt, batches(), 150, loss_fn, alter=alter)
    ctx.check("losses finite before onset", _finite(losses[:SEICHE_ONSET]))
    ctx.check(
        "the loss is NaN at the onset",
        len(losses) > SEICHE_ONSET and math.isnan(losses[SEICHE_ONSET]),
    )
    ctx.check(
        "the celerity output holds NaN at the onset",
        len(nan_c) > SEICHE_ONSET and nan_c[SEICHE_ONSET],
    )
    ctx.check("it trained before the onset", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 7. update ratio out of range: a param-group lr typo ----------------------------------------------


@scenario(
    family="hoof_boot_fitting_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Hoof-boot fitting regressor (GELU MLP on hoof width, length, heel-bulb height and "
    "gait features, Huber loss, NAdam with two param groups). The input group's lr is typed "
    "3e-9 for 3e-3: fc1 barely moves (relative change under 1e-5) while fc2 and the head train "
    "at 3e-3; the loss falls only as far as the random first layer allows.",
)
def h509_hoof_boot_group_lr_typo(ctx):
    gen = seeded(5097)
    model = _Net(10, hidden=48, act=nn.GELU)
    opt = torch.optim.NAdam(
        [
            {"params": model.fc1.parameters(), "lr": 3e-9},  # typed for 3e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 5097),
        160,
        lambda o, t: F.huber_loss(o, t, delta=0.5),
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(model.fc1.weight, w1) < 1e-5)
    ctx.check("fc2 moves over 5% of its norm", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("the loss is finite", _finite(losses))


# -- 8. data outlier: one shard in newtons ------------------------------------------------------------

KABADDI_ONSET = 110


@scenario(
    family="kabaddi_raid_tackle_force_asgd_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=KABADDI_ONSET,
    note="Kabaddi raid tackle-force regressor (ReLU MLP on raider speed, ankle-hold angle, "
    "chain width and defender mass features, MSE, ASGD at 0.02, clipping at norm 10). One "
    "shard at step 110 carries its force targets in newtons instead of kilonewtons (1000x): "
    "the loss jumps by orders of magnitude for that batch and the gradient spikes; clipping "
    "holds the update and the run recovers.",
)
def h509_kabaddi_newton_shard(ctx):
    gen = seeded(5098)
    model = _Net(10, hidden=48)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02, t0=50)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == KABADDI_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5098), 180, F.mse_loss, alter=alter, clip=10.0
    )
    before = _median(losses[KABADDI_ONSET - 20 : KABADDI_ONSET])
    ctx.check("loss at onset over 1000x the median", losses[KABADDI_ONSET] > 1000 * before)
    ctx.check(
        "gradient at onset over 20x the median",
        norms[KABADDI_ONSET] > 20 * _median(norms[KABADDI_ONSET - 20 : KABADDI_ONSET]),
    )
    ctx.check("the run recovers (last 10 under 3x the pre-onset)", _mean(losses[-10:]) < 3 * before)


# -- 9. softmax collapse: temperature read in percent -------------------------------------------------


class _HarmonicClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="guqin_harmonic_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Guqin harmonic-position classifier (GELU MLP on hui position, string, pluck "
    "brightness and decay features, 8 harmonic nodes, cross-entropy, Adamax 2e-3). The "
    "temperature is read from a config kept in percent, 1 -> 0.01, and the logits are divided "
    "by 0.01: the float32 softmax rounds the target probability of most rows to exactly 1.0.",
)
def h509_guqin_temperature_percent(ctx):
    gen = seeded(5099)
    model = _HarmonicClassifier(12, 8, temperature=0.01)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 5099, spread=0.8),
        150,
        F.cross_entropy,
        classifier=True,
    )
    px, py = next(_grades(torch.Generator().manual_seed(3), 512, 12, 8, 5099, spread=0.8))
    with torch.no_grad():
        raw = model.raw(px)
    ctx.check(
        "over half the rows' target probability is exactly 1.0",
        collapsed_fraction(raw / 0.01, py) > 0.5,
    )
    ctx.check("at temperature 1 under 5% would be", collapsed_fraction(raw, py) < 0.05)
    ctx.check("the loss is finite", _finite(losses))


# -- 10. loss divergence: a drifting benchmark --------------------------------------------------------


@scenario(
    family="fen_drain_subsidence_drift_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Fen-drain subsidence regressor (SiLU MLP on peat depth, water-table level, drain "
    "spacing and season features, MSE, RAdam 2e-4). The loader's benchmark height is re-read "
    "from a log that advances every step, so each batch's targets carry an offset that grows "
    "by 0.006 per step: once the fit is made the loss climbs slowly and keeps climbing, with "
    "no jump and no NaN.",
)
def h509_fen_drain_drifting_benchmark(ctx):
    gen = seeded(5100)
    model = _Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-4)

    def alter(step, x, y):
        return x, y + 0.006 * step

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5100), 260, F.mse_loss, alter=alter)
    best = min(losses)
    smooth = [_mean(losses[i : i + 5]) for i in range(0, len(losses) - 5, 5)]
    jumps = max(b / a for a, b in zip(smooth[:-1], smooth[1:], strict=True))
    ctx.check("the loss climbs over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check(
        "still climbing in the last third", _mean(losses[-20:]) > 1.3 * _mean(losses[-80:-60])
    )
    ctx.check("no jump (5-step means rise under 2x)", jumps < 2.0)
    ctx.check("finite", _finite(losses))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="icefall_serac_collapse_imbalanced_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Icefall serac-collapse classifier (ReLU MLP on ice velocity, crevasse opening, "
    "temperature and seismic-tremor features, 2 classes imbalanced 95 to 5, cross-entropy, "
    "Adam 3e-3 with linear warm-up then cosine, batch 16). The loss is low early (the majority "
    "class alone gives it), and batches holding a rare collapse give much larger gradients "
    "than the others; an ordinary run.",
)
def h509_icefall_imbalanced_control(ctx):
    gen = seeded(5101)
    model = _Net(10, hidden=32, out=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180),
        ],
        milestones=[20],
    )
    g = torch.Generator().manual_seed(5101)
    w = torch.randn(10, generator=g)
    minority = []

    def batches():
        while True:
            y = (torch.rand(16, generator=gen) < 0.05).long()
            x = torch.randn(16, 10, generator=gen) + 2.5 * y[:, None] * w / w.norm()
            minority.append(bool(y.any()))
            yield x, y

    losses, norms = _train(
        ctx, model, opt, batches(), 200, F.cross_entropy, classifier=True, sched=sched
    )
    rare = [n for n, m in zip(norms[20:], minority[20:], strict=True) if m]
    common = [n for n, m in zip(norms[20:], minority[20:], strict=True) if not m]
    ctx.check("the loss is low early (steps 20-40 under 0.3)", _mean(losses[20:40]) < 0.3)
    ctx.check("minority batches give over 1.5x the gradient", _median(rare) > 1.5 * _median(common))
    ctx.check("it trained and stayed finite", _fell(losses, k=10, ratio=0.3))


class _StrokeConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2, stride=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.flatten(1))


@scenario(
    family="janggu_drum_stroke_fp16_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Janggu drum-stroke classifier (1-D conv net on 32-sample generated stroke envelopes, "
    "4 strokes, fp16 autocast + GradScaler, AdamW, OneCycleLR, label smoothing 0.1, clipping at "
    "1.0, noisy waveforms); an ordinary run.",
)
def h509_janggu_fp16_control(ctx):
    gen = seeded(5102)
    model = _StrokeConv(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    t = torch.arange(32) / 32
    shapes = torch.stack(
        [
            torch.exp(-8 * t),
            torch.exp(-2 * t) * torch.sin(12 * t),
            torch.exp(-4 * (t - 0.3).abs()),
            t * torch.exp(-5 * t) * 6,
        ]
    )
    losses = []
    for _ in range(steps):
        y = torch.randint(0, 4, (32,), generator=gen)
        x = shapes[y] * (0.7 + 0.6 * torch.rand(32, 1, generator=gen))
        x = x + 0.15 * torch.randn(32, 32, generator=gen)
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
        ctx.step(loss)
        losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    ctx.check("it trained and stayed finite", _fell(losses, ratio=0.5))
    ctx.check("the loss scale stayed usable (over 1)", min(ctx.scales) > 1.0)


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="tonnellerie_stave_toast_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tonnellerie stave-toast autoencoder (tied weights: the decoder is the encoder's "
    "transpose, tanh code of 6 on 16 toasting-profile readings, Huber loss, SGD momentum 0.9, "
    "ReduceLROnPlateau, accumulation 2, clipping at 1.0); an ordinary run.",
)
def h509_tonnellerie_tied_control(ctx):
    gen = seeded(5103)
    g = torch.Generator().manual_seed(5103)
    basis = torch.randn(4, 16, generator=g)
    model = _TiedAutoencoder(16, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def batches():
        while True:
            z = torch.randn(32, 4, generator=gen)
            x = z @ basis / 2 + 0.05 * torch.randn(32, 16, generator=gen)
            yield x, x

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        lambda o, t: F.huber_loss(o, t, delta=0.5),
        accumulate=2,
        clip=1.0,
        after=lambda s, loss: plateau.step(loss),
    )
    ctx.check("it trained and stayed finite", _fell(losses, ratio=0.5))
