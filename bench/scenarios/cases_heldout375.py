"""Held-out set 375 (``h375_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a change-ringing peal-method classifier with a hand-written
Performer-style linear attention (positive random features for the softmax kernel) whose port
never applies its QK-LayerNorm (the attention logits grow), an artesian well-head pressure
SiLU regressor whose exp(log-pressure) head overflows fp16 under autocast, a pipe-organ voicing
two-group ReLU regressor whose manual warm-up skips the trunk's group (frozen at lr 0), a glacier
calving-front tanh regressor whose unit conversion is applied in place to the cached targets every
epoch (the loss climbs slowly), a paragliding thermal-climb regressor whose hand-written input
standardisation takes E[x^2] - E[x]^2 without a clamp (sqrt of a negative variance), a
sheep-shearing fleece-weight ReLU regressor fed one shard with -9999 missing-value sentinels, a
coracle paddle-stroke SiLU regressor whose accumulation flush forgets the division for one step,
a cave-drip stalagmite ReLU Elman RNN with its identity recurrent init scaled by a gain typed 1.15,
a blacksmith quench-crack GELU classifier whose temperature is divided by 100 twice (softmax
collapse), a kite-fighting line-tension tanh regressor warmed up to a peak typed 4e0 for 4e-2
(past 2/sharpness), and three controls (a dragon-boat drum-cadence Performer with normalised
queries and keys, features redrawn every 100 steps and AdamW, a bonsai wiring-stage Conv1d
classifier with SGD Nesterov, OneCycleLR and label smoothing, a maple-sugaring sap-yield SiLU
Huber regressor under fp16 autocast with a GradScaler, accumulation and ReduceLROnPlateau).

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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (default: divided by the accumulation count), ``after(step)``
    runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- Performer-style linear attention --------------------------------------------------------------


class PerformerAttention(nn.Module):
    """Single-head linear attention with positive random features (FAVOR+): the softmax kernel
    exp(q.k) is approximated by phi(q).phi(k) with phi(u) = exp(W u - |u|^2 / 2) / sqrt(m) and W
    drawn from a standard normal (orthogonalised in blocks). ``mode="layernorm"``: q and k pass a
    LayerNorm before the usual 1/sqrt(d); ``mode="plain"``: they do not."""

    def __init__(self, dim, features=64, mode="layernorm", gen=None):
        super().__init__()
        self.dim, self.m, self.mode = dim, features, mode
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim)
        self.k_norm = nn.LayerNorm(dim)
        self.register_buffer("omega", torch.zeros(features, dim))
        self.redraw(gen)
        self.last_logit = 0.0

    @torch.no_grad()
    def redraw(self, gen=None):
        blocks, left = [], self.m
        while left > 0:
            g = torch.randn(self.dim, self.dim, generator=gen)
            qm, _ = torch.linalg.qr(g)
            blocks.append(qm[: min(left, self.dim)])
            left -= self.dim
        norms = torch.randn(self.m, self.dim, generator=gen).norm(dim=1, keepdim=True)
        self.omega.copy_(torch.cat(blocks) * norms)

    def scaled_qk(self, x):
        q, k = self.q(x), self.k(x)
        r = self.dim**-0.25
        if self.mode == "plain":
            return q * r, k * r
        return self.q_norm(q) * r, self.k_norm(k) * r

    def _phi(self, u, is_query):
        wu = u @ self.omega.T
        sq = 0.5 * (u * u).sum(-1, keepdim=True)
        if is_query:
            stab = wu.amax(-1, keepdim=True).detach()
        else:
            stab = wu.amax(dim=(-2, -1), keepdim=True).detach()
        return torch.exp(wu - sq - stab) / math.sqrt(self.m)

    def forward(self, x):
        q, k = self.scaled_qk(x)
        with torch.no_grad():
            self.last_logit = float((q @ k.transpose(-2, -1)).abs().max())
        v = self.v(x)
        pq, pk = self._phi(q, True), self._phi(k, False)
        kv = pk.transpose(-2, -1) @ v
        z = pq @ pk.sum(-2, keepdim=True).transpose(-2, -1)
        return self.proj((pq @ kv) / (z + 1e-9))


class MarkedTokenPerformer(nn.Module):
    """Tokens (with a flag on the one that matters) -> embedding -> Performer attention (residual)
    -> LayerNorm -> mean over positions -> head."""

    def __init__(self, vocab, classes, dim=32, features=64, mode="layernorm", gen=None):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.flag = nn.Embedding(2, dim)
        self.attn = PerformerAttention(dim, features, mode, gen)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.tok(x[..., 0]) + self.flag(x[..., 1])
        h = h + self.attn(h)
        return self.head(self.ln(h).mean(1))


def _marked(gen, batch, length, vocab, classes):
    """Sequences of tokens with exactly one flagged; the label is the flagged token's class."""
    while True:
        tok = torch.randint(0, vocab, (batch, length), generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        flag = torch.zeros(batch, length, dtype=torch.long)
        flag[torch.arange(batch), pos] = 1
        y = tok[torch.arange(batch), pos] % classes
        yield torch.stack([tok, flag], -1), y


@scenario(
    "change_ringing_peal_method_performer_classifier",
    "Adam",
    "attention_logit_growth",
    "attn",
    None,
    heldout=True,
    note="a hand-written Performer (positive random features for the softmax kernel); the port "
    "builds q_norm and k_norm but never applies them (QK-LayerNorm left out) while keeping the "
    "lr 5e-3 tuned with them; the task (read the flagged bell's call) rewards sharp attention, "
    "the q.k/sqrt(d) logits grow, the random-feature estimate degenerates and training breaks",
)
def h375_change_ringing_performer_logit(ctx: Context) -> None:
    gen = seeded(37501)
    model = MarkedTokenPerformer(24, 6, mode="plain", gen=gen)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    logits = []
    _loop(
        ctx,
        model,
        opt,
        _marked(gen, 32, 12, 24, 6),
        300,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: logits.append(model.attn.last_logit),
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the largest |q.k|/sqrt(d) over the last 20 steps over 20x that of the first 10",
        _mean(logits[-20:]) > 20 * _mean(logits[:10]),
    )
    lows = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10))
    ctx.check(
        "training broke: the last 50 steps' loss over 1.5x its lowest 20-step mean",
        _mean(ls[-50:]) > 1.5 * lows,
    )


