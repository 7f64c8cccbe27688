"""Held-out set 448 (``h448_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a lava-tube cooling regressor that takes the log of heat-flux readings with no floor (a
dead sensor reads 0 at step 80), a horseshoe-nail pull-out Huber regressor fed one shard in newtons
for kilonewtons, a spinning-wheel ply-twist two-group regressor whose head group's lr is typed
1e-9 for 1e-3, a zither bridge-buzz classifier whose temperature is typed 0.001 for 1.0, a
cave-ice stalagmite 10-layer tanh MLP initialised with gain 4.5 for 5/3, a rope-splice strength
regressor whose hand-written decoupled weight decay multiplies by (1 + lr * wd), a kiln-wash flake
regressor whose fc2 biases are filled with a sigmoid gate's -3.0 (its ReLUs never fire), a
pipe-organ windchest regressor whose warm-up peaks at an lr typed 4.0 for 0.4 (past 2/sharpness),
a mudflat sink-depth fp16 regressor whose pore-pressure channel arrives in pascals at step 80
(fc1 overflows float16) and a fly-cast loop BCE net whose resumed step 120 sums the loss over the
batch instead of averaging it (one gradient burst).

Controls: a solar-halo arc-spectrum variational autoencoder with KL annealing (Adam), a
wood-turning lathe chatter classifier (AdamW under OneCycleLR, label smoothing, clipping, noisy
labels) and a cheese-wheel rind-moisture Gaussian-NLL net (RAdam under ReduceLROnPlateau,
accumulation over 2, clipping).
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


# -- data and models -------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0, noisy=0.0):
    """Readings scattered around one prototype per class, ``noisy`` of the labels random."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        flip = torch.rand(batch, generator=gen) < noisy
        yield x, torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 1]) - 0.1 > 0.0).float()
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


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, act=nn.Tanh):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.act = act()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x).squeeze(-1)


def _rel_moves(model, before):
    return {n: _rel_change(before[n], p) for n, p in model.named_parameters() if n in before}


def _weight_norm(model):
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


class _LogFlux(nn.Module):
    """Log of the first ``k`` channels (heat-flux readings), the rest passed through."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class _LavaTube(nn.Module):
    def __init__(self, d_in=8, k=4, hidden=48):
        super().__init__()
        self.logflux = _LogFlux(k)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.fc2(self.act(self.fc1(self.logflux(x)))))
        return self.head(h).squeeze(-1)


def _lava(gen, batch, seed, k=4, d_in=8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        flux = 0.2 + 3.0 * torch.rand(batch, k, generator=gen)
        rest = torch.randn(batch, d_in - k, generator=gen)
        feats = torch.cat([torch.log(flux), rest], 1)
        yield (
            torch.cat([flux, rest], 1),
            torch.tanh(feats @ w) + 0.03 * torch.randn(batch, generator=gen),
        )


class _Temperature(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def logits(self, x):
        return self.head(self.act(self.fc1(x)))

    def forward(self, x):
        return self.logits(x) / self.temperature


class _HaloVAE(nn.Module):
    """A variational autoencoder: Gaussian encoder, reparameterised latent, MLP decoder."""

    def __init__(self, d_in=24, hidden=48, latent=4):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, d_in)

    def forward(self, x):
        h = self.act(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h).clamp(-8, 8)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec2(self.act(self.dec1(z))), mu, logvar


def _halo_spectra(gen, batch, seed, d_in=24, factors=3):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(factors, d_in, generator=g)
    while True:
        z = torch.randn(batch, factors, generator=gen)
        yield torch.tanh(z @ basis) + 0.05 * torch.randn(batch, d_in, generator=gen)


class _GaussNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(self.act(self.fc2(self.act(self.fc1(x)))))
        return torch.stack([out[:, 0], out[:, 1].clamp(-6, 4)], 1)


def _gauss_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1]
    return 0.5 * (logvar + (y - mean) ** 2 / logvar.exp()).mean()


def _rind(gen, batch, seed, d_in=6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        sd = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 0])
        yield x, torch.sin(x @ w * 2) + sd * torch.randn(batch, generator=gen)


def _sharpness(model, loss_fn, x, y, iters=20):
    """The top Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


LAVA_ONSET = 80


