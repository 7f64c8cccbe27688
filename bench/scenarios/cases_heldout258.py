"""Held-out set 258 (``h258_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an aeolian-harp string-amplitude forecaster built on a
hand-written GRU cell whose recurrent init std was typed 1.0 for 1/sqrt(hidden), a nalbinding
loop-gauge regressor whose evaluation block (no ``torch.no_grad``) adds the summed validation
loss to one step's backward (NAdam), a sand-boil count Poisson net whose log-count feature takes
log 0 on a quiet levee reach, a carnyx bell-resonance regressor whose hand-written decoupled
weight decay has its sign flipped (Adamax), a glima grip-trace Conv1d net whose conv1 param group
lr was typed 1e-8 for 1e-2, a megaripple crest-migration tanh regressor whose OneCycleLR max_lr
was typed 1.0 for 1e-2, a bullwhip tip-speed regressor fed one logger's millimetre batch, a
Stroh-violin horn-output regressor whose resumed importance weights skip their normalisation for
one step, a kurash throw-score ReLU regressor whose Adam lr was typed 3e-1 for 3e-3, a
tubular-bells chime classifier whose temperature was typed 1e-3 for 1.0, and three controls (a
hydraulophone jet-pressure Huber regressor on heavy-tailed targets, a bombard reed-fault fp16
BCE tagger with a GradScaler, a sambo takedown Conv1d classifier with OneCycleLR and label
smoothing).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp``: fp16
    autocast; stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _traces(gen, batch, classes, seed, length=48, noise=0.5):
    """One-channel traces: a class-specific mix of two tones and a decay, plus noise."""
    g = torch.Generator().manual_seed(seed)
    f1 = 0.1 + 0.4 * torch.rand(classes, generator=g)
    f2 = 0.1 + 0.4 * torch.rand(classes, generator=g)
    dec = 0.01 + 0.06 * torch.rand(classes, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-dec[y, None] * t) * (
            torch.sin(f1[y, None] * t + ph) + 0.7 * torch.sin(f2[y, None] * t)
        )
        yield (x + noise * torch.randn(batch, length, generator=gen))[:, None, :], y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean over time -> head."""

    def __init__(self, out, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(width, out)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        out = self.head(h.mean(-1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- aeolian harp: a hand-written GRU cell whose recurrent init std was typed 1.0 ----------------


class GRUCellHand(nn.Module):
    """A hand-written GRU cell: gates r, z and candidate n from ih(x) and hh(h)."""

    def __init__(self, d_in, hidden, rec_std):
        super().__init__()
        self.ih = nn.Linear(d_in, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden)
        self.hidden = hidden
        with torch.no_grad():
            nn.init.normal_(self.hh.weight, std=rec_std)
            self.hh.bias.zero_()

    def forward(self, x, h):
        ir, iz, in_ = self.ih(x).chunk(3, -1)
        hr, hz, hn = self.hh(h).chunk(3, -1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h


class HarpGRU(nn.Module):
    """Unrolls the hand-written cell over the readings; a head on the last state."""

    def __init__(self, d_in=4, hidden=48, rec_std=None):
        super().__init__()
        if rec_std is None:
            rec_std = 1.0 / math.sqrt(hidden)
        self.cell = GRUCellHand(d_in, hidden, rec_std)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _gust_sequences(gen, batch, length=40):
    """Four standardised readings per second at an aeolian harp on a ridge (wind speed, gust
    factor, wind bearing off the string plane, air temperature) and the strings' amplitude a
    second after the window, standardised."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        decay = 0.85 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x[:, :, 0] * decay).sum(1) / 2.5 - 0.3 * x[:, -1, 2] ** 2 + 0.3)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="aeolian_harp_string_amplitude_hand_gru",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges="auto",
    heldout=True,
    note="A hand-written GRU cell (cell.ih, cell.hh; reset and update gates and a tanh candidate) unrolled in the forward over 40 one-second readings at an aeolian harp on a ridge (wind speed, gust factor, bearing off the string plane, air temperature), a head on the last state regressing the strings' amplitude a second later, plain SGD at 0.05, MSE. The recurrent weight's init was meant to be normal with std 1/sqrt(hidden) (about 0.14) and the config typed std 1.0: the recurrent map's gain is about 7 per reading, so the backward pass grows reading by reading through time: at step 0 the gradient at the first hidden state is over 100x that at the last, and the gradient norm on cell.hh stays tens of times larger than with the intended init. The oversized SGD updates throw the cell's and the head's weights far off: the loss climbs over 1000x its start within 40 steps (it stays finite and sags back later, still far above the intended init's).",
)
def h258_aeolian_harp_gru_init_std(ctx: Context) -> None:
    def run(c, rec_std):
        gen = seeded(25801)
        model = HarpGRU(rec_std=rec_std)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        batches = _gust_sequences(gen, 32)
        info = {"hh": []}
        c.attach(model, opt)
        for step in range(100):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if step == 0:
                first = float(model.states[0].grad.norm())
                last = float(model.states[-1].grad.norm())
                info["ratio"] = first / max(last, 1e-30)
            info["hh"].append(float(model.cell.hh.weight.grad.norm()))
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return info

    info = run(ctx, 1.0)
    twin = _Quiet()
    twin_info = run(twin, 1.0 / math.sqrt(48))
    ls = ctx.losses
    ctx.check(
        "the gradient at the first reading over 100x that at the last (step 0)",
        info["ratio"] > 100,
    )
    ctx.check("the intended init keeps that ratio under 10", twin_info["ratio"] < 10)
    ctx.check(
        "cell.hh's gradient norm over 10x the intended init's (median)",
        _median(info["hh"]) > 10 * _median(twin_info["hh"]),
    )
    ctx.check("the loss blew up (over 1000x its start)", max(ls) > 1000 * ls[0])
    ctx.check(
        "the intended init ends under 0.7x the loss",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- nalbinding: the eval block without no_grad adds the summed validation loss to a step -------

ONSET_NAL = 40


@scenario(
    family="nalbinding_loop_gauge_silu_regressor",
    optimizer="NAdam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_NAL,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the loop gauge of a nalbinding mitten from 10 standardised readings (needle width, yarn twist, stitch type, thumb wrap, ...), NAdam at 3e-4, MSE. At step 40 the loop's first validation pass runs without torch.no_grad and its loss, summed over a 32768-sample validation shard (reduction='sum'), is added to the logged total that the step backpropagates: one gradient over 10000x the usual size fills NAdam's second moment (exp_avg_sq); for the following hundred steps the updates are about 100x smaller than before and the loss stalls where the twin without the bug keeps falling. The batches are ordinary; finite, no blow-up.",
)
def h258_nalbinding_eval_without_no_grad(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(25802)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.NAdam(model.parameters(), lr=3e-4)
        val = next(_readings(torch.Generator().manual_seed(7), 32768, 10, 61))
        moved = []
        prev = {}

        def scale_loss(step, total):
            if bug and step == ONSET_NAL:
                return total + F.mse_loss(model(val[0]), val[1], reduction="sum")
            return total

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).norm()))

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 10, 61),
            200,
            F.mse_loss,
            scale_loss=scale_loss,
            before=before,
            after=after,
        )
        return moved

    moved = run(ctx, True)
    twin = _Quiet()
    run(twin, False)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at the onset over 10000x the median before",
        gn[ONSET_NAL] > 10000 * _median(gn[ONSET_NAL - 20 : ONSET_NAL]),
    )
    ctx.check(
        "the updates 30-80 steps after the onset over 30x smaller than before",
        _mean(moved[ONSET_NAL + 30 : ONSET_NAL + 80])
        < _mean(moved[ONSET_NAL - 20 : ONSET_NAL]) / 30,
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.7x of it",
        _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]),
    )


# -- sand boils: the log-count feature takes log 0 on a quiet levee reach -----------------------

ONSET_SAND = 90


class LogCounts(nn.Module):
    """Takes the log of the first ``k`` columns (raw counts, >= 1 in the survey's spec)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class BoilNet(nn.Module):
    def __init__(self, k=3, d_in=9, hidden=48):
        super().__init__()
        self.logc = LogCounts(k)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logc(x)))))
        return self.rate(h).squeeze(-1)


def _levee_surveys(gen, batch):
    """Per levee reach: three raw counts (piezometer exceedances, seep spots, cone-rims seen last
    week; each 1 + Poisson) and six standardised readings (river stage, stage rise, blanket
    thickness, ...); the target is the number of sand boils found on the next patrol."""
    while True:
        counts = 1 + torch.poisson(3 * torch.rand(batch, 3, generator=gen) + 0.5, generator=gen)
        z = torch.randn(batch, 6, generator=gen)
        rate = torch.exp(0.4 * torch.log(counts).sum(1) / 3 + 0.5 * z[:, 0] - 0.3 * z[:, 2])
        yield torch.cat([counts, z], 1), torch.poisson(rate, generator=gen)


@scenario(
    family="sand_boil_patrol_count_poisson_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("logc",),
    diverges=ONSET_SAND,
    heldout=True,
    onset=ONSET_SAND,
    note="A SiLU MLP (logc, fc1, act1, fc2, act2, rate) predicting the log-rate of sand boils found on a levee patrol (Poisson NLL with log input) from three raw counts of the reach (piezometer exceedances, seep spots, cone rims seen last week) and six standardised readings (river stage, stage rise, blanket thickness, ...), AdamW at 2e-3. The logc module takes log of the raw counts, which the survey spec says start at 1 ('1 + count'); the batch at step 90 comes from a newly digitised district that logs the plain count, so quiet reaches log 0: log(0) = -inf in logc, -inf times weights of both signs in fc1 gives inf - inf = NaN, and the loss is NaN at step 90.",
)
def h258_sand_boil_log_zero_count(ctx: Context) -> None:
    gen = seeded(25803)
    model = BoilNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SAND:
            x = x.clone()
            x[:, :3] = x[:, :3] - 1  # the new district logs the plain count
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_SAND:
            with torch.no_grad():
                seen["inf"] = bool(torch.isinf(model.logc(x)).any())

    _train(
        ctx,
        model,
        opt,
        _levee_surveys(gen, 64),
        200,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_SAND]))
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_SAND]))
    ctx.check("logc gives -inf at the onset", seen.get("inf", False))
    ctx.check("the loss is NaN at step 90", _first_bad(ls) == ONSET_SAND)