@scenario(
    "dragon_boat_drum_cadence_performer_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a hand-written Performer with LayerNorm-normalised queries and keys, random "
    "features redrawn every 100 steps, AdamW at 3e-3 with warm-up and cosine decay, clipping",
)
def h375_dragon_boat_performer_control(ctx: Context) -> None:
    gen = seeded(37502)
    model = MarkedTokenPerformer(24, 6, features=128, mode="layernorm", gen=gen)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 300) / 300))
    )

    def before(step):
        if step and step % 100 == 0:
            model.attn.redraw(gen)

    _loop(
        ctx,
        model,
        opt,
        _marked(gen, 32, 12, 24, 6),
        300,
        F.cross_entropy,
        classifier=True,
        before=before,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("the loss fell under half its start", _fell(ctx.losses, 20, 0.5))


# -- fp16 ------------------------------------------------------------------------------------------


class LogPressureNet(nn.Module):
    """Readings -> SiLU trunk -> log-pressure head; returns the pressure in pascals."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.log_head = nn.Linear(hidden, 1)
        self.to_pa = _Exp()

    def forward(self, x):
        z = self.log_head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return self.to_pa(z + 10.0)


class _Exp(nn.Module):
    def forward(self, z):
        return torch.exp(z)


def _wells(gen, batch, d_in, seed):
    """Well readings and the well-head pressure in pascals (about 20 kPa to 400 kPa)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, torch.exp(11.5 + 0.9 * torch.tanh(x @ w * 1.5))


def _log_mse(pred, y):
    return F.mse_loss(torch.log(pred), torch.log(y))


@scenario(
    "artesian_well_head_pressure_fp16_silu_regressor",
    "NAdam",
    "amp_overflow",
    "to_pa",
    28,
    heldout=True,
    note="the regressor returns well-head pressure in pascals as exp(log-pressure) and was "
    "switched to fp16 autocast with a GradScaler for speed; under autocast the exp runs in fp16, "
    "whose largest value is 65504 Pa (65 kPa), so every prediction of a higher-pressure well "
    "overflows to inf (the same batch is finite in float32)",
)
def h375_artesian_well_fp16_overflow(ctx: Context) -> None:
    gen = seeded(37503)
    model = LogPressureNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step not in seen and not bool(torch.isfinite(out).all()):
            seen[step] = (x.clone(), y.clone())

    _loop(
        ctx,
        model,
        opt,
        _wells(gen, 64, 8, 37503),
        200,
        _log_mse,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss non-finite at step 28", bad == 28)
    ctx.check("the losses before finite", bad is not None and _finite(ctx.losses[:bad]))
    step = min(seen) if seen else None
    ctx.check("the fp16 prediction overflowed to inf at the first non-finite step", step == bad)
    if step is not None:
        x, y = seen[step]
        with torch.no_grad():
            ref = _log_mse(model(x), y)
        ctx.check("the same batch in float32 gives a finite loss", bool(torch.isfinite(ref)))
        ctx.check("the targets of that batch pass 65504 Pa", float(y.max()) > 65504.0)


@scenario(
    "maple_sugaring_sap_yield_fp16_huber_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of sap yield under fp16 autocast with a GradScaler, "
    "Adam with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out "
    "batch, clipping",
)
def h375_maple_sap_fp16_control(ctx: Context) -> None:
    gen = seeded(37504)
    model = Trunk(10, 64, act=nn.SiLU)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.Adam(
        [{"params": weights, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 32, 10, 37504)
    xv, yv = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=2.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("the loss fell under half its start", _fell(ctx.losses, 20, 0.5))
    ctx.check("the loss scale never collapsed under 1", min(ctx.scales) >= 1.0)


# -- learning rates and schedules -------------------------------------------------------------------


@scenario(
    "pipe_organ_voicing_two_group_relu_regressor",
    "SGD",
    "update_ratio_out_of_range",
    "fc1",
    None,
    heldout=True,
    note="every group is built at lr 0 for a linear warm-up, but the hand-written warm-up loop "
    "iterates opt.param_groups[1:] (left from a version whose group 0 was a frozen embedding), "
    "so the fc1 group stays at lr 0 for the whole run while fc2 and the head train; SGD momentum",
)
def h375_pipe_organ_frozen_group(ctx: Context) -> None:
    gen = seeded(37505)
    model = Trunk(12, 64)
    peak = [0.05, 0.05, 0.05]
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "lr": 0.0},
            {"params": model.fc2.parameters(), "lr": 0.0},
            {"params": model.head.parameters(), "lr": 0.0},
        ],
        lr=0.0,
        momentum=0.9,
    )

    def before(step):
        for i, g in enumerate(opt.param_groups[1:], start=1):  # the bug: [1:] skips fc1
            g["lr"] = peak[i] * min(1.0, (step + 1) / 30)

    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 12, 37505), 200, F.mse_loss, before=before)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(w1, model.fc1.weight) < 1e-6)
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("the loss did not blow up (last 20 under the first 10)", _fell(ctx.losses, 10, 1.0))