@scenario(
    family="lava_tube_cooling_log_flux_gelu_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logflux",),
    diverges=LAVA_ONSET,
    heldout=True,
    onset=LAVA_ONSET,
    note="Lava-tube cooling-rate regressor (GELU MLP, MSE, Adam). Its first layer takes the log "
    "of four wall heat-flux readings with no floor or clamp; at step 80 one flux plate's logger "
    "has died and reads exactly 0 W/m^2 on a few rows: log 0 = -inf, -inf times mixed-sign "
    "weights gives inf - inf = NaN in fc1 and the loss is NaN at step 80.",
)
def h448_lava_tube_log_zero(ctx) -> None:
    gen = seeded(4481)
    model = _LavaTube()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == LAVA_ONSET:
            x = x.clone()
            x[:5, 2] = 0.0
            seen["inf"] = bool(torch.isinf(model.logflux(x)).any())
        return x, y

    _loop(ctx, model, opt, _lava(gen, 64, seed=481), 140, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("log of the dead plate is -inf at step 80", seen.get("inf", False))
    ctx.check("the loss is non-finite first at step 80", _first_bad(ls) == LAVA_ONSET)
    ctx.check("trained before", _fell(ls[:LAVA_ONSET]))


NAIL_ONSET = 110


@scenario(
    family="horseshoe_nail_pullout_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=NAIL_ONSET,
    note="Horseshoe-nail pull-out regressor (ReLU MLP on hoof-wall and nail features, Huber "
    "loss, SGD momentum 0.9, clipping at 1). One farrier's shard, loaded at step 110, logs its "
    "force features in newtons instead of kilonewtons (x1000): one batch with a huge loss and "
    "gradient; clipping bounds the update and the run recovers.",
)
def h448_horseshoe_nail_newtons(ctx) -> None:
    gen = seeded(4482)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def alter(step, x, y):
        if step == NAIL_ONSET:
            x = x.clone()
            x[:, :4] = 1000.0 * x[:, :4]
        return x, y

    def huber(out, y):
        return F.huber_loss(out, y, delta=1.0)

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=482), 220, huber, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[90:NAIL_ONSET]), _median(gs[90:NAIL_ONSET])
    ctx.check("loss at 110 over 50x the median of 90..109", ls[NAIL_ONSET] > 50 * pre_l)
    ctx.check("gradient at 110 over 20x the median of 90..109", gs[NAIL_ONSET] > 20 * pre_g)
    ctx.check("recovers", _mean(ls[-20:]) < 2 * _mean(ls[90:NAIL_ONSET]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="spinning_wheel_ply_twist_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Spinning-wheel ply-twist regressor (tanh MLP on whorl ratio, treadle cadence and "
    "fibre features, MSE, Adagrad with two param groups). The head group's lr is typed 1e-9 "
    "for 1e-3: the head receives ordinary gradients but its weights barely move; the trunk "
    "trains at 1e-2.",
)
def h448_spinning_wheel_head_lr(ctx) -> None:
    gen = seeded(4483)
    model = _Net(9, 48, 1, act=nn.Tanh)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-2}, {"params": model.head.parameters(), "lr": 1e-9}]
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 9, seed=483), 200, F.mse_loss)
    moves = _rel_moves(model, before)
    ctx.check("head.weight moves under 1e-5 of its norm", moves["head.weight"] < 1e-5)
    ctx.check("fc1.weight moves over 5% of its norm", moves["fc1.weight"] > 0.05)
    ctx.check("finite", _finite(ctx.losses))


ZITHER_T = 0.001


@scenario(
    family="zither_bridge_buzz_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Zither bridge-buzz classifier (ReLU MLP on string-spectrum features, 6 buzz kinds, "
    "cross-entropy, RMSprop). The softmax temperature is typed 0.001 for 1.0: the logits are "
    "divided by 0.001 and most rows' float32 softmax rounds the target's probability to "
    "exactly 1.0 (the rest to 0), so those rows give no gradient.",
)
def h448_zither_temperature_typo(ctx) -> None:
    gen = seeded(4484)
    model = _Temperature(12, 6, ZITHER_T)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 12, 6, seed=484, spread=1.2)
    fracs = []

    def after(step):
        if step >= 170:
            x, y = next(probe)
            with torch.no_grad():
                fracs.append(
                    (collapsed_fraction(model(x), y), collapsed_fraction(model.logits(x), y))
                )

    probe = _grades(torch.Generator().manual_seed(9484), 64, 12, 6, seed=484, spread=1.2)
    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    bad = _mean([a for a, _ in fracs])
    good = _mean([b for _, b in fracs])
    ctx.check("over half the rows' target probability exactly 1.0 (last 30 steps)", bad > 0.5)
    ctx.check("under 5% at temperature 1.0 on the same logits", good < 0.05)
    ctx.check("finite", _finite(ctx.losses))


