"""Held-out set 281 (``h281_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an avalanche-dog scent-cone BCE tagger whose head param
group lr was typed 3e-9 for 3e-3, a fire-rainbow crystal-tilt classifier whose temperature was
read in percent, a watercress-bed nitrate regressor whose static loss scale was left on for one
step after a resume (Adam), a rushlight burn-time regressor whose energy feature is a sum of
squares in fp16 under autocast, a tule-fog visibility Gaussian-NLL net whose scale lost its
clamp before the log, a fen-skating lap-split regressor fed one shard logged in centiseconds, a
corrie-glacier deep leaky MLP initialised with a std copied from a narrower net, a stook
drying regressor whose hand-rolled L2 term has its sign flipped, a flail-threshing beat tagger
whose masked-mean normaliser came out as 1 for one batch, a snow-fence drift-depth regressor
whose warm-up lambda lost its cap, and three controls (a Cornish-wrestling throw classifier
with SGD and a cyclic learning rate, a dry-fly cast classifier with a frozen pretrained-like
encoder and a trainable head under AdamW and OneCycleLR, a bullock-cart pull regressor with
Adagrad, ReduceLROnPlateau, accumulation and clipping).

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


class _Twin:
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
    alter=None,
    backward_scale=None,
    grad_hook=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``backward_scale(step)``
    multiplies what is backpropagated, ``grad_hook(step)`` edits gradients before the step,
    ``after(step)`` runs after the optimizer step; stops after logging a non-finite loss."""
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
            out = out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)
            if hasattr(loss_fn, "step_loss"):  # a loss that depends on the step
                loss = loss_fn.step_loss(step, out, y)
            else:
                loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if backward_scale is not None:
                total = total * backward_scale(step)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if grad_hook is not None:
            grad_hook(step)
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
        if not math.isfinite(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings (times ``scale``) and a smooth nonlinear target of unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield scale * x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- avalanche dog: the head's param-group lr was typed 3e-9 for 3e-3 ---------------------------


def _scent(gen, batch, seed, d_in=16, sectors=5):
    """Wind, slope and snow readings; which of 5 search sectors the scent cone covers."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, sectors, generator=g)
    v = torch.randn(d_in, sectors, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in) + 0.8 * torch.sin(x @ v / math.sqrt(d_in) * 2)
        yield x, (z > 0.2).float()


@scenario(
    family="avalanche_dog_scent_cone_two_group_bce_tagger",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging which of 5 search sectors an avalanche dog's scent cone covers from 16 wind, slope and snow readings, BCE with logits, AdamW with two param groups (body at 3e-3, head at its own rate). The head group's lr was typed 3e-9 for 3e-3 in the config: the head's per-step update is under 1e-6 of its weights (the body's is over 1e-4), it barely moves over 250 steps while the body trains alone through a random head (the loss still falls, the body compensates). Finite, no blow-up.",
)
def h281_avalanche_dog_head_lr_typo(ctx: Context) -> None:
    def run(c, head_lr):
        gen = seeded(28101)
        model = Stack(16, hidden=64, out=5)
        body = [p for n, p in model.named_parameters() if not n.startswith("head")]
        opt = torch.optim.AdamW(
            [
                {"params": body, "lr": 3e-3, "weight_decay": 1e-2},
                {"params": model.head.parameters(), "lr": head_lr, "weight_decay": 1e-2},
            ]
        )
        ratios = {"head": [], "fc2": []}
        prev = {}

        def before(step):
            prev["head"] = _flat(model.head)
            prev["fc2"] = _flat(model.fc2)

        def after(step):
            for k in ratios:
                now = _flat(getattr(model, k))
                ratios[k].append(float((now - prev[k]).norm() / now.norm()))

        head0 = _flat(model.head)
        _train(
            c,
            model,
            opt,
            _scent(gen, 64, 7),
            250,
            F.binary_cross_entropy_with_logits,
            before=before,
            after=after,
        )
        moved = float((_flat(model.head) - head0).norm() / head0.norm())
        return ratios, moved

    twin = _Twin()
    run(twin, 3e-3)
    ratios, moved = run(ctx, 3e-9)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's update ratio stays under 1e-6", max(ratios["head"]) < 1e-6)
    ctx.check("fc2's median update ratio is over 1e-4", _median(ratios["fc2"]) > 1e-4)
    ctx.check("the head moved under 1e-4 of its norm over the run", moved < 1e-4)
    ctx.check(
        "the head's median update ratio is over 1e3x smaller than fc2's",
        _median(ratios["head"]) * 1e3 < _median(ratios["fc2"]),
    )
    ctx.check("the loss fell (the body trains)", _fell(ls, k=20, ratio=0.7))


# -- fire rainbow: the temperature was read in percent --------------------------------------------


class TiltNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=7, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="fire_rainbow_crystal_tilt_temperature_classifier",
    optimizer="SGD Nesterov",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 7 plate-crystal tilt regimes produced a fire rainbow (circumhorizontal arc) from 12 readings (sun elevation, cirrus depth, colour band widths, ...), SGD Nesterov 0.9 at 2e-3, cross-entropy. The logits are divided by a temperature that the config gives as 1 (percent, meaning 1.0) and the loader reads as 0.01: the head's logits are 100x too sharp: the gap between the top two logits is over 20 on the median row and most rows' float32 softmax is exactly 1.0 on one class from step 100 on (the twin with temperature 1.0 keeps gaps of a few units and never rounds to 1). Finite, no blow-up.",
)
def h281_fire_rainbow_temperature_percent(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(28102)
        model = TiltNet(temperature=temperature)
        opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
        fracs = []
        worst = []

        def watch(step, out, x, y):
            if step >= 100:
                fracs.append(collapsed_fraction(out.detach(), out.detach().argmax(1)))
                top2 = out.detach().topk(2, dim=1).values
                worst.append(_median((top2[:, 0] - top2[:, 1]).tolist()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 12, 7, 19, noise=0.5),
            200,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs, worst

    twin = _Twin()
    twin_fracs, twin_worst = run(twin, 1.0)
    fracs, worst = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the rows' softmax is exactly 1.0 (steps 100+)", _median(fracs) > 0.5)
    ctx.check("the twin's collapsed fraction stays under 0.05", max(twin_fracs) < 0.05)
    ctx.check(
        "the median top-2 logit gap is over 20 on steps 100+ (the twin's under 5)",
        _median(worst) > 20 and _median(twin_worst) < 5,
    )


# -- watercress: the static loss scale was left on for one step after a resume -------------------

ONSET_CRESS = 100


@scenario(
    family="watercress_bed_nitrate_uptake_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CRESS,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a watercress bed's nitrate uptake from 10 readings (flow, water temperature, light, bed age, ...), Adam at 1e-3, MSE, fp32. The loop carries a static loss scale of 65536 from an earlier fp16 config; it is meant to be off in fp32, but on the step after a checkpoint resume (step 100) the resume path re-enables it for one step and the scaled loss is backpropagated without unscaling: one gradient 65536x the usual fills Adam's second moment (exp_avg_sq jumps by over 1e6x), and with beta2 0.999 it stays there: the step itself kicks the weights (the loss rises to about twice its level), and once the first moment has decayed the updates are over 5x smaller than before the step and the loss stays above 1.5x its earlier level, ending over 1.3x the twin's. The logged loss is the unscaled one, the data are ordinary. Finite, no blow-up.",
)
def h281_watercress_loss_scale_left_on(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(28103)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        upd = []
        v_max = []
        prev = {}

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            upd.append(float((_flat(model) - prev["w"]).norm()))
            v_max.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

        def backward_scale(step):
            return 65536.0 if (bug and step == ONSET_CRESS) else 1.0

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 10, 23, noise=0.1),
            300,
            F.mse_loss,
            before=before,
            after=after,
            backward_scale=backward_scale,
        )
        return upd, v_max

    twin = _Twin()
    run(twin, False)
    upd, v_max = run(ctx, True)
    ls, gn = ctx.losses, ctx.grad_norms
    o = ONSET_CRESS
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at step 100 is over 1e4x the median before", gn[o] > 1e4 * _median(gn[:o])
    )
    ctx.check("exp_avg_sq's peak jumped over 1e6x", v_max[o] > 1e6 * v_max[o - 1])
    ctx.check(
        "updates 60-150 steps later are over 5x smaller than before the step",
        _mean(upd[o + 60 : o + 150]) < _mean(upd[o - 40 : o]) / 5,
    )
    ctx.check(
        "the loss stalls: 60-150 steps later over 1.5x its level before the step",
        _median(ls[o + 60 : o + 150]) > 1.5 * _median(ls[o - 30 : o]),
    )
    ctx.check(
        "the logged loss at step 100 is ordinary (under 3x the median before)",
        ls[o] < 3 * _median(ls[o - 30 : o]),
    )
    ctx.check(
        "the loss ends over 1.3x the twin's", _mean(ls[-20:]) > 1.3 * _mean(twin.losses[-20:])
    )


# -- rushlight: the energy feature is a sum of squares in fp16 -----------------------------------

ONSET_RUSH = 150


class Energy(nn.Module):
    """Sum of squares of the projections, as a batched dot product."""

    def forward(self, h):
        return (h.unsqueeze(1) @ h.unsqueeze(-1)).reshape(-1, 1)


class RushNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.energy = Energy()
        self.fc2 = nn.Linear(hidden + 1, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.fc1(x)
        e = self.energy(h)
        hn = h / torch.sqrt(e / h.shape[-1] + 1e-3)
        return self.head(self.act(self.fc2(torch.cat([hn, torch.log(e + 1.0)], -1)))).squeeze(-1)


def _flame(gen, batch, seed):
    """Photodiode and thermocouple readings in raw ADC counts (tens), log burn-rate target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    v = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / 3) + 0.5 * torch.cos(z @ v / 3)
        yield 30.0 * z, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="rushlight_pith_burn_rate_fp16_energy_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("energy",),
    diverges=ONSET_RUSH,
    heldout=True,
    onset=ONSET_RUSH,
    note="A regressor of a rushlight's burn rate (log mm/min) from 8 photodiode and thermocouple readings in raw ADC counts (tens): fc1 projects them, energy takes the sum of squares of the projections as a batched dot product (h @ h), the projections are RMS-normalised by it and log(energy) is appended, fc2, act (SiLU), head; NAdam at 1e-3, Huber loss, fp16 autocast with a torch.amp.GradScaler. The design is scale-safe in fp32, but under autocast the batched matmul returns fp16: at step 150 the logger switches its gain range (readings 6x, a valid batch whose fp32 loss is ordinary) and the energy passes 65504, overflows to inf, log(inf) into fc2 and SiLU gives NaN, and the loss is NaN at step 150. The fp32 twin on the same data stays finite.",
)
def h281_rushlight_fp16_energy_matmul(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(28104)
        model = RushNet()
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        seen = {}

        def alter(step, x, y):
            if step >= ONSET_RUSH:
                x = 6.0 * x
            return x, y

        def watch(step, out, x, y):
            if step == ONSET_RUSH and amp:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                    e = model.energy(model.fc1(x))
                    seen["inf"] = bool(torch.isinf(e).any())
                    seen["dtype"] = str(e.dtype)
                with torch.no_grad():
                    seen["e32"] = float(model.energy(model.fc1(x)).max())
                    seen["fp32_loss"] = float(F.huber_loss(model(x), y))

        _train(
            c,
            model,
            opt,
            _flame(gen, 64, 31),
            200,
            F.huber_loss,
            scaler=scaler,
            amp=amp,
            alter=alter,
            watch=watch,
        )
        return seen

    twin = _Twin()
    run(twin, False)
    seen = run(ctx, True)
    ls = ctx.losses
    o = ONSET_RUSH
    ctx.check("finite before step 150", _finite(ls[:o]))
    ctx.check("the loss fell before it", _fell(ls[:o], ratio=0.7))
    ctx.check("the loss is non-finite at step 150", _first_bad(ls) == o)
    ctx.check("the energy is computed in fp16", seen.get("dtype") == "torch.float16")
    ctx.check("the energy passed 65504 (fp32 value)", seen.get("e32", 0) > 65504)
    ctx.check("the fp16 energy overflowed to inf", seen.get("inf", False))
    ctx.check(
        "in fp32 the same batch gives an ordinary loss (under 10x the median)",
        seen.get("fp32_loss", math.inf) < 10 * _median(ls[o - 30 : o]),
    )
    ctx.check("the fp32 twin stays finite", _finite(twin.losses) and len(twin.losses) == 200)


# -- tule fog: the scale lost its clamp before the log -------------------------------------------


class Log(nn.Module):
    def forward(self, s):
        return torch.log(s)


class FogNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, clamp=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)
        self.log_sigma = Log()
        self.clamp = clamp
        nn.init.zeros_(self.scale_head.weight)
        nn.init.constant_(self.scale_head.bias, 1.0)
        self.last_min_sigma = 1.0

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        sigma = self.scale_head(h).squeeze(-1)
        if self.clamp:
            sigma = sigma.clamp_min(1e-3)
        self.last_min_sigma = float(sigma.detach().min())
        return self.mean_head(h).squeeze(-1), sigma, self.log_sigma(sigma)