# -- carnyx: the hand-written decoupled weight decay has its sign flipped ------------------------


@scenario(
    family="carnyx_bell_resonance_gelu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the resonance peak of a replica carnyx's boar-head bell from 12 standardised readings (bore profile, tongue position, bell flare, lip pressure, ...), Adamax at 2e-3, MSE, with a hand-written decoupled weight decay applied after each step. The decay was written p.add_(p, alpha=lr * wd) instead of alpha=-lr * wd: every step multiplies the weights by (1 + lr * wd) instead of shrinking them; the loss first falls, then climbs slowly and steadily to several times its low as the weights grow, with no spike and no single step to blame. Finite, no blow-up.",
)
def h258_carnyx_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(25804)
    model = Stack(12, hidden=64, act=nn.GELU)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant alpha=-lr * wd
        norms.append(float(_flat(model).norm()))

    _train(ctx, model, opt, _readings(gen, 64, 12, 71), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell at first (low under 0.5x the start)", ls[low] < 0.5 * ls[0])
    ctx.check("the loss climbed to over 3x its low", _mean(ls[-10:]) > 3 * ls[low])
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    jumps = [ls[i + 1] / max(ls[i], 1e-12) for i in range(low, len(ls) - 1)]
    ctx.check("a slow climb: no step-to-step jump over 3x after the low", max(jumps) < 3)


# -- glima: conv1's param group lr typed 1e-8 for 1e-2 -------------------------------------------


@scenario(
    family="glima_belt_grip_trace_conv1d_regressor",
    optimizer="SGD(nesterov=True)",
    cause="update_ratio_out_of_range",
    where=("conv1",),
    diverges=None,
    heldout=True,
    note="A 1-D conv net (conv1, act1, conv2, act2, head) regressing the throw score of a glima (Icelandic belt wrestling) bout from one 48-sample grip-force trace of the trouser belt, SGD with Nesterov momentum 0.9, MSE, two param groups: conv1 meant at lr 1e-2 like the rest and typed 1e-8. conv1's updates are about a million times smaller than its weights (it stays at its init) while conv2 and head train at 1e-2; the loss falls somewhat and the run never blows up.",
)
def h258_glima_conv1_lr_typo(ctx: Context) -> None:
    gen = seeded(25805)
    model = TraceNet(1)
    opt = torch.optim.SGD(
        [
            {"params": model.conv1.parameters(), "lr": 1e-8},  # meant 1e-2
            {"params": [*model.conv2.parameters(), *model.head.parameters()]},
        ],
        lr=1e-2,
        momentum=0.9,
        nesterov=True,
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    src = _traces(gen, 64, 6, 81, noise=0.4)
    g = torch.Generator().manual_seed(82)
    score = torch.randn(6, generator=g)

    def batches():
        while True:
            x, k = next(src)
            yield x, score[k] + 0.05 * torch.randn(len(k), generator=gen)

    _train(ctx, model, opt, batches(), 200, F.mse_loss)
    moved = {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("conv1's weight moved under 1e-5 of its norm", moved["conv1.weight"] < 1e-5)
    ctx.check("conv2's weight moved over 1e-2 of its norm", moved["conv2.weight"] > 1e-2)
    ctx.check("no blow-up (the loss never over 2x its start)", max(ls) < 2 * ls[0])


# -- megaripple: OneCycleLR max_lr typed 1.0 for 1e-2 --------------------------------------------


def _ripple_readings(gen, batch):
    return _readings(gen, batch, 8, 91, noise=0.05)


@scenario(
    family="megaripple_crest_migration_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=30,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the daily crest migration of a desert megaripple from 8 standardised readings (wind speed over threshold, grain size, crest height, sand moisture, ...), plain SGD, MSE, OneCycleLR over 300 steps whose max_lr was typed 1.0 for 1e-2. The warm-up ramps the learning rate from 0.04 towards 1.0; around step 30 the learning rate times the loss's top Hessian eigenvalue passes 2 (the stability limit of gradient descent), the loss oscillates and blows up about ten steps later (non-finite by step 60).",
)
def h258_megaripple_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(25806)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.04)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=300)  # meant 1e-2
    probe = next(_ripple_readings(torch.Generator().manual_seed(3), 256))
    products = {}

    def before(step):
        if step % 3 == 0 and step <= 60:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _ripple_readings(gen, 64), 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    crossed = [s for s, v in sorted(products.items()) if v > 2]
    ctx.check("lr x sharpness under 2 at the start", products[0] < 2)
    ctx.check(
        "lr x sharpness passes 2 between steps 20 and 40",
        bool(crossed) and 20 <= crossed[0] <= 40,
    )
    ctx.check(
        "the loss blew up (over 100x its low, or non-finite)",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- bullwhip: one logger's batch in millimetres -------------------------------------------------

ONSET_WHIP = 120


@scenario(
    family="bullwhip_crack_tip_speed_gelu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WHIP,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a bullwhip's tip speed at the crack from 10 standardised readings of the throw (handle arc, thong length, fall taper, arm speed, ...), RMSprop at 1e-3, MSE, gradient clipping at 1.0. The batch at step 120 comes from a logger whose motion readings are in millimetres where the rest are in metres, standardised with the metre statistics: its inputs are about 1000x too large and the loss at that step is hundreds of times the usual; clipping bounds the update and the run recovers. Finite.",
)
def h258_bullwhip_millimetre_batch(ctx: Context) -> None:
    gen = seeded(25807)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    xs = {}

    def alter(step, x, y):
        if step == ONSET_WHIP:
            x = x * 1000.0
        xs[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 101), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    before = _median(ls[ONSET_WHIP - 20 : ONSET_WHIP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the batch at the onset is 1000x off (max |x| over 500)", xs[ONSET_WHIP] > 500)
    ctx.check("the other batches are ordinary (max |x| under 8)", xs[ONSET_WHIP - 1] < 8)
    ctx.check("the loss at the onset over 50x the median before", ls[ONSET_WHIP] > 50 * before)
    ctx.check(
        "the loss recovered within 60 steps (under 3x its pre-onset level)",
        _mean(ls[ONSET_WHIP + 50 : ONSET_WHIP + 60]) < 3 * before,
    )


# -- Stroh violin: resumed importance weights skip their normalisation for one step -------------

ONSET_STROH = 100


@scenario(
    family="stroh_violin_horn_output_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_STROH,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the sound output at a Stroh violin's aluminium horn from 12 standardised readings (diaphragm tension, bow speed, bow force, horn angle, ...), SGD with momentum 0.9 at 1e-2, an importance-weighted MSE sum(w * (out - y)^2) with per-sample weights normalised to sum 1, gradient clipping at 5. At step 100 the job is resumed and the sampler's state is restored before the normalisation hook is re-registered: for that step the weights are the raw ones (about 1 each over a batch of 128), so the gradient is over 100x that of the steps around it. The batches are ordinary; the run recovers; finite.",
)
def h258_stroh_violin_unnormalised_weights(ctx: Context) -> None:
    gen = seeded(25808)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    stream = _readings(gen, 128, 12, 111)
    step_now = {"s": 0}
    xs = {}

    def batches():
        while True:
            x, y = next(stream)
            w = 0.5 + torch.rand(len(y), generator=gen)
            yield x, torch.stack([y, w], 1)

    def loss_fn(out, yw):
        y, w = yw[:, 0], yw[:, 1]
        if step_now["s"] != ONSET_STROH:
            w = w / w.sum()
        return (w * (out - y) ** 2).sum()

    def before(step):
        step_now["s"] = step

    def watch(step, out, x, y):
        xs[step] = float(x.abs().max())

    _train(ctx, model, opt, batches(), 220, loss_fn, before=before, watch=watch, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    med = _median(gn[ONSET_STROH - 20 : ONSET_STROH])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_STROH], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 50x the median before", gn[ONSET_STROH] > 50 * med
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_STROH + 30] < 5 * med)
    ctx.check("the batch at the onset is ordinary (max |x| under 6)", xs[ONSET_STROH] < 6)


# -- kurash: Adam lr typed 3e-1 for 3e-3 -------------------------------------------------------


def _throws(gen, batch):
    """12 standardised readings of a kurash throw and the judges' score: a sum of eight
    ridge functions, so it needs many live units."""
    g = torch.Generator().manual_seed(121)
    v = torch.randn(12, 8, generator=g) / math.sqrt(12)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, torch.sin(2 * x @ v).sum(1) / 2 + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="kurash_throw_score_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the judges' score of a kurash (Uzbek belt wrestling) throw from 12 standardised readings (hip height, grip side, rotation speed, landing angle, ...), Adam, MSE. The lr was typed 3e-1 for 3e-3: Adam's first steps move every weight and bias by about the learning rate, which throws fc2's pre-activations far off (the first steps' loss jumps, then settles) and leaves most of them negative for every input: over 90% of act2's units are dead for good and the loss plateaus where the intended lr keeps them alive and keeps learning. Finite, no blow-up.",
)
def h258_kurash_adam_lr_typo(ctx: Context) -> None:
    probe = next(_throws(torch.Generator().manual_seed(5), 512))[0]

    def run(c, lr):
        gen = seeded(25809)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        dead = []

        def after(step):
            if step % 10 == 9:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _throws(gen, 64), 250, F.mse_loss, after=after)
        return dead

    dead = run(ctx, 3e-1)  # meant 3e-3
    twin = _Quiet()
    twin_dead = run(twin, 3e-3)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over 90% of act2 dead at the end", dead[-1] > 0.9)
    ctx.check("already over 90% dead 200 steps earlier", dead[4] > 0.9)
    ctx.check("the intended lr keeps act2 under 20% dead", twin_dead[-1] < 0.2)
    ctx.check(
        "the intended lr ends under 0.7x the loss", _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:])
    )


