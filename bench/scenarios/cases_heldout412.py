"""Held-out set 412 (``h412_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a curling-stone glide-distance tanh regressor whose warm-up peak lr is typed 3.0 for 0.3
(past 2/sharpness), a sheepdog-trial shed-time ReLU regressor on RMSprop with lr typed 1e-2 for
1e-4 (ReLUs die), a cormorant-fishing dive-depth ReLU Elman RNN whose identity recurrent init is
scaled 1.25 for 1.0 (gradients grow through time), a sailmaker-catalogue Deep & Cross click-through
net fed one shard with dwell time in milliseconds (one corrupted batch), a hailstone-count Poisson
net whose rate lost its softplus for a ReLU (log 0), a cowbell-foundry pour-temperature net resumed
under fp16 autocast with a summed energy feature (fp16 overflow), a kendo-strike classifier whose
distillation temperature is applied as a multiplier (softmax saturates), a cooperage stave-bend
regressor whose epoch-tail batch weight is inverted (one gradient burst), a hardanger-fiddle
drone-string classifier whose trunk param group lr is typed 1e-9 for 1e-2 (a frozen layer) and a
mudflat creek silt regressor whose hand-written decoupled weight decay has its sign flipped (a slow
climb).

Controls: a morris-dance figure classifier over categorical embeddings with embedding dropout,
gradient clipping and Adagrad; a canoe-polo pass-type Conv1d classifier (SGD Nesterov under
OneCycleLR, label smoothing, clipping) and a dry-stone-wall batter Huber regressor (fp16 autocast
with a GradScaler, NAdam with a no-decay group, accumulation, ReduceLROnPlateau).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=None,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss, x)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step, ``amp(step)``
    says whether fp16 autocast is on. Stops after a non-finite loss (once ``ctx.step`` saw it)."""
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
            on = bool(amp(step)) if amp is not None else False
            with torch.autocast("cpu", dtype=torch.float16, enabled=on):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss, x) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _MLP(nn.Module):
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="curling_stone_glide_distance_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Curling-stone glide-distance tanh regressor (ice temperature, pebble, sweep readings) on "
    "plain SGD with a linear warm-up to a peak typed 3.0 for 0.3. Partway through the warm-up lr x "
    "sharpness (power iteration) passes 2 and the loss blows up; at the intended peak it stays "
    "under 2.",
)
def h412_curling_glide_warmup_peak_typo(ctx) -> None:
    gen = seeded(4121)
    model = _MLP(10, 48, 1, act=nn.Tanh)
    peak, warm = 3.0, 150
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    data = _readings(gen, 64, 10, seed=121)
    fixed = next(_readings(torch.Generator().manual_seed(3), 256, 10, seed=121))
    lam = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lam[step] = (lr, _sharpness(model, F.mse_loss, *fixed))

    _loop(ctx, model, opt, data, 200, F.mse_loss, before=before)
    bad = _first_bad(ctx.losses)
    lo = min(ctx.losses[:20])
    blow = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v) or v > 20 * lo), None)
    ctx.check("lr x sharpness under 2 at step 0", lam[0][0] * lam[0][1] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        blow is not None and any(lr * s > 2 for k, (lr, s) in lam.items() if k <= blow),
    )
    ctx.check(
        "intended peak 0.3 x sharpness under 2 before the blow-up",
        blow is not None and all(0.3 * s < 2 for k, (_, s) in lam.items() if k <= blow),
    )
    ctx.check("loss blows up (20x its early minimum or non-finite)", blow is not None)
    print(
        "blow-up step",
        blow,
        "first non-finite",
        bad,
        {k: round(a * b, 2) for k, (a, b) in lam.items()},
    )


