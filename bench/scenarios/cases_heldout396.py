"""Held-out set 396 (``h396_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a maar tephra-thickness mixture density network whose likelihood is written in
probability space (no logsumexp) and meets a newly surveyed proximal pit (log 0), a guqin
slide-technique classifier whose softmax temperature is typed 1e-3 for 1e0 (softmax saturates), a
korfball rebound-zone classifier trained with F.nll_loss on raw logits (the head's logits grow
without bound), a pilot-gig catch-timing Huber regressor whose loss-weight table has 50.0 for 0.50
at one step (one gradient burst), a champleve enamel-fill classifier whose body group's lr is typed
5e-10 for 5e-2 (frozen), a slackline anchor-creep 12-layer ReLU MLP whose He init gain is typed 2.0
for sqrt(2) (gradients grow through depth), an oast-cowl draught ReLU regressor at NAdam lr 3e-1 for
3e-3 (dead ReLUs), a ropewalk forming-tension regressor whose warm-up peak is typed 2.0 for 0.2
(past 2/sharpness), a skijoring crust-breakthrough BCE net fed one logger's batch in grams (one
corrupted batch) and a pogonip rime-accretion regressor whose hand-written decoupled weight decay
has its sign flipped (a slow climb).

Controls: a lavacicle drip-length mixture density network (five components, log-scales clamped,
AdamW under cosine annealing, clipping), a handpan dimple-tone Conv1d classifier (SGD Nesterov
under OneCycleLR, label smoothing, clipping) and a kumihimo braid-tension Huber regressor (fp16
autocast with a GradScaler, Adam, accumulation, ReduceLROnPlateau, clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
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
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
    train=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count; a backprop that
    divides itself returns ``(loss, True)``), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train(True if train is None else train)
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
            out = out.float()
            loss = loss_fn(out, y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.sin(2 * x[:, 0]) > 0).float()
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


def _series(gen, batch, length=64):
    """Generated level series (two tides and a slow swell plus noise); predict the next value."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = torch.stack(
            [
                0.18 + 0.04 * torch.rand(batch, generator=gen),
                0.05 + 0.02 * torch.rand(batch, generator=gen),
            ],
            1,
        )
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        amp = torch.tensor([0.8, 0.5]) * (0.7 + 0.6 * torch.rand(batch, 2, generator=gen))
        s = (amp[:, :, None] * torch.sin(f[:, :, None] * t + ph[:, :, None])).sum(1)
        s = s + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, None, :-1], s[:, -1]


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


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


_MDN_NAN = 150
_SHARP_NAN = 58
_WD = 3.0


def _dead(feats: torch.Tensor) -> float:
    return float((feats <= 0).all(0).float().mean())


def _collapsed(logits: torch.Tensor, y: torch.Tensor) -> float:
    p = torch.softmax(logits.float(), dim=-1)
    return float((p.gather(1, y[:, None]) == 1.0).float().mean())


# -- the mixture density networks -----------------------------------------------------------------


def _tephra(gen, batch, noise, proximal_from=None):
    """Multi-modal regression: three branches of a curve picked at random per row; from step
    ``proximal_from`` a quarter of the rows come from a proximal pit (thickness about 6)."""
    step = 0
    while True:
        x = 2 * torch.rand(batch, 1, generator=gen) - 1
        c = torch.randint(0, 3, (batch,), generator=gen)
        branches = torch.cat([torch.sin(2.5 * x), 0.8 * x - 0.6, 0.8 - x * x], 1)
        y = branches.gather(1, c[:, None]).squeeze(1)
        feats = torch.cat([x, x * x, torch.sin(3 * x)], 1)
        y = y + noise * torch.randn(batch, generator=gen)
        if proximal_from is not None and step >= proximal_from:
            y = torch.where(torch.arange(batch) % 4 == 0, 6.0 + 0.3 * x[:, 0], y)
        step += 1
        yield feats, y


