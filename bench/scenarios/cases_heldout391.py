"""Held-out set 391 (``h391_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sphagnum bog-pool pattern VAE whose Bernoulli decoder's log-likelihood is written by
hand without clamping the logs (0 * log 0 = NaN once a probability rounds to 1.0), a bark-tannery
liquor-strength regressor whose hand-written decoupled weight decay has its sign flipped (a slow
climb), a kendama spike-catch classifier whose softmax temperature is typed 1e-3 for 1e0, a
nyckelharpa key-action Elman RNN whose recurrent weight is initialised with std 1 instead of
1/sqrt(hidden) (gradients grow through time), a dry-stone-wall batter classifier whose encoder
group's lr is typed 2e-9 for 2e-3, a lobster-creel soak BCE net fed one shard in millimetres at
step 120, a shinty caman-strike Huber regressor whose per-step loss-weight table has row 150 typed
80 for 0.80, a sand-yacht land-speed regressor whose ExponentialLR gamma is typed 1.03 for 0.97, a
thatcher reed-bundle ReLU regressor whose Adam lr is typed 3e-1 for 3e-4 (ReLUs die) and a
sepak-takraw spike classifier whose hand-written label smoothing uses the raw logits instead of
the log-probabilities (the logits drift without bound).

Controls: a Hardanger-fiddle drone VAE (Gaussian decoder, KL annealing, log-variance clamped,
Adam), a bodhran tipper-roll Conv1d classifier (SGD momentum under OneCycleLR, label smoothing,
clipping) and a scything windrow SiLU Huber regressor (fp16 autocast with a GradScaler, AdamW with
a no-decay bias group, accumulation over 2, ReduceLROnPlateau, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
    watch=None,
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count), ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a
    non-finite loss (once ``ctx.step`` has seen it)."""
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
            if watch is not None:
                watch(step, out, x, y)
            out = out.float() if isinstance(out, torch.Tensor) else out
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
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


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about ``scale``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _binary(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden linear rule (``flip``: share of labels flipped)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _sequences(gen, batch, seed, length=30, d_in=3):
    """Input sequences and a target: a decayed sum of the first channel."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    decay = 0.9 ** torch.arange(length - 1, -1, -1, dtype=torch.float32)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        y = torch.tanh(0.3 * ((x @ w) * decay).sum(1))
        yield x, y


def _bog_patterns(gen, batch, seed, d=32, kinds=6):
    """Binary bog-pool patterns: one of ``kinds`` prototypes, each pixel flipped with 3%
    chance except the prototype's fixed rim (the first 8 pixels, always as drawn)."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(kinds, d, generator=g) < 0.5).float()
    protos[:, :8] = 1.0
    while True:
        k = torch.randint(0, kinds, (batch,), generator=gen)
        flips = torch.rand(batch, d, generator=gen) < 0.03
        flips[:, :8] = False
        x = torch.where(flips, 1 - protos[k], protos[k])
        yield x, x


def _drone_spectra(gen, batch, seed, d=24, latent=3):
    """Continuous drone spectra on a low-dimensional nonlinear manifold, plus noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(latent, 32, generator=g)
    b = torch.randn(32, d, generator=g) / math.sqrt(32)
    while True:
        z = torch.randn(batch, latent, generator=gen)
        x = torch.tanh(z @ a) @ b + 0.05 * torch.randn(batch, d, generator=gen)
        yield x, x


# -- models -----------------------------------------------------------------------------------------


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


class VAE(nn.Module):
    """enc -> (mu, logvar) -> reparameterised z -> dec -> output; ``bernoulli``: the decoder ends
    in a Sigmoid module ``dec_prob``. Returns (out, mu, logvar)."""

    def __init__(self, d, hidden=64, latent=4, bernoulli=True, clamp=None):
        super().__init__()
        self.enc = nn.Linear(d, hidden)
        self.enc_act = nn.SiLU()
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Linear(latent, hidden)
        self.dec_act = nn.SiLU()
        self.dec_out = nn.Linear(hidden, d)
        self.dec_prob = nn.Sigmoid() if bernoulli else nn.Identity()
        self.clamp = clamp

    def forward(self, x):
        h = self.enc_act(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        if self.clamp is not None:
            logvar = logvar.clamp(*self.clamp)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        out = self.dec_prob(self.dec_out(self.dec_act(self.dec(z))))
        return out, mu, logvar


def _kl(mu, logvar):
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()


class Elman(nn.Module):
    """h_t = tanh(inp(x_t) + rec(h_{t-1})); head reads the last state. ``states`` keeps the
    hidden states (with retained gradients) when ``keep`` is on."""

    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.keep = False
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if self.keep and h.requires_grad:
                h.retain_grad()
                self.states.append(h)
        return self.head(h).squeeze(-1)


class Conv1dNet(nn.Module):
    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _accuracy(model, batches, n=4) -> float:
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(n):
            x, y = next(batches)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return hits / total


def _top_eig(model, loss_fn, x, y, iters=20) -> float:
    """The top Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="sphagnum_bog_pool_pattern_vae",
    optimizer="Adam",
    cause="nonfinite",
    where=("dec_prob",),
    diverges=80,
    heldout=True,
    note="A VAE (SiLU encoder, reparameterised Gaussian latent, KL term, Bernoulli decoder ending "
    "in a Sigmoid module) on generated binary bog-pool patterns whose rim pixels are always 1. The "
    "Bernoulli log-likelihood is written by hand as x*log(p) + (1-x)*log(1-p) without clamping "
    "the logs; once a rim pixel's probability rounds to exactly 1.0 in float32, (1-x)*log(0) = "
    "0 * -inf = NaN and the loss is NaN.",
)
def h391_bog_pool_vae_unclamped_bernoulli_nan(ctx: Context) -> None:
    gen = seeded(39101)
    model = VAE(32, hidden=64, latent=4, bernoulli=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = _bog_patterns(gen, 64, 391)
    probs: list[torch.Tensor] = []

    def loss_fn(out, x):
        p, mu, logvar = out
        ll = x * torch.log(p) + (1 - x) * torch.log(1 - p)
        return -ll.sum(1).mean() + _kl(mu, logvar)

    def watch(step, out, x, y):
        probs.append((out[0].detach(), x))

    n = _loop(ctx, model, opt, data, 400, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss turns NaN within the run", bad is not None and n == bad + 1)
    ctx.check("the loss is finite for the first 50 steps", bad is not None and bad >= 50)
    if bad is not None:
        p, x = probs[bad]
        ctx.check(
            "a decoder probability is exactly 1.0 where x = 1 at the NaN step",
            bool(((p == 1.0) & (x == 1.0)).any()),
        )
        ctx.check(
            "a clamped BCE of the same probabilities is finite",
            math.isfinite(float(F.binary_cross_entropy(p, x))),
        )
        ctx.check("the NaN step is the stated divergence", bad == 80)


@scenario(
    family="bark_tannery_liquor_strength_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh regressor of tannery bark-liquor strength trained with NAdam and a hand-written "
    "decoupled weight decay applied after each step as p *= (1 + lr * wd) instead of (1 - lr * wd) "
    "(the sign flipped in a refactor). The weights grow steadily, the tanh units saturate and the "
    "loss climbs slowly with no jump and no NaN.",
)
def h391_bark_liquor_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(39102)
    model = Trunk(10, hidden=48, act=nn.Tanh)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    data = _readings(gen, 128, 10, 3912)
    w0 = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, data, 300, F.mse_loss, after=after)
    ls = ctx.losses
    w1 = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    lows = min(_mean(ls[i : i + 20]) for i in range(len(ls) - 20))
    ctx.check("the weights more than double", float(w1) > 2 * float(w0))
    ctx.check("the loss ends over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * lows)
    win = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    ctx.check(
        "no jump: no 10-step mean over 2x the one before",
        all(b < 2 * a for a, b in zip(win[:-1], win[1:], strict=True)),
    )
    ctx.check("the loss stays finite", _finite(ls))


@scenario(
    family="kendama_spike_catch_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier of kendama spike-catch grades whose softmax temperature is read from a "
    "config typed 1e-3 for 1e0, so the cross-entropy sees logits / 0.001; the target "
    "probabilities round to exactly 1.0 in float32 for most rows.",
)
def h391_kendama_temperature_typo(ctx: Context) -> None:
    gen = seeded(39103)
    model = Trunk(12, hidden=48, out=6, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    data = _grades(gen, 64, 12, 6, 3913, spread=1.0)
    temp = 1e-3
    frac, frac_t1 = [], []

    def loss_fn(out, y):
        return F.cross_entropy(out / temp, y)

    def watch(step, out, x, y):
        with torch.no_grad():
            o = out.float()
            pt = torch.softmax(o / temp, -1).gather(1, y[:, None])
            frac.append(float((pt == 1.0).float().mean()))
            p1 = torch.softmax(o, -1).gather(1, y[:, None])
            frac_t1.append(float((p1 == 1.0).float().mean()))

    _loop(ctx, model, opt, data, 200, loss_fn, classifier=True, watch=watch)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 (last 50 steps)",
        _mean(frac[-50:]) > 0.5,
    )
    ctx.check("none at temperature 1 on the same logits", max(frac_t1[-50:]) == 0.0)
    ctx.check("the loss is finite", _finite(ctx.losses))


@scenario(
    family="nyckelharpa_key_action_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN over 30-step nyckelharpa key-action traces whose recurrent "
    "weight is initialised normal with std 1.0 where the recipe says std 1/sqrt(hidden) (a "
    "variance/std mix-up), a spectral radius near sqrt(32); the gradient with respect to the "
    "hidden state grows backwards through time. Clipped at 1.0, RMSprop.",
)
def h391_nyckelharpa_rnn_recurrent_std(ctx: Context) -> None:
    gen = seeded(39104)
    model = Elman(3, hidden=32)
    nn.init.normal_(model.rec.weight, std=1.0)
    model.keep = True
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _sequences(gen, 32, 3914)
    ratios = []

    def inspect(step):
        g = [s.grad.norm() for s in model.states if s.grad is not None]
        if len(g) == 30:
            ratios.append(float(g[0] / g[-1].clamp_min(1e-12)))

    _loop(ctx, model, opt, data, 150, F.mse_loss, inspect=inspect, clip=1.0)
    # the same RNN at the intended init, for comparison
    seeded(39104)
    ref = Elman(3, hidden=32)
    nn.init.normal_(ref.rec.weight, std=1.0 / math.sqrt(32))
    ref.keep = True
    x, y = next(_sequences(torch.Generator().manual_seed(5), 32, 3914))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.states[0].grad.norm() / ref.states[-1].grad.norm())
    ctx.check("dL/dh_1 over 20x dL/dh_30 at the start", len(ratios) > 0 and ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended init", ref_ratio < 5)
    ctx.check("the gradient norm before clipping exceeds the clip", _median(ctx.grad_norms) > 1)


@scenario(
    family="dry_stone_wall_batter_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier of dry-stone-wall batter grades with two param groups (encoder fc1, "
    "the rest); the encoder group's lr is typed 2e-9 for 2e-3, so fc1 hardly moves while "
    "receiving ordinary gradients and the rest of the net trains.",
)
def h391_stone_wall_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(39105)
    model = Trunk(16, hidden=64, out=5)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 2e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=2e-2,
    )
    data = _grades(gen, 64, 16, 5, 3915, spread=1.3)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []

    def inspect(step):
        g1.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, inspect=inspect)
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("the head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("fc1 receives nonzero gradients", _median(g1) > 1e-4)
    ctx.check("the loss falls", _fell(ctx.losses))


@scenario(
    family="lobster_creel_soak_relu_bce_net",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A ReLU BCE net predicting whether a lobster creel comes up full from soak readings; "
    "at step 120 one boat's shard arrives with three depth columns in millimetres instead of "
    "metres (x1000). Loss and gradient jump for that batch; clipped at 5, the run recovers.",
)
def h391_lobster_creel_millimetre_shard(ctx: Context) -> None:
    gen = seeded(39106)
    model = Trunk(12, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    data = _binary(gen, 64, 12, 3916, flip=0.05)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] *= 1000.0
        return x, y

    _loop(ctx, model, opt, data, 220, F.binary_cross_entropy_with_logits, alter=alter, clip=5.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 20x the median before", ls[120] > 20 * _median(ls[90:120]))
    ctx.check("gradient at step 120 over 20x the median before", gs[120] > 20 * _median(gs[90:120]))
    ctx.check("the run recovers", _mean(ls[-20:]) < 2 * _mean(ls[100:120]))
    ctx.check("the loss is finite", _finite(ls))


@scenario(
    family="shinty_caman_strike_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A SiLU Huber regressor of shinty caman-strike ball speed; the per-step loss weights are "
    "read from a CSV table whose row 150 has its decimal point lost (80 for 0.80), so one clean "
    "batch is backpropagated with weight 80. Accumulation over 2, clipped at 1, recovers.",
)
def h391_shinty_loss_weight_row(ctx: Context) -> None:
    gen = seeded(39107)
    model = Trunk(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    data = _readings(gen, 32, 10, 3917)
    weights = [1.0] * 260
    weights[150] = 80.0

    def backprop(step, loss):
        return weights[step] * loss

    _loop(ctx, model, opt, data, 260, F.huber_loss, backprop=backprop, clip=1.0, accumulate=2)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 20x the median before", gs[150] > 20 * _median(gs[120:150])
    )
    ctx.check("the logged loss at step 150 is ordinary", ls[150] < 3 * _median(ls[120:150]))
    ctx.check("the run recovers", _mean(ls[-20:]) < 2 * _mean(ls[130:150]))
    ctx.check("the loss is finite", _finite(ls))


_YACHT_ONSET = 70


@scenario(
    family="sand_yacht_land_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=_YACHT_ONSET,
    note="A tanh regressor of sand-yacht land speed with plain SGD under ExponentialLR whose gamma "
    "is typed 1.03 for 0.97: the rate grows 3% a step from 0.05, lr x top Hessian eigenvalue "
    "(power iteration) is about 0.2 at step 0 and passes 2 near step 70 (the onset), and the "
    "loss blows up and turns non-finite.",
)
def h391_sand_yacht_exponential_gamma(ctx: Context) -> None:
    gen = seeded(39108)
    model = Trunk(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    data = _readings(gen, 128, 8, 3918)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 3918))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0 and step <= 150:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_eig(model, F.mse_loss, *probe)

    n = _loop(ctx, model, opt, data, 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    cross = next((s for s in sorted(products) if products[s] > 2), None)
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2)
    ctx.check("lr x sharpness past 2 later", cross is not None)
    ctx.check("the loss falls first", min(ls[:30]) < 0.5 * ls[0])
    ctx.check(
        "the loss blows up (over 100x its low, or non-finite) after the crossing",
        cross is not None
        and any((not math.isfinite(v)) or v > 100 * min(ls[: cross + 1]) for v in ls[cross:n]),
    )
    ctx.check(
        "the crossing is near the stated onset",
        cross is not None and abs(cross - _YACHT_ONSET) <= 10,
    )


def _thatcher_run(lr, seed, ctx=None, steps=200):
    gen = seeded(seed)
    model = Trunk(10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = _readings(gen, 64, 10, 3919)
    probe = next(_readings(torch.Generator().manual_seed(11), 256, 10, 3919))
    dead = []

    def after(step):
        with torch.no_grad():
            h = model.features(probe[0])
            dead.append(float((h <= 0).all(0).float().mean()))

    if ctx is not None:
        _loop(ctx, model, opt, data, steps, F.mse_loss, after=after)
    else:
        for step in range(steps):
            x, y = next(data)
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            after(step)
    with torch.no_grad():
        held = float(F.mse_loss(model(probe[0]), probe[1]))
    return dead, held


@scenario(
    family="thatcher_reed_bundle_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU regressor of thatching-reed bundle weight whose Adam lr is typed 3e-1 for 3e-4; "
    "the first large steps push most of act2's units negative on every input and they never "
    "recover; the held-out loss stays well above that of the intended rate.",
)
def h391_thatcher_adam_lr_typo(ctx: Context) -> None:
    dead, held = _thatcher_run(3e-1, 39109, ctx)
    ref_dead, ref_held = _thatcher_run(3e-4, 39109)
    ctx.check("over 60% of act2 dead for the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("under 10% dead at the intended rate", max(ref_dead[-50:]) < 0.1)
    ctx.check("held-out loss over 2x that at the intended rate", held > 2 * ref_held)
    ctx.check("the loss is finite", _finite(ctx.losses))


@scenario(
    family="sepak_takraw_spike_logit_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier of sepak-takraw spike types with hand-written label smoothing: "
    "(1 - eps) * nll + eps * mean(-x) where x should be log_softmax(logits) but the raw logits are "
    "passed; the smoothing term rewards raising every logit, so the head's logits drift upward "
    "without bound; the logits also spread, and the cross-entropy turns erratic late in the run.",
)
def h391_sepak_takraw_smoothing_on_logits(ctx: Context) -> None:
    gen = seeded(39110)
    model = Trunk(12, hidden=64, out=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    data = _grades(gen, 64, 12, 5, 3920, spread=1.2)
    eps = 0.1
    top = []

    def loss_fn(out, y):
        return F.cross_entropy(out, y)

    def backprop(step, loss):
        return (1 - eps) * loss + eps * (-last["logits"].mean())

    last = {}

    def watch(step, out, x, y):
        last["logits"] = out
        top.append(float(out.detach().abs().max()))

    _loop(ctx, model, opt, data, 250, loss_fn, classifier=True, watch=watch, backprop=backprop)
    ctx.check("max |logit| over 20x its start", top[-1] > 20 * top[0])
    ctx.check("still growing over the last 50 steps", top[-1] > 1.2 * top[-50])
    ctx.check("the cross-entropy stays finite", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="hardanger_fiddle_drone_vae",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A VAE of Hardanger-fiddle drone spectra (SiLU encoder, Gaussian latent, Gaussian "
    "decoder with fixed variance, KL annealed linearly from 0 to 1 over 100 steps, log-variance "
    "clamped to [-6, 4]), Adam with clipping.",
)
def h391_hardanger_vae_kl_annealing(ctx: Context) -> None:
    gen = seeded(39111)
    model = VAE(24, hidden=64, latent=3, bernoulli=False, clamp=(-6.0, 4.0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _drone_spectra(gen, 64, 3921)
    beta = {"v": 0.0}
    kls = []

    def before(step):
        beta["v"] = min(1.0, step / 100)

    def loss_fn(out, x):
        recon, mu, logvar = out
        kl = _kl(mu, logvar)
        kls.append(float(kl.detach()))
        return 0.5 * ((recon - x) ** 2).sum(1).mean() / 0.05 + beta["v"] * kl

    _loop(ctx, model, opt, data, 250, loss_fn, before=before, clip=5.0)
    ctx.check("the loss falls", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses) and _finite(kls))
    ctx.check("the KL term is positive and bounded at the end", 0 < _mean(kls[-20:]) < 100)


@scenario(
    family="bodhran_tipper_roll_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="A ReLU Conv1d classifier of bodhran tipper-roll traces: SGD momentum under OneCycleLR, "
    "label smoothing 0.1, clipping at 1.",
)
def h391_bodhran_onecycle(ctx: Context) -> None:
    gen = seeded(39112)
    model = Conv1dNet(2, 5, width=24)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = 250
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    data = _traces(gen, 32, 5, 3922)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, data, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    acc = _accuracy(model, _traces(torch.Generator().manual_seed(3), 64, 5, 3922))
    ctx.check("the loss falls", _fell(ctx.losses))
    ctx.check("accuracy over 0.7", acc > 0.7)


@scenario(
    family="scything_windrow_fp16_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A SiLU Huber regressor of scythed windrow drying time under fp16 autocast with a "
    "GradScaler, AdamW with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1.",
)
def h391_scything_fp16_plateau(ctx: Context) -> None:
    gen = seeded(39113)
    model = Trunk(10, hidden=64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 32, 10, 3923, noise=0.1)
    held = next(_readings(torch.Generator().manual_seed(13), 256, 10, 3923, noise=0.1))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss falls", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