@scenario(
    family="sheepdog_shed_time_rmsprop_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial shedding-time ReLU regressor trained with RMSprop (momentum 0.9) at lr "
    "typed 1e-2 for 1e-4. The first big normalised steps push fc2's pre-activations negative for "
    "every input: most of act2's ReLUs die and the loss stalls far above what the net reaches at "
    "1e-4.",
)
def h412_sheepdog_shed_rmsprop_lr_typo(ctx) -> None:
    gen = seeded(4122)
    model = _MLP(12, 64, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    data = _readings(gen, 64, 12, seed=122)
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, seed=122))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(model.act1(model.fc1(probe)))))

    with torch.no_grad():
        start = dead_fraction(model.fc2(model.act1(model.fc1(probe))))
    _loop(ctx, model, opt, data, 200, F.mse_loss, after=after)
    ctx.check("under 20% of act2 dead at init", start < 0.2)
    ctx.check("over 50% of act2 dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("finite", _finite(ctx.losses))
    seeded(4122)
    ref = _MLP(12, 64, 1)
    ref_opt = torch.optim.RMSprop(ref.parameters(), lr=1e-4, momentum=0.9)
    ref_data = _readings(torch.Generator().manual_seed(4122), 64, 12, seed=122)
    ref_losses = []
    for _ in range(200):
        x, y = next(ref_data)
        loss = F.mse_loss(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss.detach()))
    with torch.no_grad():
        ref_dead = dead_fraction(ref.fc2(ref.act1(ref.fc1(probe))))
    ctx.check("under 20% of act2 dead at 1e-4", ref_dead < 0.2)
    ctx.check(
        "loss stalls over 5x the 1e-4 run's", _mean(ctx.losses[-20:]) > 5 * _mean(ref_losses[-20:])
    )
    print("dead at start", start, "end", dead[-1], "ref", ref_dead)