class _MDN(nn.Module):
    """A tanh trunk and three heads: mixture logits (softmax weights), means, log-scales."""

    def __init__(self, d_in=3, hidden=64, k=3, clamp=None):
        super().__init__()
        self.k = k
        self.clamp = clamp
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.pi_head = nn.Linear(hidden, k)
        self.mu_head = nn.Linear(hidden, k)
        self.scale_head = nn.Linear(hidden, k)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        ls = self.scale_head(h)
        if self.clamp is not None:
            ls = ls.clamp(*self.clamp)
        return torch.cat([self.pi_head(h), self.mu_head(h), ls], -1)


class _ProbSpaceNLL(nn.Module):
    """-log sum_k pi_k N(y; mu_k, sigma_k), written in probability space (no logsumexp)."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.last_density = None

    def forward(self, out, y):
        logits, mu, ls = out.split(self.k, -1)
        pi = torch.softmax(logits, -1)
        sigma = ls.exp()
        z = (y[:, None] - mu) / sigma
        dens = (pi * torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))).sum(-1)
        self.last_density = dens.detach()
        return -torch.log(dens).mean()


def _mdn_nll(out, y, k):
    logits, mu, ls = out.split(k, -1)
    logp = -0.5 * ((y[:, None] - mu) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(torch.log_softmax(logits, -1) + logp, -1).mean()


class _TephraModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.mdn = _MDN(k=3)
        self.nll = _ProbSpaceNLL(3)

    def forward(self, x):
        return self.mdn(x)


@scenario(
    "maar_diatreme_tephra_thickness_prob_space_mdn",
    "Adam",
    "nonfinite",
    "nll",
    _MDN_NAN,
    heldout=True,
    onset=_MDN_NAN,
    note="a mixture density network (softmax mixture weights, means and log-scales of three "
    "components) of maar tephra thickness, multi-modal; its likelihood module was written in "
    "probability space, log(sum_k pi_k N(y; mu_k, sigma_k)) with no logsumexp, and the "
    "log-scales are not clamped; from step 150 the loader adds a newly surveyed proximal pit "
    "(valid readings near 6, a quarter of the rows) whose rows lie over 14 sigma from every "
    "component mean, every density underflows to exactly 0.0 in float32 and log(0) makes the "
    "loss non-finite at once (the logsumexp form on the same outputs stays finite)",
)
def h396_maar_tephra_mdn_log_zero(ctx: Context) -> None:
    gen = seeded(39601)
    model = _TephraModel()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = {}

    def watch(step, out, x, y):
        seen["out"], seen["y"] = out.detach(), y

    n = _loop(
        ctx,
        model,
        opt,
        _tephra(gen, 64, 0.02, proximal_from=_MDN_NAN),
        300,
        lambda o, y: model.nll(o, y),
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check(f"loss non-finite at step {_MDN_NAN}", bad == _MDN_NAN and n == _MDN_NAN + 1)
    dens = model.nll.last_density
    ctx.check(
        "a row's mixture density is exactly 0.0", dens is not None and bool((dens == 0).any())
    )
    ctx.check(
        "the logsumexp NLL of the same outputs is finite",
        math.isfinite(float(_mdn_nll(seen["out"], seen["y"], 3))),
    )
    ctx.check(
        "the loss had fallen before",
        _finite(ctx.losses[:20]) and min(ctx.losses[: max(bad or 1, 1)]) < 0.5 * ctx.losses[0],
    )


@scenario(
    "lava_tube_lavacicle_drip_length_clamped_mdn",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="a mixture density network of five components (softmax weights, means, log-scales "
    "clamped to [-4, 2]) of lavacicle drip length on generated multi-modal data, NLL by "
    "logsumexp, AdamW (weight decay 1e-2) under cosine annealing, clipping at 5: control",
)
def h396_lavacicle_mdn_control(ctx: Context) -> None:
    gen = seeded(39602)
    model = _MDN(k=5, clamp=(-4.0, 2.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 250
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=3e-4)
    _loop(
        ctx,
        model,
        opt,
        _tephra(gen, 64, 0.05),
        steps,
        lambda o, y: _mdn_nll(o, y, 5),
        clip=5.0,
        sched=sched,
    )
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("NLL fell by over 1.0 nat", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:10]) - 1.0)


# -- softmax_collapse: a temperature typed 1e-3 for 1e0 -------------------------------------------


class _TempClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.body = _MLP(d_in, 48, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.body(x) / self.temperature


@scenario(
    "guqin_silk_string_slide_temperature_classifier",
    "RAdam",
    "softmax_collapse",
    "body.head",
    None,
    heldout=True,
    note="a GELU classifier of guqin slide techniques; the config's softmax temperature is typed "
    "1e-3 for 1e0, so the logits are divided by 0.001: over half the rows' target probability "
    "rounds to exactly 1.0 in float32 over the last 30 steps, against under 5% at temperature 1 "
    "on the same logits",
)
def h396_guqin_temperature_typo(ctx: Context) -> None:
    gen = seeded(39603)
    model = _TempClassifier(16, 6, 1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    typo, intended = [], []

    def watch(step, out, x, y):
        if step >= 120:
            raw = out.detach() * model.temperature
            typo.append(_collapsed(out.detach(), y))
            intended.append(_collapsed(raw, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 39603),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows collapse to p = 1.0", _mean(typo) > 0.5)
    ctx.check("under 5% at temperature 1", _mean(intended) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- output_logit_divergence: NLL on raw logits ----------------------------------------------------


@scenario(
    "korfball_rebound_zone_raw_nll_classifier",
    "AdamW",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a GELU classifier of korfball rebound zones; a refactor dropped the LogSoftmax from the "
    "model but the loss stayed F.nll_loss, so the loss is minus the raw target logit and has no "
    "floor: the head's largest |logit| grows over 20x its start and is still growing at the end, "
    "the 'loss' falls below -10, finite",
)
def h396_korfball_raw_nll(ctx: Context) -> None:
    gen = seeded(39604)
    model = _MLP(16, 48, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    probe = next(_grades(torch.Generator().manual_seed(7), 256, 16, 5, 39604))[0]
    peaks = []

    def after(step):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    with torch.no_grad():
        start = float(model(probe).abs().max())
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 39604),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check("still growing", peaks[-1] > 1.1 * peaks[-40])
    ctx.check("loss below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


# -- gradient_spike: a loss-weight table row typed 50 for 0.50 --------------------------------------


@scenario(
    "gig_rowing_catch_timing_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=140,
    note="a SiLU Huber regressor of pilot-gig catch timing, accumulation over 2, SGD Nesterov; "
    "the per-step loss-weight table has 50.0 typed for 0.50 at step 140, so one step's "
    "gradient is over 20x on a clean batch with an ordinary logged loss; clipped at 1, the run "
    "recovers",
)
def h396_gig_rowing_weight_typo(ctx: Context) -> None:
    gen = seeded(39605)
    model = _MLP(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    weights = [1.0] * 220
    weights[140] = 50.0

    def backprop(step, loss, acc):
        return weights[step] * loss / acc

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 39605),
        220,
        F.huber_loss,
        backprop=backprop,
        accumulate=2,
        clip=1.0,
    )
    g = ctx.grad_norms
    ctx.check("gradient over 20x at step 140", g[140] > 20 * _median(g[120:140]))
    ctx.check("logged loss ordinary at 140", ctx.losses[140] < 2 * _median(ctx.losses[120:140]))
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.5 * _mean(ctx.losses[120:140]))
    ctx.check("finite", _finite(ctx.losses))


# -- update_ratio_out_of_range: a body group at lr 5e-10 ----------------------------------------


@scenario(
    "enameller_champleve_fill_two_group_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a two-group ReLU classifier of champleve enamel fill grades under Adagrad; the body "
    "group's (fc1, fc2) lr is typed 5e-10 for 5e-2, so the body moves under 1e-5 of its norm "
    "while receiving gradients and only the head (over 5%) learns",
)
def h396_champleve_frozen_body(ctx: Context) -> None:
    gen = seeded(39606)
    model = _MLP(16, 48, 6)
    body = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 5e-10}, {"params": model.head.parameters(), "lr": 5e-2}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    gn = []

    def inspect(step):
        gn.append(float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 39606, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    ctx.check(
        "fc1 and fc2 move under 1e-5",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-5,
    )
    ctx.check("fc1 receives gradients", min(gn) > 1e-4)
    ctx.check("head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- exploding_gradients: He init with a gain typed 2 for sqrt(2) ---------------------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in=12, width=48, depth=12, gain=2.0):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.hidden = []

    def forward(self, x):
        self.hidden = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.hidden[0].grad.norm() / model.hidden[-1].grad.norm().clamp_min(1e-30))


@scenario(
    "slackline_anchor_creep_deep_relu_mlp",
    "RMSprop",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 12-layer ReLU MLP of slackline anchor creep; the hand-written He init uses "
    "std = gain / sqrt(fan_in) with the gain typed 2.0 for sqrt(2), so every layer's weights are "
    "sqrt(2)x too large and the gradient grows about 1.4x per layer towards the input: "
    "dL/d(layers.0 output) is over 20x dL/d(layers.11 output) at the start and over 10x through "
    "the run (under 5x with gain sqrt(2)); clipped at 1, no divergence",
)
def h396_slackline_deep_init_gain(ctx: Context) -> None:
    gen = seeded(39607)
    model = _DeepReLU(gain=2.0)
    ref = _DeepReLU(gain=math.sqrt(2.0))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    batches = _readings(gen, 64, 12, 39607)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 64, 12, 39607))
    F.mse_loss(ref(x0), y0).backward()
    ref_ratio = _depth_ratio(ref)
    _loop(ctx, model, opt, batches, 200, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("ratio over 20x at the start", ratios[0] > 20)
    ctx.check("median ratio over 10x", _median(ratios) > 10)
    ctx.check("under 5x at gain sqrt(2)", ref_ratio < 5)
    ctx.check("finite", _finite(ctx.losses))


# -- loss_of_plasticity: NAdam lr typed 3e-1 for 3e-3 ----------------------------------------------


def _train_quiet(model, opt, batches, steps):
    for _ in range(steps):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@scenario(
    "oast_cowl_draught_relu_regressor",
    "NAdam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    note="a ReLU regressor of oast-house cowl draught; NAdam's lr typed 3e-1 for 3e-3: the first "
    "large steps push fc2's pre-activations negative for every input and over 60% of act2's "
    "units stay dead over the last 50 steps (under 20% at the intended rate)",
)
def h396_oast_cowl_dead_relu(ctx: Context) -> None:
    gen = seeded(39608)
    model = _MLP(12, 48, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-1)
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, 39608))[0]
    dead = []

    def hidden(m):
        return m.fc2(m.act1(m.fc1(probe)))

    def after(step):
        if step >= 150:
            with torch.no_grad():
                dead.append(_dead(hidden(model)))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 39608), 200, F.mse_loss, after=after)
    torch.manual_seed(39608)
    ref = _MLP(12, 48, 1)
    _train_quiet(
        ref,
        torch.optim.NAdam(ref.parameters(), lr=3e-3),
        _readings(torch.Generator().manual_seed(39608), 64, 12, 39608),
        200,
    )
    with torch.no_grad():
        ref_dead = _dead(hidden(ref))
    ctx.check("over 60% of act2 dead", _mean(dead) > 0.6)
    ctx.check("under 20% at 3e-3", ref_dead < 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- sharpness_above_limit: warm-up peak typed 2.0 for 0.2 ---------------------------------------


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / nv for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [t.detach() for t in hv]
    return lam


@scenario(
    "rope_walk_forming_tension_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    _SHARP_NAN,
    heldout=True,
    note="a tanh regressor of ropewalk forming-head tension, plain SGD with a 100-step linear "
    "warm-up whose peak is typed 2.0 for 0.2; lr x top Hessian eigenvalue (power iteration on a "
    "fixed batch) passes 2 during the warm-up, before the loss blows up, and the loss becomes "
    "non-finite; the intended peak stays under 2/sharpness",
)
def h396_rope_walk_warmup_peak(ctx: Context) -> None:
    gen = seeded(39609)
    model = _MLP(12, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    px, py = next(_readings(torch.Generator().manual_seed(9), 256, 12, 39609))
    peak = 2.0
    prod = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and step < 100:
            prod[step] = (lr, _sharpness(model, px, py))

    n = _loop(ctx, model, opt, _readings(gen, 64, 12, 39609), 200, F.mse_loss, before=before)
    ls = ctx.losses
    floor = min(v for v in ls if math.isfinite(v))
    blow = next(i for i, v in enumerate(ls) if not math.isfinite(v) or v > 10 * floor)
    past = [s for s, (lr, lam) in prod.items() if lr * lam > 2 and s < blow]
    ctx.check(
        f"loss non-finite at step {_SHARP_NAN}",
        _first_bad(ls) == _SHARP_NAN and n == _SHARP_NAN + 1,
    )
    ctx.check("lr x sharpness past 2 before the blow-up", bool(past))
    ctx.check("intended peak under 2/sharpness at the start", 0.2 * prod[0][1] < 2)


# -- data_outlier: one shard in grams -------------------------------------------------------------


@scenario(
    "skijoring_snow_crust_breakthrough_relu_bce_net",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a ReLU BCE net of whether a skijoring run breaks through the snow crust, SGD momentum "
    "0.9, clipped at 1; the step-110 batch comes from a logger whose three load columns are in "
    "grams instead of kilograms (x1000): loss and gradient over 20x for that step, the run "
    "recovers",
)
def h396_skijoring_gram_shard(ctx: Context) -> None:
    gen = seeded(39610)
    model = _MLP(12, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, :3] *= 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 12, 39610, flip=0.05),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at 110", ls[110] > 20 * _median(ls[90:110]))
    ctx.check("gradient over 20x at 110", g[110] > 20 * _median(g[90:110]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[90:110]))
    ctx.check("finite", _finite(ls))


# -- loss_divergence: decoupled weight decay with its sign flipped -------------------------------


@scenario(
    "pogonip_rime_accretion_tanh_regressor",
    "Adamax",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a tanh regressor of pogonip rime accretion; the hand-written decoupled weight decay "
    "after Adamax's step is p *= (1 + lr * wd) for (1 - lr * wd), so the weights grow "
    "geometrically: weight norm over 2x, the loss climbs slowly to over 3x its lowest 20-step "
    "mean with no 2x jump between 10-step means, finite",
)
def h396_pogonip_decay_sign(ctx: Context) -> None:
    gen = seeded(39611)
    model = _MLP(12, 48, 1, act=nn.Tanh)
    lr, wd = 2e-3, _WD
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    start = _params(model).norm()

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 12, 39611), 300, F.mse_loss, after=after)
    ls = ctx.losses
    m20 = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    m10 = [_mean(ls[i : i + 10]) for i in range(0, len(ls), 10)]
    ctx.check("weights over 2x", float(_params(model).norm()) > 2 * float(start))
    ctx.check("loss climbs over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * min(m20))
    ctx.check("no 2x jump", all(b < 2 * a for a, b in zip(m10[:-1], m10[1:], strict=True)))
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class _ConvNet(nn.Module):
    def __init__(self, classes, channels=2):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32 * 4, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.head(F.adaptive_avg_pool1d(x, 4).flatten(1))


@scenario(
    "handpan_dimple_tone_conv1d_classifier",
    "SGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="a ReLU Conv1d classifier of handpan dimple tones; SGD Nesterov (momentum 0.9, weight "
    "decay 5e-4) under OneCycleLR, label smoothing 0.1, clipping at 1: control",
)
def h396_handpan_control(ctx: Context) -> None:
    gen = seeded(39612)
    model = _ConvNet(5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 39612),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))


@scenario(
    "kumihimo_braid_tension_fp16_silu_huber_regressor",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="a SiLU Huber regressor of kumihimo braid tension under fp16 autocast with a "
    "GradScaler, Adam, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping at 1: "
    "control",
)
def h396_kumihimo_control(ctx: Context) -> None:
    gen = seeded(39613)
    model = _MLP(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    vx, vy = next(_readings(torch.Generator().manual_seed(13), 256, 12, 39613))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 39613),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