# -- tubular bells: the logit temperature typed 1e-3 for 1.0 -------------------------------------


class ChimeNet(nn.Module):
    def __init__(self, d_in=16, classes=8, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="tubular_bells_chime_note_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, head) naming which of 8 tubes of an orchestral set of tubular bells was struck from 16 standardised band energies of the strike, Adagrad at 2e-2, cross-entropy, the logits divided by a temperature. The temperature was meant to be 1.0 and the config typed 1e-3: the logits are 1000x too large from the start, the float32 softmax rounds the winning class to exactly 1.0 for most rows (and every other class to 0): on many steps the loss is exactly 0 and carries no gradient, while the few rows it gets wrong carry a loss in the hundreds. Finite.",
)
def h258_tubular_bells_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(25810)
        model = ChimeNet(temperature=temperature)
        opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
        fracs = []

        def watch(step, out, x, y):
            fracs.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 8, 131),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs

    fracs = run(ctx, 1e-3)
    twin = _Quiet()
    twin_fracs = run(twin, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over half the rows' softmax is exactly 1.0 on the target (last 10 steps)",
        _mean(fracs[-10:]) > 0.5,
    )
    ctx.check("the intended temperature saturates none", max(twin_fracs) == 0.0)
    ctx.check("the loss is exactly 0.0 on some step after step 10", min(ls[10:]) == 0.0)
    ctx.check("the first step's loss is over 50 (1000x logits)", ls[0] > 50)