def _winds(gen, batch, d_in, seed):
    """Readings of a fighting kite's line and its tension (about unit scale)."""
    yield from _readings(gen, batch, d_in, seed, noise=0.02)


@scenario(
    "kite_fighting_line_tension_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="a 100-step linear warm-up to a peak typed 4e0 for 4e-2; plain SGD on a tanh MSE "
    "regressor passes lr x top Hessian eigenvalue = 2 during warm-up and the loss blows up",
)
def h375_kite_fighting_warmup_peak(ctx: Context) -> None:
    gen = seeded(37506)
    model = Trunk(8, 48, act=nn.Tanh)
    peak = 4e0  # the bug: 4e-2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = _winds(gen, 64, 8, 37506)
    xp, yp = next(data)
    prod = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        opt.param_groups[0]["lr"] = lr
        if step % 5 == 0 and step <= 60:
            prod[step] = lr * _sharpness(model, F.mse_loss, xp, yp)

    _loop(ctx, model, opt, data, 150, F.mse_loss, before=before)
    ls = ctx.losses
    passed = [s for s, v in sorted(prod.items()) if v > 2]
    ctx.check("lr x sharpness under 2 at the start", prod[0] < 2)
    ctx.check("lr x sharpness past 2 during warm-up", bool(passed))
    ctx.check(
        "the loss blew up: non-finite or over 100x its first 10 steps",
        not _finite(ls) or max(ls) > 100 * _mean(ls[:10]),
    )