CAVE_GAIN = 4.5


@scenario(
    family="cave_ice_stalagmite_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Cave-ice stalagmite growth regressor (10-layer tanh MLP on air-draught and drip "
    "features, MSE, SGD Nesterov, clipping at 1). The init helper is called with gain 4.5 "
    "(typed for 5/3, tanh's calculate_gain): the stack starts in tanh's chaotic regime and the "
    "gradient grows layer by layer back towards the input.",
)
def h448_cave_ice_init_gain(ctx) -> None:
    def build(gain):
        torch.manual_seed(4485)
        m = _Deep(12, 64, 10)
        for layer in m.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        return m

    def ratio(m, x, y):
        m.zero_grad()
        F.mse_loss(m(x), y).backward()
        first = float(m.layers[0].weight.grad.norm())
        last = float(m.layers[-1].weight.grad.norm())
        m.zero_grad()
        return first / last

    gen = seeded(4485)
    data = _readings(gen, 64, 12, seed=485)
    x0, y0 = next(data)
    good = ratio(build(5.0 / 3.0), x0, y0)
    model = build(CAVE_GAIN)
    bad = ratio(model, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    _loop(ctx, model, opt, data, 120, F.mse_loss, clip=1.0)
    after = ratio(model, x0, y0)
    ctx.check("layers.0's gradient over 20x the last hidden layer's at gain 4.5", bad > 20)
    ctx.check("still over 10x after training", after > 10)
    ctx.check("under 5x at gain 5/3 on the same batch", good < 5)
    ctx.check("finite", _finite(ctx.losses))


ROPE_WD = 5.0


@scenario(
    family="rope_splice_strength_decay_sign_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Rope-splice break-strength regressor (SiLU MLP on tuck count, lay and fibre features, "
    "MSE, Adamax lr 2e-3). A hand-written decoupled weight decay multiplies the weights by "
    "(1 + lr * wd) instead of (1 - lr * wd): the loss falls at first, then the weights grow 1% "
    "a step and the loss climbs slowly; no spike, no NaN, no single bad step.",
)
def h448_rope_splice_decay_sign(ctx) -> None:
    gen = seeded(4486)
    model = _Net(8, 48, 1, act=nn.SiLU)
    lr = 2e-3
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    start = _weight_norm(model)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * ROPE_WD)

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=486), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check("the lowest loss comes in the first half", ls.index(low) < 150)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))
    ctx.check("weight norm over 2x its start", _weight_norm(model) > 2 * start)


KILN_BIAS = -3.0