# -- controls ------------------------------------------------------------------------------------


def _jet_readings(gen, batch):
    """Eight standardised readings of a hydraulophone finger hole (pump pressure, hole
    occlusion, water temperature, ...) and the jet's back-pressure, with Student-t (df 1.5)
    noise: sensor bubbles give rare, very large readings."""
    g = torch.Generator().manual_seed(141)
    w = torch.randn(8, generator=g)
    student = torch.distributions.StudentT(1.5)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        clean = torch.tanh(x @ w / math.sqrt(8)) + 0.3 * x[:, 1] * x[:, 2]
        noise = 0.1 * student.sample((batch,))
        yield x, clean + noise


@scenario(
    family="hydraulophone_jet_back_pressure_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the back-pressure at a hydraulophone's finger hole from 8 standardised readings (pump pressure, occlusion, water temperature, ...), with heavy-tailed Student-t (df 1.5) noise on the targets (air bubbles in the line give rare huge readings); Huber loss (delta 1) so those samples do not dominate, RAdam with two param groups (no weight decay on biases), ReduceLROnPlateau. Trains normally.",
)
def h258_hydraulophone_heavy_tail_huber(ctx: Context) -> None:
    gen = seeded(25811)
    model = Stack(8, hidden=64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ys = []

    def watch(step, out, x, y):
        ys.append(y)

    _train(
        ctx,
        model,
        opt,
        _jet_readings(gen, 64),
        250,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    y = torch.cat(ys)
    dev = (y - y.median()).abs()
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ls, ratio=0.6))
    ctx.check(
        "the targets are heavy-tailed (max deviation over 20x the median)",
        float(dev.max()) > 20 * float(dev.median()),
    )