@scenario(
    "blacksmith_quench_crack_gelu_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the config gives the softmax temperature in percent (temperature_pct: 100 for 1.0) "
    "and the loader already converts it to 1.0; the model divides by 100 again, so the logits "
    "are divided by 0.01 and the float32 softmax saturates: target probabilities round to "
    "exactly 1.0",
)
def h375_blacksmith_temperature_collapse(ctx: Context) -> None:
    gen = seeded(37507)
    model = Trunk(16, 64, out=5, act=nn.GELU)
    temperature = 1.0 / 100  # the bug: the loader already gave 1.0 (temperature_pct 100)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    fractions, intended = [], []

    def loss_fn(out, y):
        return F.cross_entropy(out / temperature, y)

    def watch(step, out, x, y):
        p = torch.softmax(out.detach() / temperature, -1)
        fractions.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))
        q = torch.softmax(out.detach(), -1)
        intended.append(float((q.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 37507, spread=1.0),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 50 steps",
        _mean(fractions[-50:]) > 0.5,
    )
    ctx.check(
        "under 5% on the same logits at the intended temperature 1.0 over the last 50 steps",
        _mean(intended[-50:]) < 0.05,
    )


# -- slow climbs -----------------------------------------------------------------------------------


@scenario(
    "glacier_calving_front_tanh_regressor",
    "RMSprop",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the epoch loader converts the cached front-retreat targets from metres to yards with "
    "y.mul_(1.0936) in place instead of y = y * 1.0936, so every epoch (8 steps) rescales the "
    "cached targets again; the targets drift upward and the loss climbs slowly",
)
def h375_glacier_inplace_units(ctx: Context) -> None:
    gen = seeded(37508)
    g = torch.Generator().manual_seed(37508)
    xs = torch.randn(512, 10, generator=g)
    w = torch.randn(10, generator=g) / math.sqrt(10)
    ys = (
        torch.tanh(1.5 * xs @ w)
        + 0.3 * torch.sin(2 * xs[:, 0])
        + 0.05 * torch.randn(512, generator=g)
    )
    scales = []

    def epochs():
        while True:
            ys.mul_(1.0936)  # the bug: y = ys * 1.0936, a fresh tensor
            scales.append(float(ys.abs().mean()))
            order = torch.randperm(512, generator=gen)
            for i in range(0, 512, 64):
                idx = order[i : i + 64]
                yield xs[idx], ys[idx]

    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    _loop(ctx, model, opt, epochs(), 240, F.mse_loss)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the cached targets grew over 5x", scales[-1] > 5 * scales[0])
    ctx.check(
        "the last 20 steps' loss over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(windows),
    )
    ctx.check(
        "a gradual climb: no 20-step window's mean over 2x the window before it after step 40",
        all(_mean(ls[i : i + 20]) < 2 * _mean(ls[i - 20 : i]) for i in range(40, len(ls) - 19, 20)),
    )


# -- NaN producers, outliers, bursts -----------------------------------------------------------------


class BatchStandardise(nn.Module):
    """Hand-written per-batch standardisation of the raw readings: var = E[x^2] - E[x]^2."""

    def __init__(self):
        super().__init__()
        self.last_var_min = 0.0

    def forward(self, x):
        mean = x.mean(0, keepdim=True)
        var = (x * x).mean(0, keepdim=True) - mean * mean  # no clamp_min(0), one pass
        self.last_var_min = float(var.min().detach())
        return (x - mean) / torch.sqrt(var + 1e-5)


class ThermalNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.norm = BatchStandardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.norm(x)))).squeeze(-1)


def _thermals(gen, batch, seed):
    """Climb rate from a launch site's altitude (m) and weather readings; each batch is one
    site's flights; the winch-tow site launches everyone at the same height (+-0.2 m)."""
    g = torch.Generator().manual_seed(seed)
    sites = torch.tensor([620.0, 1250.0, 1480.0, 2210.0, 1830.0])
    spread = torch.tensor([40.0, 25.0, 60.0, 30.0, 0.2])
    w = torch.randn(5, generator=g) / math.sqrt(5)
    while True:
        site = int(torch.multinomial(torch.tensor([0.3, 0.3, 0.25, 0.13, 0.02]), 1, generator=gen))
        alt = sites[site] + spread[site] * torch.randn(batch, 1, generator=gen)
        wx = torch.randn(batch, 5, generator=gen)
        y = torch.tanh(wx @ w) + 0.3 * (alt[:, 0] - 1400) / 800
        yield torch.cat([alt, wx], 1), y


@scenario(
    "paragliding_thermal_climb_batchstd_regressor",
    "Adamax",
    "nonfinite",
    "norm",
    72,
    heldout=True,
    note="a hand-written input standardisation computes the variance in one pass as "
    "E[x^2] - E[x]^2 without clamp_min(0); on a batch from the winch-tow site (launch altitude "
    "1830 m +- 0.2 m) float32 cancellation makes the altitude variance negative and sqrt gives NaN",
)
def h375_paragliding_negative_variance(ctx: Context) -> None:
    gen = seeded(37509)
    model = ThermalNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    mins = []
    _loop(
        ctx,
        model,
        opt,
        _thermals(gen, 64, 37509),
        250,
        F.mse_loss,
        watch=lambda s, o, x, y: mins.append(model.norm.last_var_min),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss non-finite at step 72", bad == 72)
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "the one-pass variance negative at that step",
        bad is not None and len(mins) > bad and mins[bad] < 0,
    )
    ctx.check("no negative variance before it", bad is not None and min(mins[:bad]) >= 0)