@scenario(
    family="kiln_wash_flake_dead_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Kiln-wash flaking regressor (ReLU MLP on firing-curve and wash-recipe features, MSE, "
    "NAdam). The init helper fills every bias with the config's bias_init -3.0, meant for a "
    "sigmoid gate: fc2's pre-activations start far below 0, nearly all act2 units never fire, "
    "get no gradient and never come back; the loss stays near where it started.",
)
def h448_kiln_wash_dead_units(ctx) -> None:
    def build(bias):
        torch.manual_seed(4487)
        m = _Net(10, 48, 1)
        if bias is not None:
            nn.init.constant_(m.fc2.bias, bias)
        return m

    def run(model, attach):
        gen = seeded(4487)
        opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
        return _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=487),
            200,
            F.mse_loss,
            attach=attach,
        )

    ref = build(None)
    ref_losses = run(ref, False)
    model = build(KILN_BIAS)
    run(model, True)
    x, _ = next(_readings(torch.Generator().manual_seed(9487), 256, 10, seed=487))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
        ref_dead = dead_fraction(ref.features(x))
    ls = ctx.losses
    ctx.check("over 80% of act2's units dead at the end", dead > 0.8)
    ctx.check("under 20% dead in the default-init run", ref_dead < 0.2)
    ctx.check(
        "loss over the last 20 steps over 1.3x the reference's",
        _mean(ls[-20:]) > 1.3 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


ORGAN_PEAK = 4.0
ORGAN_WARM = 500


@scenario(
    family="pipe_organ_windchest_pressure_sgd_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Pipe-organ windchest-pressure regressor (tanh MLP on bellows, stop and key features, "
    "MSE, plain SGD). The linear warm-up (500 steps) has its peak lr typed 4.0 for 0.4: the "
    "run trains while the lr is small, then the lr ramps past 2/sharpness, the loss starts to "
    "oscillate and blows up near step 100; a run at a constant 0.4 trains.",
)
def h448_pipe_organ_peak_lr(ctx) -> None:
    def run(peak, attach, warm=ORGAN_WARM):
        gen = seeded(4488)
        model = _Net(8, 48, 1, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        probe = next(_readings(torch.Generator().manual_seed(9488), 256, 8, seed=488))
        products = []

        def before(step):
            lr = peak * min(1.0, (step + 1) / warm)
            for g in opt.param_groups:
                g["lr"] = lr
            if attach and step % 2 == 0:
                products.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

        data = _readings(gen, 64, 8, seed=488)
        losses = _loop(
            ctx if attach else None, model, opt, data, 150, F.mse_loss, before=before, attach=attach
        )
        return losses, products

    ref, _ = run(0.4, False, warm=1)
    ls, products = run(ORGAN_PEAK, True)
    finite = [v for v in ls if math.isfinite(v)]
    low = min(finite)
    at_low = ls.index(low)
    blow = next(
        (i for i in range(at_low, len(ls)) if not math.isfinite(ls[i]) or ls[i] > 10 * low), len(ls)
    )
    ctx.check("trained first (loss fell over the first 10 steps)", low < 0.5 * _mean(ls[:3]))
    ctx.check(
        "lr * sharpness over 2 before the loss first climbs past 10x its lowest",
        max((v for k, v in products if k < blow), default=0.0) > 2,
    )
    ctx.check(
        "blows up: non-finite or over 1000x its lowest",
        _first_bad(ls) is not None or max(ls) > 1000 * low,
    )
    ctx.check("a run at a constant lr 0.4 trains and stays finite", _fell(ref) and _finite(ref))


MUD_ONSET = 80


@scenario(
    family="mudflat_sink_depth_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=MUD_ONSET,
    heldout=True,
    onset=MUD_ONSET,
    note="Mudflat sink-depth regressor (ReLU MLP on grain size, water content and pore "
    "pressure, MSE, AdamW, fp16 autocast with a GradScaler). From step 80 a new piezometer "
    "logs pore pressure in pascals instead of the kilopascals the standardisation expects "
    "(values near 1e5): autocast casts fc1's input to float16, past its 65504 it is inf, fc1's "
    "output is inf and the loss is non-finite at step 80; the same batch is finite in float32.",
)
def h448_mudflat_pascals_fp16(ctx) -> None:
    gen = seeded(4489)
    model = _Net(8, 48, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = {}

    def alter(step, x, y):
        if step >= MUD_ONSET:
            x = x.clone()
            x[:, 3] = 1.0e5 + 2.0e3 * x[:, 3]
            if step == MUD_ONSET:
                with torch.no_grad():
                    seen["f32_in"] = float(x.abs().max())
                    seen["f32_loss"] = float(F.mse_loss(model(x), y))
                    with torch.autocast("cpu", dtype=torch.float16):
                        seen["f16_inf"] = bool(torch.isinf(model.fc1(x)).any())
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=489),
        140,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("fc1's input over float16's 65504 at step 80", seen.get("f32_in", 0.0) > 65504)
    ctx.check("fc1's output has inf under autocast at step 80", seen.get("f16_inf", False))
    ctx.check(
        "the same batch's loss is finite in float32", math.isfinite(seen.get("f32_loss", math.nan))
    )
    ctx.check("the loss is non-finite first at step 80", _first_bad(ls) == MUD_ONSET)
    ctx.check("trained before", _fell(ls[:MUD_ONSET]))


TROUT_ONSET = 120


@scenario(
    family="fly_cast_loop_shape_bce_tanh_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TROUT_ONSET,
    note="Fly-casting loop-shape classifier (tanh MLP on rod-tip accelerometer features, "
    "tight loop or tailing loop, BCE with logits, plain SGD, clipping at 1). The resumed job's "
    "first step, 120, builds its loss with reduction='sum' instead of 'mean' (a resume branch "
    "that rebuilds the criterion): one gradient 64x the usual on an ordinary logged loss; the "
    "data are unchanged and the run recovers.",
)
def h448_fly_cast_sum_reduction(ctx) -> None:
    gen = seeded(44810)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def backprop(step, loss):
        return loss * 64 if step == TROUT_ONSET else loss

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, seed=4810),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[100:TROUT_ONSET]), _median(gs[100:TROUT_ONSET])
    ctx.check("gradient at 120 over 30x the median of 100..119", gs[TROUT_ONSET] > 30 * pre_g)
    ctx.check("the logged loss at 120 under 2x the median", ls[TROUT_ONSET] < 2 * pre_l)
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[100:TROUT_ONSET]))
    ctx.check("trained", _fell(ls))