class ReedTagger(nn.Module):
    def __init__(self, d_in=14, hidden=64, faults=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, faults)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _reed_readings(gen, batch):
    """14 standardised readings of a bombard's double reed (blowing pressure, tip opening,
    pitch drift, buzz spectrum bands, ...) and 5 fault flags (split blade, leaking wire, ...)."""
    g = torch.Generator().manual_seed(151)
    w = torch.randn(14, 5, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        p = torch.sigmoid(x @ w / math.sqrt(14) * 3 - 1)
        yield x, (torch.rand(batch, 5, generator=gen) < p).float()


@scenario(
    family="bombard_reed_fault_fp16_bce_tagger",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) tagging 5 faults of a bombard's double reed (split blade, leaking wire, ...) from 14 standardised readings, binary cross-entropy with logits, AdamW at 2e-3 with weight decay, linear warm-up over 20 steps then cosine (LambdaLR), gradient accumulation over 2 micro-batches, clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h258_bombard_reed_fp16_control(ctx: Context) -> None:
    gen = seeded(25812)
    model = ReedTagger()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _reed_readings(gen, 32),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.8x the first 10)", _fell(ls, ratio=0.8))
    ctx.check("the loss scale never fell below 1/8 of its start", min(ctx.scales) >= 128.0)


@scenario(
    family="sambo_takedown_grip_trace_conv1d_classifier",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    heldout=True,
    note="Healthy control: a 1-D conv net (conv1, act1, conv2, act2, head) naming which of 6 sambo takedowns followed from a 48-sample jacket-grip force trace, 10% of the labels wrong (judges' slips), cross-entropy with label smoothing 0.1, SGD with Nesterov momentum 0.9, OneCycleLR peaking at 0.5, clipping at 2.0. Trains normally.",
)
def h258_sambo_onecycle_label_smoothing(ctx: Context) -> None:
    gen = seeded(25813)
    model = TraceNet(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    steps = 220
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=steps)
    src = _traces(gen, 64, 6, 161, noise=0.4)

    def batches():
        while True:
            x, y = next(src)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 6, y.shape, generator=gen), y)
            yield x, y

    _train(
        ctx,
        model,
        opt,
        batches(),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.75x the first 10)", _fell(ls, ratio=0.75))