def _fleeces(gen, batch, seed):
    """Sheep readings (standardised: age, girth, staple length, ...) and fleece weight (kg)."""
    yield from _readings(gen, batch, 9, seed)


@scenario(
    "sheep_shearing_fleece_weight_relu_regressor",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=130,
    note="one shearing shed's export codes missing readings as -9999 and its shard is read at "
    "step 130 without masking them; that batch's loss and gradient jump, the clipped step is "
    "absorbed and the run recovers",
)
def h375_sheep_shearing_sentinel_shard(ctx: Context) -> None:
    gen = seeded(37510)
    model = Trunk(9, 64)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        if step == 130:
            x = x.clone()
            missing = torch.rand(x.shape, generator=gen) < 0.15
            x[missing] = -9999.0
        return x, y

    _loop(ctx, model, opt, _fleeces(gen, 64, 37510), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss at step 130 over 20x its median before", ls[130] > 20 * _median(ls[90:130]))
    ctx.check(
        "the gradient at step 130 over 20x its median before", gs[130] > 20 * _median(gs[90:130])
    )
    ctx.check(
        "recovered: the last 20 steps under 2x the 20 before the shard",
        _mean(ls[-20:]) < 2 * _mean(ls[110:130]),
    )


@scenario(
    "coracle_paddle_stroke_accum_silu_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="gradient accumulation over 16 micro-batches; the epoch-end flush path (step 150) "
    "backpropagates each micro-batch loss without the / 16, so that one update carries a 16x "
    "gradient from clean data; clipping at 1.0 absorbs most of it; SGD Nesterov",
)
def h375_coracle_accum_flush(ctx: Context) -> None:
    gen = seeded(37511)
    model = Trunk(8, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss if step == 150 else loss / 16  # the bug: the flush forgets / 16

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 8, 8, 37511),
        220,
        F.huber_loss,
        backprop=backprop,
        accumulate=16,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the gradient at step 150 over 10x its median before", gs[150] > 10 * _median(gs[110:150])
    )
    ctx.check(
        "the loss at step 150 ordinary (under 2x its median before)",
        ls[150] < 2 * _median(ls[110:150]),
    )


class DripRNN(nn.Module):
    """Hand-written ReLU Elman RNN over a drip-rate series: h = relu(inp(x_t) + rec(h))."""

    def __init__(self, channels=2, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(channels, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[2]):
            h = F.relu(self.inp(x[:, :, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _drips(gen, batch, seed, length=30):
    """Drip-interval series (2 channels) and the stalagmite growth rate they imply."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, generator=g)
    while True:
        base = torch.rand(batch, 2, 1, generator=gen)
        x = base + 0.2 * torch.randn(batch, 2, length, generator=gen)
        yield x, torch.tanh(base[:, :, 0] @ w)


@scenario(
    "cave_drip_stalagmite_elman_rnn",
    "ASGD",
    "exploding_gradients",
    "rec",
    None,
    heldout=True,
    note="an IRNN-style ReLU Elman RNN (hand-written) whose identity recurrent init is scaled "
    "by a gain typed 1.15 for 1.0; over 30 time steps the gradient grows backwards through "
    "time (1.15^30); clipped at 1.0",
)
def h375_cave_drip_rnn_gain(ctx: Context) -> None:
    gen = seeded(37512)
    model = DripRNN(gain=1.15)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ratios = []

    def after(step):
        g0, g1 = model.states[0].grad, model.states[-1].grad
        ratios.append(float(g0.norm() / g1.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _drips(gen, 32, 37512), 150, F.mse_loss, after=after, clip=1.0)
    ls = ctx.losses
    ctx.check("the gradient at h_0 over 20x that at h_29 at the start", ratios[0] > 20)
    ctx.check("over 10x through the run (median)", _median(ratios) > 10)
    ctx.check(
        "the raw gradient norm over 10x the clip threshold at its median",
        _median(ctx.grad_norms) > 10,
    )
    ctx.check("the loss finite", _finite(ls))


class StageConv(nn.Module):
    def __init__(self, channels=2, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "bonsai_wiring_stage_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of bonsai branch-wiring stage from bend-sensor traces, "
    "SGD Nesterov under OneCycleLR (max_lr 0.05), label smoothing 0.1, clipping at 1.0",
)
def h375_bonsai_conv1d_control(ctx: Context) -> None:
    gen = seeded(37513)
    model = StageConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 37513),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("the loss fell under 0.7x its start", _fell(ctx.losses, 20, 0.7))