class _DiveRNN(nn.Module):
    """A hand-written ReLU Elman RNN (IRNN-style identity recurrent init) over dive traces."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.5)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1) / x.shape[1]


def _dives(gen, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh((x @ w).mean(1) * 2)
        yield x, y


@scenario(
    family="cormorant_dive_depth_irnn_regressor",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Cormorant-fishing dive-depth regressor, a hand-written ReLU Elman RNN over 40-step dive "
    "traces with the IRNN identity recurrent init scaled 1.25 for 1.0 (a gain typo). Gradients "
    "grow backwards through time: dL/dh at the first step is orders of magnitude above dL/dh at "
    "the last; clipping keeps the run finite but the loss does not settle.",
)
def h412_cormorant_dive_irnn_gain_typo(ctx) -> None:
    gen = seeded(4123)
    model = _DiveRNN(3, 32, gain=1.25)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _dives(gen, 32, 40, seed=123)
    ratios = []

    def inspect(step):
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-12)))

    _loop(ctx, model, opt, data, 150, F.mse_loss, inspect=inspect, clip=1.0)
    ref = _DiveRNN(3, 32, gain=1.0)
    x, y = next(_dives(torch.Generator().manual_seed(7), 32, 40, seed=123))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.states[0].grad.norm() / ref.states[-1].grad.norm().clamp_min(1e-12))
    ctx.check("dL/dh_0 over 100x dL/dh_T at the start", ratios[0] > 100)
    ctx.check("median ratio over 100x through the run", _median(ratios) > 100)
    ctx.check("ratio under 10x at gain 1.0", ref_ratio < 10)
    ctx.check("finite", _finite(ctx.losses))
    print("ratio start", ratios[0], "median", _median(ratios), "ref", ref_ratio)


class _CrossLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)
        nn.init.normal_(self.lin.weight, std=0.01)

    def forward(self, x0, x):
        return x0 * self.lin(x) + x


class _DeepCross(nn.Module):
    """Deep & Cross network: three explicit cross layers beside a deep ReLU MLP, one logit."""

    def __init__(self, d_dense, n_cat, card, emb=4):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(card, emb) for _ in range(n_cat))
        d = d_dense + n_cat * emb
        self.d_dense = d_dense
        self.cross = nn.ModuleList(_CrossLayer(d) for _ in range(3))
        self.deep = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(d + 32, 1)

    def forward(self, x):
        dense, cats = x[:, : self.d_dense], x[:, self.d_dense :].long()
        x0 = torch.cat([dense] + [e(cats[:, i]) for i, e in enumerate(self.emb)], 1)
        xc = x0
        for layer in self.cross:
            xc = layer(x0, xc)
        return self.head(torch.cat([xc, self.deep(x0)], 1)).squeeze(-1)


def _clicks(gen, batch, seed, d_dense=6, n_cat=3, card=20):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_dense, generator=g)
    tab = torch.randn(n_cat, card, generator=g)
    while True:
        dense = torch.randn(batch, d_dense, generator=gen)
        cats = torch.randint(0, card, (batch, n_cat), generator=gen)
        s = dense @ w / 2 + 0.8 * dense[:, 0] * dense[:, 1]
        s = s + sum(tab[i][cats[:, i]] for i in range(n_cat))
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(s)).float()
        yield torch.cat([dense, cats.float()], 1), y


@scenario(
    family="sailmaker_catalogue_click_deep_cross_net",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Click-through model for a sailmaker's online catalogue: a hand-written Deep & Cross "
    "network (explicit cross layers x0 * (W x + b) + x beside a deep ReLU MLP, BCE with logits, "
    "Adam, clipping at 1). At step 120 one shard from a new logging service arrives with the "
    "dwell-time column in milliseconds for seconds (x1000): the cross terms square it, the loss "
    "and the gradient burst on that batch, and the run recovers on clean batches.",
)
def h412_sailmaker_dcn_dwell_ms_shard(ctx) -> None:
    gen = seeded(4124)
    model = _DeepCross(6, 3, 20)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _clicks(gen, 128, seed=124)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        return x, y

    _loop(ctx, model, opt, data, 220, F.binary_cross_entropy_with_logits, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before_l, before_g = _median(ls[90:120]), _median(gs[90:120])
    ctx.check("loss over 30x at the bad shard", ls[120] > 30 * before_l)
    ctx.check("gradient over 30x at the bad shard", gs[120] > 30 * before_g)
    ctx.check(
        "recovers: last 20 steps under 1.3x the pre-shard loss", _mean(ls[-20:]) < 1.3 * before_l
    )
    ctx.check("finite", _finite(ls))
    ctx.check("learned before the shard", _mean(ls[100:120]) < 0.9 * _mean(ls[:10]))
    print("loss", ls[120], before_l, "grad", gs[120], before_g)


class _HailNet(nn.Module):
    """Poisson rate of hailstones per square metre; the rate head lost its softplus for a ReLU."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.SiLU()
        self.rate = nn.Linear(32, 1)
        nn.init.constant_(self.rate.bias, 2.0)

    def forward(self, x):
        return torch.relu(self.rate(self.act1(self.fc1(x)))).squeeze(-1)  # was softplus(.) + 1e-4


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _hail(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(x @ w / math.sqrt(d_in) * 1.5 - 0.5)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="hailstone_pad_count_poisson_relu_rate_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("rate",),
    diverges=40,
    heldout=True,
    note="Hailstone impact-pad count regressor with a hand-written Poisson NLL rate - y log(rate); "
    "the rate head's softplus(.) + 1e-4 was replaced by a ReLU 'for speed'. As quiet storms pull "
    "the rate down a row's rate hits exactly 0 and log(0) makes the loss non-finite.",
)
def h412_hailstone_poisson_relu_log0(ctx) -> None:
    gen = seeded(4125)
    model = _HailNet(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    data = _hail(gen, 64, 8, seed=125)
    _loop(ctx, model, opt, data, 300, _poisson_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check(
        "finite for 10 steps first", bad is not None and bad >= 10 and _finite(ctx.losses[:bad])
    )
    print("first non-finite step", bad)


class _Gram(nn.Module):
    """Cross-channel energy of the framed pour trace: F^T F summed over all samples."""

    def forward(self, frames):
        return frames.transpose(1, 2) @ frames


class _PourNet(nn.Module):
    def __init__(self, channels=4, width=16):
        super().__init__()
        self.frame = nn.Linear(channels, width)
        self.energy = _Gram()
        self.fc = nn.Linear(width * width, 32)
        self.act = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        g = self.energy(self.frame(x)).flatten(1)
        return self.head(self.act(self.fc(torch.log1p(g.abs())))).squeeze(-1)


def _pours(gen, batch, seed, length=256, channels=4):
    """Raw thermocouple traces (tens of units) and the pour temperature, standardised."""
    g = torch.Generator().manual_seed(seed)
    amp = 20 + 20 * torch.rand(channels, generator=g)
    while True:
        level = torch.rand(batch, channels, generator=gen)
        x = (
            amp
            * level[:, None, :]
            * (1 + 0.1 * torch.randn(batch, length, channels, generator=gen))
        )
        yield x, 2 * level.mean(1) - 1


@scenario(
    family="cowbell_foundry_pour_temperature_gram_energy_net",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("energy",),
    diverges=60,
    heldout=True,
    onset=60,
    note="Cowbell-foundry pour-temperature regressor over raw thermocouple traces; its energy "
    "feature is a Gram matrix F^T F summed over 256 samples and log1p-compressed, which is fine "
    "in fp32. The job is resumed at step 60 with precision '16-mixed' (fp16 autocast with a "
    "GradScaler): the Gram matmul now runs in fp16, its sums pass 65504 and overflow to inf, the "
    "scaler skips the step and the loss is inf.",
)
def h412_cowbell_pour_fp16_resume(ctx) -> None:
    gen = seeded(4126)
    model = _PourNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    data = _pours(gen, 32, seed=126)
    fixed = next(_pours(torch.Generator().manual_seed(11), 32, seed=126))[0]
    _loop(ctx, model, opt, data, 150, F.mse_loss, scaler=scaler, amp=lambda s: s >= 60)
    with torch.no_grad():
        g32 = model.energy(model.frame(fixed))
        with torch.autocast("cpu", dtype=torch.float16):
            g16 = model.energy(model.frame(fixed))
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite at the resume step 60", bad == 60)
    ctx.check("finite and falling in fp32 before", _fell(ctx.losses[:60]))
    ctx.check(
        "fp32 energy finite and over 65504",
        bool(torch.isfinite(g32).all()) and float(g32.abs().max()) > 65504,
    )
    ctx.check("fp16 energy overflows to inf", not bool(torch.isfinite(g16).all()))
    ctx.check(
        "scaler cut its scale at step 60", len(ctx.scales) > 60 and ctx.scales[60] < ctx.scales[59]
    )
    print("first bad", bad, "max fp32 energy", float(g32.abs().max()))


class _KendoNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.GELU()
        self.head = nn.Linear(48, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="kendo_strike_target_temperature_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kendo strike-target classifier (men, kote, do, tsuki and two feints from bogu "
    "accelerometer features) whose logit temperature is typed 0.02 for 2.0. Dividing by 0.02 "
    "multiplies the logits by 50: the float32 softmax rounds most rows' target probability to "
    "exactly 1.0 and those rows stop giving gradient.",
)
def h412_kendo_strike_temperature_typo(ctx) -> None:
    gen = seeded(4127)
    model = _KendoNet(10, 6, temperature=0.02)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    data = _grades(gen, 64, 10, 6, seed=127, spread=0.5)
    probe_x, probe_y = next(
        _grades(torch.Generator().manual_seed(13), 256, 10, 6, seed=127, spread=0.5)
    )
    frac, ref = [], []

    def after(step):
        with torch.no_grad():
            raw = model.raw(probe_x)
            frac.append(collapsed_fraction(raw / 0.02, probe_y))
            ref.append(collapsed_fraction(raw / 2.0, probe_y))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("under 20% collapsed at step 0", frac[0] < 0.2)
    ctx.check("over half the rows collapsed over the last 30 steps", min(frac[-30:]) > 0.5)
    ctx.check("under 5% at temperature 2.0 on the same logits", max(ref) < 0.05)
    ctx.check("finite", _finite(ctx.losses))
    print("collapsed start", frac[0], "end", frac[-1], "ref", max(ref))


@scenario(
    family="cooperage_stave_bend_radius_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Cooperage stave-bend radius SiLU regressor (wood moisture, steam time, stave width) "
    "trained with SGD momentum and clipping at 2. The trainer sums the per-row loss and divides "
    "by the row count; at the epoch-boundary step 100 the count comes from the last shard file "
    "(1 row) instead of the 64-row batch, so one clean batch backpropagates 64x its gradient "
    "while the logged mean loss is ordinary. Clipping bounds the step and the run recovers.",
)
def h412_cooperage_stave_row_count_bug(ctx) -> None:
    gen = seeded(4128)
    model = _MLP(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _readings(gen, 64, 8, seed=128)

    def backprop(step, loss, x):
        rows = 1 if step == 100 else x.shape[0]
        return loss * x.shape[0] / rows

    _loop(ctx, model, opt, data, 180, F.mse_loss, backprop=backprop, clip=2.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x the median before at step 100", gs[100] > 30 * _median(gs[70:100]))
    ctx.check(
        "logged loss at step 100 under 2x the median before", ls[100] < 2 * _median(ls[70:100])
    )
    ctx.check(
        "recovers: last 20 under 1.5x the pre-burst loss", _mean(ls[-20:]) < 1.5 * _mean(ls[80:100])
    )
    ctx.check("trained before the burst", _fell(ls[:100]))
    print("grad", gs[100], _median(gs[70:100]))


@scenario(
    family="hardanger_fiddle_drone_string_two_group_classifier",
    optimizer="ASGD",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Hardanger-fiddle sympathetic-string tuning classifier with two param groups (trunk fc1, "
    "the rest) on ASGD; the trunk group's lr is typed 1e-9 for 1e-2. fc1 receives ordinary "
    "gradients but its updates are ~1e-9 of its weights: a frozen layer, while fc2 and the head "
    "train and the loss falls slowly.",
)
def h412_hardanger_trunk_lr_typo(ctx) -> None:
    gen = seeded(4129)
    model = _MLP(12, 48, 8)
    opt = torch.optim.ASGD(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ],
        lr=1e-2,
    )
    data = _grades(gen, 64, 12, 8, seed=129)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []

    def inspect(step):
        g1.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, inspect=inspect)
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", moved1 < 1e-5)
    ctx.check("fc1 receives gradients", min(g1) > 1e-4)
    ctx.check("head moves over 5%", movedh > 0.05)
    ctx.check("finite", _finite(ctx.losses))
    print("moved fc1", moved1, "head", movedh, "min grad", min(g1))


@scenario(
    family="mudflat_creek_silt_flux_decay_sign_regressor",
    optimizer="Adadelta",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Mudflat creek silt-flux tanh regressor on Adadelta with a hand-written decoupled weight "
    "decay applied after each step as p *= (1 + wd) where (1 - wd) was meant. The weights grow "
    "geometrically and the loss, after an initial fall, climbs slowly through the run with no "
    "event to point at.",
)
def h412_mudflat_silt_decay_sign(ctx) -> None:
    gen = seeded(4130)
    model = _MLP(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    data = _readings(gen, 64, 10, seed=130)
    wd = 6e-3
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + wd)  # was 1 - wd
            norms.append(float(torch.cat([p.reshape(-1) for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, data, 300, F.mse_loss, after=after)
    ls = ctx.losses
    lo = min(range(len(ls)), key=lambda i: _mean(ls[i : i + 10]) if i + 10 <= len(ls) else 1e9)
    ctx.check("loss fell first", _mean(ls[lo : lo + 10]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "last 20 over 2x the best 10-step mean", _mean(ls[-20:]) > 2 * _mean(ls[lo : lo + 10])
    )
    ctx.check("weight norm over 3x its start", norms[-1] > 3 * norms[0])
    ctx.check("finite", _finite(ls))
    print(
        "best at", lo, _mean(ls[lo : lo + 10]), "end", _mean(ls[-20:]), "norm", norms[0], norms[-1]
    )


# -- healthy controls ------------------------------------------------------------------------------


class _MorrisNet(nn.Module):
    """Categorical embeddings (side, tune, dancer position, bar) with embedding dropout."""

    def __init__(self, cards, classes, emb=8, p=0.2):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(c, emb) for c in cards)
        self.emb_drop = nn.Dropout(p)
        self.fc1 = nn.Linear(len(cards) * emb, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        e = torch.cat([m(x[:, i]) for i, m in enumerate(self.emb)], 1)
        return self.head(self.act1(self.fc1(self.emb_drop(e))))


def _figures(gen, batch, cards, classes, seed):
    g = torch.Generator().manual_seed(seed)
    tabs = [torch.randn(c, classes, generator=g) for c in cards]
    while True:
        x = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in cards], 1)
        s = sum(t[x[:, i]] for i, t in enumerate(tabs)) * 1.5
        yield x, torch.distributions.Categorical(logits=s).sample()


@scenario(
    family="morris_dance_figure_embedding_dropout_classifier",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Morris-dance figure classifier over categorical embeddings (side, tune, dancer "
    "position, bar) with embedding dropout 0.2, gradient clipping at 1 and Adagrad at 5e-2; "
    "labels sampled from the true softmax, so batches are noisy. Control.",
)
def h412_morris_figure_embedding_dropout(ctx) -> None:
    gen = seeded(4131)
    cards = (12, 30, 6, 16)
    model = _MorrisNet(cards, 7)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    data = _figures(gen, 64, cards, 7, seed=131)
    _loop(ctx, model, opt, data, 250, F.cross_entropy, classifier=True, clip=1.0)
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.85))
    ctx.check("finite", _finite(ctx.losses))


class _PassConv(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def _strokes(gen, batch, classes, seed, length=48, channels=3):
    """Paddle-accelerometer traces: each pass type a pulse train at its own period, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.relu(torch.sin(freqs[y][:, :, None] * t + phase)) ** 3
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


@scenario(
    family="canoe_polo_pass_type_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Canoe-polo pass-type classifier (ReLU Conv1d over paddle accelerometer traces) on SGD "
    "Nesterov with weight decay under OneCycleLR (peak 0.1), label smoothing 0.1 and clipping at "
    "1. Control.",
)
def h412_canoe_polo_pass_onecycle(ctx) -> None:
    gen = seeded(4132)
    model = _PassConv(3, 5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    data = _strokes(gen, 64, 5, seed=132)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, data, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="dry_stone_wall_batter_fp16_huber_regressor",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Dry-stone wall batter-angle SiLU Huber regressor under fp16 autocast with a GradScaler, "
    "NAdam with a no-decay group for biases, accumulation over 2 micro-batches, ReduceLROnPlateau "
    "on a held-out batch and clipping at 1. Control.",
)
def h412_dry_stone_batter_fp16(ctx) -> None:
    gen = seeded(4133)
    model = _MLP(10, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.NAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 32, 10, seed=133, noise=0.1)
    hx, hy = next(_readings(torch.Generator().manual_seed(17), 256, 10, seed=133, noise=0.1))

    def held():
        with torch.no_grad():
            return float(F.huber_loss(model(hx), hy, delta=0.5))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
        plateau=held,
        scaler=scaler,
        amp=lambda s: True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "scaler skipped under 5% of steps",
        sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False)) < 10,
    )