# -- controls --------------------------------------------------------------------------------------


HALO_WARM = 150


@scenario(
    family="solar_halo_arc_spectrum_kl_annealed_vae",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Solar-halo arc-spectrum variational autoencoder (SiLU encoder to a reparameterised "
    "4-d Gaussian latent, MLP decoder, summed-MSE reconstruction plus KL, Adam). The KL weight "
    "ramps linearly from 0 to 1 over 150 steps, so the total loss rises while the weight "
    "rises; the reconstruction keeps improving. Control.",
)
def h448_solar_halo_vae(ctx) -> None:
    gen = seeded(44811)
    model = _HaloVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _halo_spectra(gen, 64, seed=4811)
    recons, kls = [], []
    for step in range(260):
        x = next(data)
        beta = min(1.0, step / HALO_WARM)
        out, mu, logvar = model(x)
        recon = ((out - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        loss = recon + beta * kl
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        recons.append(float(recon.detach()))
        kls.append(float(kl.detach()))
        if not math.isfinite(float(loss)):
            break
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("reconstruction fell over 2x", _mean(recons[-20:]) < 0.5 * _mean(recons[:10]))
    ctx.check("KL positive and finite at the end", 0 < _mean(kls[-20:]) < 1e3)
    ls = ctx.losses
    ctx.check(
        "the total loss rose while the KL weight rose",
        _mean(ls[HALO_WARM - 10 : HALO_WARM]) > min(ls[:HALO_WARM]),
    )


@scenario(
    family="wood_lathe_chatter_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wood-turning lathe chatter classifier (GELU MLP on spindle-vibration features, 5 "
    "chatter kinds, 10% noisy labels, cross-entropy with label smoothing 0.1, AdamW with two "
    "weight-decay groups under OneCycleLR, clipping at 1). Control.",
)
def h448_wood_lathe_onecycle(ctx) -> None:
    gen = seeded(44812)
    model = _Net(14, 64, 5, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)

    def smooth(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    data = _grades(gen, 64, 14, 5, seed=4812, spread=1.3, noisy=0.1)
    _loop(ctx, model, opt, data, steps, smooth, classifier=True, clip=1.0, sched=sched)
    x, y = next(_grades(torch.Generator().manual_seed(94812), 512, 14, 5, seed=4812, spread=1.3))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 70%", acc > 0.7)


@scenario(
    family="cheese_wheel_rind_moisture_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cheese-wheel rind-moisture regressor (SiLU MLP emitting a mean and a clamped "
    "log-variance, Gaussian NLL, heteroscedastic cave-humidity noise, RAdam under "
    "ReduceLROnPlateau on a held-out batch, accumulation over 2, clipping at 1). Control.",
)
def h448_cheese_rind_gaussian_nll(ctx) -> None:
    gen = seeded(44813)
    model = _GaussNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    xv, yv = next(_rind(torch.Generator().manual_seed(94813), 256, seed=4813))

    def plateau():
        with torch.no_grad():
            return float(_gauss_nll(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        _rind(gen, 32, seed=4813),
        200,
        _gauss_nll,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("NLL fell under 0.7x its start", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("held-out NLL under 0.2", plateau() < 0.2)