def _fog_nll(out, y):
    mu, sigma, log_sigma = out
    return (log_sigma + 0.5 * ((y - mu) / sigma) ** 2).mean()


def _fog(gen, batch, seed):
    """Dew-point depression, wind, inversion height, ...; log visibility with noise that depends
    on the inversion strength."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        mu = torch.tanh(x @ w / 3)
        s = 0.03 + 0.25 * torch.sigmoid(2 * x[:, 0])
        yield x, mu + s * torch.randn(batch, generator=gen)


ONSET_FOG = 0
DIVERGE_FOG = 155


@scenario(
    family="tule_fog_visibility_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("log_sigma",),
    diverges=DIVERGE_FOG,
    heldout=True,
    note="A heteroscedastic ReLU net (fc1, act1, fc2, act2, mean_head, scale_head, log_sigma) forecasting log visibility in tule fog from 10 readings (dew-point depression, wind, inversion height, ...) with a Gaussian NLL, RMSprop at 2e-4. The scale head's output is used as sigma directly: the softplus/clamp that should keep it positive was dropped in a refactor, and log_sigma takes torch.log of it. The scale head starts at weight 0, bias 1.0, so sigma is 1 at first; as the fit sharpens the NLL drives sigma down, at step 155 one sample's sigma crosses below 0, log of a negative number is NaN and the loss is NaN. The twin with the clamp stays finite.",
)
def h281_tule_fog_sigma_clamp_dropped(ctx: Context) -> None:
    def run(c, clamp):
        gen = seeded(28105)
        model = FogNet(clamp=clamp)
        opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
        mins = []

        def watch(step, out, x, y):
            mins.append(float(out[1].detach().min()))

        _train(c, model, opt, _fog(gen, 64, 43), 300, _fog_nll, watch=watch)
        return mins

    twin = _Twin()
    run(twin, True)
    mins = run(ctx, False)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("sigma is positive at the start", mins[0] > 0)
    ctx.check(f"the loss is first non-finite at step {DIVERGE_FOG}", bad == DIVERGE_FOG)
    ctx.check("a sigma is negative on that step", bad is not None and mins[bad] < 0)
    ctx.check("the loss fell before it", bad is not None and ls[bad - 1] < ls[0])
    ctx.check("the clamped twin stays finite", _finite(twin.losses) and len(twin.losses) == 300)


# -- fen skating: one shard logged in centiseconds ------------------------------------------------

ONSET_FEN = 120


@scenario(
    family="fen_skating_lap_split_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FEN,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a fen skater's lap split (seconds off the course record) from 12 readings (ice temperature, wind, stride rate, ...), SGD momentum 0.9 at 0.01, MSE. One shard from a timing club logged the splits in centiseconds: the batch at step 120 has targets 100x too large, the loss on it is over 1000x the usual and the gradient over 30x; the weights take one big kick, the loss stays high for a few steps and the run recovers. The other batches are ordinary; no blow-up.",
)
def h281_fen_skating_centisecond_shard(ctx: Context) -> None:
    gen = seeded(28106)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_FEN:
            seen["ratio"] = 100.0
            y = 100.0 * y
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 12, 53, noise=0.1), 250, F.mse_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    o = ONSET_FEN
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the loss at step 120 is over 1000x the median before",
        ls[o] > 1000 * _median(ls[o - 30 : o]),
    )
    ctx.check(
        "the gradient at step 120 is over 30x the median before",
        gn[o] > 30 * _median(gn[o - 30 : o]),
    )
    ctx.check(
        "the loss recovers to under 2x the median before within 60 steps",
        _median(ls[o + 60 : o + 80]) < 2 * _median(ls[o - 30 : o]),
    )
    ctx.check("the loss fell before the shard", _fell(ls[:o], ratio=0.7))


# -- corrie glacier: init std copied from a narrower net ------------------------------------------


class DeepLeaky(nn.Module):
    def __init__(self, d_in=10, width=96, depth=10, std=None):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        mods: list[nn.Module] = []
        for i in range(depth):
            lin = nn.Linear(sizes[i], sizes[i + 1])
            if std is not None:
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
            mods.append(lin)
            if i < depth - 1:
                mods.append(nn.LeakyReLU(0.1))
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x).squeeze(-1)


@scenario(
    family="corrie_glacier_ice_flow_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A 10-layer LeakyReLU MLP (layers.0 ... layers.18, width 96) regressing the surface flow speed of a corrie glacier from 10 standardised readings (bed slope, ice thickness, melt, aspect, ...), plain SGD at 1e-3, MSE. The init was copied from a 16-wide prototype: normal std 0.2 (He for width 96 would be about 0.144), so every layer amplifies by about 1.4 and the backward signal grows through the depth: at step 0 the gradient norm is over 100x the He-initialised twin's and the backward signal at layers.0's output is over 10x that at the head's; the first SGD steps blow the weights up and the loss is non-finite within the first 10 steps. The twin with He init stays finite.",
)
def h281_corrie_glacier_init_std_copied(ctx: Context) -> None:
    def run(c, std):
        gen = seeded(28107)
        model = DeepLeaky(std=std)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        seen = {}
        acts = {}

        def hook(name):
            def f(mod, gin, gout):
                acts[name] = float(gout[0].norm())

            return f

        model.layers[0].register_full_backward_hook(hook("first"))
        model.layers[18].register_full_backward_hook(hook("last"))

        def after(step):
            if step == 0:
                seen.update(acts)

        _train(c, model, opt, _readings(gen, 64, 10, 61, noise=0.1), 150, F.mse_loss, after=after)
        return seen

    twin = _Twin()
    run(twin, math.sqrt(2 / 96))
    seen = run(ctx, 0.2)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "layers.0's output gradient is over 10x the last layer's at step 0",
        seen.get("first", 0) > 10 * seen.get("last", math.inf),
    )
    ctx.check(
        "the loss blew up: non-finite or over 1000x its start",
        _first_bad(ls) is not None or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm at step 0 is over 100x the He-initialised twin's",
        gn[0] > 100 * twin.grad_norms[0],
    )
    ctx.check(
        "the He-initialised twin stays finite", _finite(twin.losses) and len(twin.losses) == 150
    )
    ctx.check("finite at step 0", math.isfinite(gn[0]) and math.isfinite(ls[0]))


# -- stook: the hand-rolled L2 term has its sign flipped ------------------------------------------


@scenario(
    family="stook_sheaf_drying_moisture_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the grain moisture of a stook of sheaves left to dry in the field from 8 readings (days standing, humidity, wind, sheaf size, ...), Adamax at 2e-2, MSE. Weight decay is hand-rolled in the loop as an L2 gradient term, written grad -= wd * p (copied from a gradient-ascent snippet) with wd 0.05: once the fit is close, the flipped term outweighs the data gradient on more and more weights, they are pushed away from zero at Adamax's full rate, and the loss, after falling, climbs slowly and steadily to many times its minimum. The twin with the right sign trains. The data are ordinary.",
)
def h281_stook_l2_sign_flipped(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(28108)
        model = Stack(8, hidden=48, act=nn.SiLU)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
        norms = []

        def grad_hook(step):
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.grad.add_(p.detach(), alpha=sign * 0.05)

        def after(step):
            norms.append(float(_flat(model).norm()))

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 8, 71, noise=0.05),
            300,
            F.mse_loss,
            grad_hook=grad_hook,
            after=after,
        )
        return norms

    twin = _Twin()
    run(twin, 1.0)
    norms = run(ctx, -1.0)
    ls = ctx.losses
    lo = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first (minimum under 0.5x the start)", ls[lo] < 0.5 * ls[0])
    ctx.check("the loss ends over 5x its minimum", _mean(ls[-10:]) > 5 * ls[lo])
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("the twin stays low", _mean(twin.losses[-10:]) < 2 * min(twin.losses))


# -- flail threshing: the masked-mean normaliser came out as 1 for one batch ---------------------

ONSET_FLAIL = 110


class BeatTagger(nn.Module):
    def __init__(self, classes=3, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Conv1d(width, classes, 1)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x[:, None])))))


def _beats(gen, batch, length=48):
    """Accelerometer traces of a flail on the threshing floor: per position, no beat (0), a clean
    beat (1, a sharp pulse) or a glancing blow (2, a broad weak pulse); padded ends masked."""
    t = torch.arange(length).float()
    while True:
        y = torch.zeros(batch, length, dtype=torch.long)
        x = 0.2 * torch.randn(batch, length, generator=gen)
        for _ in range(4):
            pos = torch.randint(2, length - 2, (batch,), generator=gen)
            kind = torch.randint(1, 3, (batch,), generator=gen)
            width = torch.where(kind == 1, 0.8, 2.5)
            amp = torch.where(kind == 1, 2.0, 0.8)
            x = x + amp[:, None] * torch.exp(-(((t - pos[:, None]) / width[:, None]) ** 2))
            y[torch.arange(batch), pos] = kind
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
        mask = (t[None] < lengths[:, None]).float()
        yield x * mask, (y, mask)


class _MaskedCE:
    def __init__(self, bug_step=None):
        self.bug_step = bug_step

    def step_loss(self, step, out, target):
        y, mask = target
        ce = F.cross_entropy(out, y, reduction="none")
        count = mask.sum()
        if step == self.bug_step:
            count = torch.ones(())  # the loader's count field was a placeholder for this batch
        return (ce * mask).sum() / count


@scenario(
    family="flail_threshing_beat_conv1d_tagger",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FLAIL,
    note="A Conv1d tagger (conv1, act1, conv2, act2, head) labelling each position of a flail's accelerometer trace on the threshing floor as no beat, a clean beat or a glancing blow, SGD momentum 0.9 at 0.05, masked cross-entropy normalised by the number of valid positions. For the batch at step 110 the loader's valid-count field was a placeholder 1 (the batch itself is ordinary): the masked sum is divided by 1 instead of about 1100, the backpropagated (and logged) loss and the gradient are hundreds of times the usual for that one step, the weights take one kick, and the run recovers. Finite, no blow-up.",
)
def h281_flail_threshing_mask_count_placeholder(ctx: Context) -> None:
    gen = seeded(28109)
    model = BeatTagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    true = {}

    def watch(step, out, x, y):
        if step == ONSET_FLAIL:
            true["loss"] = float(_MaskedCE().step_loss(step, out.detach(), y))

    _train(ctx, model, opt, _beats(gen, 32), 250, _MaskedCE(ONSET_FLAIL), watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    o = ONSET_FLAIL
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at step 110 is over 100x the median before",
        gn[o] > 100 * _median(gn[o - 30 : o]),
    )
    ctx.check(
        "the batch's correctly normalised loss is ordinary (under 2x the median before)",
        true.get("loss", math.inf) < 2 * _median(ls[o - 30 : o]),
    )
    ctx.check(
        "the loss recovers to under 1.5x the median before within 80 steps",
        _median(ls[o + 80 : o + 100]) < 1.5 * _median(ls[o - 30 : o]),
    )
    ctx.check("the loss fell before it", _fell(ls[:o], ratio=0.7))


# -- snow fence: the warm-up lambda lost its cap --------------------------------------------------


def _top_eig(model, x, y, iters=15):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


ONSET_SNOW = 70


@scenario(
    family="snow_fence_drift_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_SNOW,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the depth of the drift a snow fence builds from 6 readings (wind speed, fetch, fence porosity, height, ...), plain SGD at a peak of 0.2 with a 40-step linear warm-up, MSE, batch 256. The warm-up LambdaLR was written lambda s: s / 40 and lost its min(1, ...): the lr keeps climbing linearly after the warm-up; lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch) is well under 2 at first and crosses the 2/sharpness limit at about step 70; the loss oscillates at the edge for a while as the lr keeps rising, then blows up (NaN at about step 180). The twin with the cap stays under the limit and trains. The batches are ordinary.",
)
def h281_snow_fence_warmup_uncapped(ctx: Context) -> None:
    def run(c, capped):
        gen = seeded(28110)
        model = Stack(6, hidden=32, act=nn.Tanh)
        probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 83))
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        if capped:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 40)
        product = []

        def before(step):
            if step % 10 == 0:
                product.append((step, opt.param_groups[0]["lr"] * _top_eig(model, *probe)))

        _train(
            c, model, opt, _readings(gen, 256, 6, 83), 250, F.mse_loss, sched=sched, before=before
        )
        return product

    twin = _Twin()
    twin_product = run(twin, True)
    product = run(ctx, False)
    ls = ctx.losses
    crossed = next((s for s, v in product if math.isfinite(v) and v > 2), None)
    ctx.check("lr x top eigenvalue under 1 at step 20", dict(product).get(20, 9) < 1)
    ctx.check("it crosses 2 between steps 50 and 100", crossed is not None and 50 <= crossed <= 100)
    ctx.check("the twin's product stays under 2", max(v for _, v in twin_product) < 2)
    ctx.check(
        "the loss blew up: non-finite or over 100x its minimum",
        _first_bad(ls) is not None or max(ls) > 100 * min(ls),
    )
    ctx.check("the twin trained and stayed finite", _fell(twin.losses, ratio=0.7))


# -- controls ------------------------------------------------------------------------------------


class ThrowNet(nn.Module):
    def __init__(self, channels=3, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    family="cornish_wrestling_throw_kind_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of 5 throws a Cornish wrestler makes from 3-channel jacket-grip force traces, SGD momentum 0.9 with a triangular CyclicLR between 0.005 and 0.05 (25 steps up, 25 down), clipping at 5, cross-entropy, noisy batches of 32. Trains normally.",
)
def h281_cornish_wrestling_cyclic_sgd(ctx: Context) -> None:
    gen = seeded(28111)
    model = ThrowNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.005, max_lr=0.05, step_size_up=25, mode="triangular"
    )
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    _train(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 91),
        250,
        F.cross_entropy,
        classifier=True,
        before=before,
        clip=5.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half its start", _fell(ls, k=20, ratio=0.5))
    ctx.check("the lr cycled (max over 5x min)", max(lrs) > 5 * min(lrs))


class CastEncoder(nn.Module):
    def __init__(self, channels=3, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.GELU()

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return torch.cat([h.mean(-1), h.amax(-1)], -1)


class CastNet(nn.Module):
    def __init__(self, classes=6, width=24):
        super().__init__()
        self.encoder = CastEncoder(width=width)
        self.fc = nn.Linear(2 * width, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.act(self.fc(self.encoder(x))))


@scenario(
    family="dry_fly_cast_loop_frozen_encoder_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a dry-fly cast classifier (6 loop shapes from 3-channel rod-tip IMU traces) built as a Conv1d encoder (encoder.conv1, encoder.conv2, mean and max pooled) pretrained for 150 steps on an 8-way auxiliary task over other traces and then frozen (requires_grad False, not in the optimizer), with a trainable head (fc, act, head) fine-tuned by AdamW at 3e-3 with OneCycleLR and label smoothing 0.1, cross-entropy. The encoder's weights stay exactly as pretrained; the head trains normally.",
)
def h281_dry_fly_frozen_encoder_head(ctx: Context) -> None:
    gen = seeded(28112)
    model = CastNet()
    # pretraining on an auxiliary task (another set of trace classes), then freezing
    aux_head = nn.Linear(48, 8)
    pre_opt = torch.optim.Adam(list(model.encoder.parameters()) + list(aux_head.parameters()), 3e-3)
    aux = _traces(torch.Generator().manual_seed(3), 64, 8, 101, noise=0.4)
    for _ in range(150):
        x, y = next(aux)
        loss = F.cross_entropy(aux_head(model.encoder(x)), y)
        pre_opt.zero_grad()
        loss.backward()
        pre_opt.step()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    enc0 = _flat(model.encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _traces(gen, 64, 6, 103, noise=0.4),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.7x its start", _fell(ls, k=20, ratio=0.7))
    ctx.check("the encoder is unchanged", bool(torch.equal(enc0, _flat(model.encoder))))


@scenario(
    family="bullock_cart_pull_distance_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a bullock pair pulls a weighted cart from 12 readings (yoke load, ground firmness, animal weights, ...), with heavy-tailed noise on the targets, Adagrad at 0.05 with ReduceLROnPlateau (patience 20), gradient accumulation over 4 micro-batches of 16, clipping at 1.0, Huber loss. Trains normally.",
)
def h281_bullock_cart_adagrad_plateau(ctx: Context) -> None:
    gen = seeded(28113)
    model = Stack(12, hidden=64)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def noisy(batches):
        for x, y in batches:
            t = torch.distributions.StudentT(3.0).sample((len(y),))
            yield x, y + 0.1 * t

    _train(
        ctx,
        model,
        opt,
        noisy(_readings(gen, 16, 12, 111, noise=0.0)),
        200,
        F.huber_loss,
        accumulate=4,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half its start", _fell(ls, k=20, ratio=0.5))
