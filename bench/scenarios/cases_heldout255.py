"""Held-out set 255 (``h255_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a mallakhamb pole-sway siamese net whose hand-written
embedding distance takes a square root with no epsilon (NaN made in the backward pass when a
logger copies one IMU into the other), a sea-stack collapse 16-layer ReLU tower whose init gain
was typed 2 for sqrt(2), a sugar-shack sap-boil regressor whose resume reloads a stale checkpoint,
an ikebana style classifier whose temperature is read in percent, a Blood Falls brine-discharge
regressor fed one batch in the wrong conductivity unit, a yukigassen snowball-speed regressor whose
gradient all-reduce sums over 64 workers for one step, a washi sheet-thickness regressor whose
layer-wise lr decay was typed 0.005 for 0.5, a thufur frost-hummock tanh regressor whose StepLR
gamma was typed 10 for 0.1, a kemari kick-height ReLU regressor whose RMSprop lr was typed 1e-1
for 1e-3, a shoji paper-defect multilabel tagger fed {-1, +1} targets in a BCE loss, and three
controls (a wagashi confection cosine classifier with a learnable temperature, a trugo
mallet-drive fp16 Huber MLP with a GradScaler, a soy-sauce moromi salinity Gaussian-NLL net).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
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
    returns what is backpropagated; ``amp``: fp16 autocast; stops after logging a NaN loss."""
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


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- mallakhamb: a hand-written embedding distance takes sqrt(0) when one IMU is copied ----------

ONSET_MALL = 90


class PairDistance(nn.Module):
    """Euclidean distance between two embeddings, written by hand with no epsilon."""

    def forward(self, a, b):
        return torch.sqrt(((a - b) ** 2).sum(-1))


class SwayNet(nn.Module):
    """A siamese encoder (enc1, act1, enc2, act2) shared by the pole's top and base IMUs, the
    distance between the two embeddings (gap) and a head on [distance, mean embedding]."""

    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.enc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.gap = PairDistance()
        self.head = nn.Linear(hidden + 1, 1)
        self.last_gap = None

    def embed(self, x):
        return self.act2(self.enc2(self.act1(self.enc1(x))))

    def forward(self, x):
        ea, eb = self.embed(x[:, 0]), self.embed(x[:, 1])
        d = self.gap(ea, eb)
        self.last_gap = d.detach()
        return self.head(torch.cat([d[:, None], (ea + eb) / 2], 1)).squeeze(-1)


def _pole_pairs(gen, batch, d_in=6):
    """Six standardised readings from each of two IMUs (top and base of the pole) and the pole's
    sway amplitude, standardised."""
    g = torch.Generator().manual_seed(2551)
    w = torch.randn(d_in, generator=g)
    while True:
        top = torch.randn(batch, d_in, generator=gen)
        base = 0.6 * top + 0.8 * torch.randn(batch, d_in, generator=gen)
        y = torch.tanh((top - base).norm(dim=1) - 1.5) + 0.3 * torch.sin(base @ w / 2)
        yield torch.stack([top, base], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="mallakhamb_pole_sway_siamese_distance_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("gap",),
    diverges=ONSET_MALL,
    heldout=True,
    onset=ONSET_MALL,
    note="A siamese tanh encoder (enc1, act1, enc2, act2) shared by two IMUs strapped to the top and the base of a mallakhamb pole, a hand-written Euclidean distance module (gap: sqrt of the summed squared difference, no epsilon) between the two embeddings and a head on [distance, mean embedding], regressing the pole's sway amplitude during a routine; AdamW at 2e-3, MSE. In the batch at step 90 the top IMU dropped out for 16 rows and the logger's fallback copied the base IMU's readings into the top channel: those rows' embeddings are identical, the distance is exactly 0 and its forward value (and the loss) are finite, but the backward pass of sqrt at 0 gives inf * 0 = NaN; the NaN gradient reaches every encoder weight, AdamW writes NaN into the weights and the loss is NaN from step 91.",
)
def h255_mallakhamb_sqrt_zero_distance(ctx: Context) -> None:
    gen = seeded(25501)
    model = SwayNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_MALL:
            x = x.clone()
            x[:16, 0] = x[:16, 1]
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_MALL:
            seen["zero_gap"] = int((model.last_gap == 0).sum())

    def scale_loss(step, total):
        if step == ONSET_MALL:
            grads = torch.autograd.grad(total, list(model.parameters()), retain_graph=True)
            seen["nan_grad"] = any(bool(torch.isnan(g).any()) for g in grads)
        return total

    _train(
        ctx,
        model,
        opt,
        _pole_pairs(gen, 64),
        160,
        F.mse_loss,
        alter=alter,
        watch=watch,
        scale_loss=scale_loss,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_MALL], ratio=0.7))
    ctx.check("the distance is exactly 0 on the copied rows at the onset", seen["zero_gap"] >= 16)
    ctx.check("the loss at the onset is finite (forward pass fine)", math.isfinite(ls[ONSET_MALL]))
    ctx.check("the gradient at the onset holds NaN", seen.get("nan_grad", False))
    ctx.check("the gradient norm at the onset is NaN", math.isnan(ctx.grad_norms[ONSET_MALL]))
    ctx.check(
        "the loss is NaN at the step after the onset",
        len(ls) > ONSET_MALL + 1 and math.isnan(ls[ONSET_MALL + 1]),
    )
    ctx.check("finite before the onset", _finite(ls[:ONSET_MALL]))


# -- sea stack: a 16-layer ReLU tower whose init gain was typed 2 for sqrt(2) ---------------------


class Tower(nn.Module):
    """16 Linear layers with nn.ReLU modules between them in one ModuleList (layers.0, layers.1,
    ...), a scalar output."""

    def __init__(self, d_in=12, width=48, depth=16, gain=1.4142135623730951):
        super().__init__()
        mods = []
        for i in range(depth):
            mods.append(nn.Linear(d_in if i == 0 else width, 1 if i == depth - 1 else width))
            if i < depth - 1:
                mods.append(nn.ReLU())
        self.layers = nn.ModuleList(mods)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)
        self.hiddens = []

    def forward(self, x):
        self.hiddens = []
        for m in self.layers:
            x = m(x)
            if isinstance(m, nn.Linear) and x.requires_grad:
                x.retain_grad()
                self.hiddens.append(x)
        return x.squeeze(-1)


@scenario(
    family="sea_stack_collapse_year_deep_relu_tower",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="A 16-layer ReLU tower (Linear layers.0, layers.2, ..., layers.30 with nn.ReLU modules between them) regressing the years until a sea stack collapses from 12 standardised survey readings (wave energy, notch depth, joint spacing, rock strength, ...), SGD with momentum 0.9 at 1e-3, MSE. The He init was written as normal(std=gain/sqrt(fan_in)) with gain typed 2 for sqrt(2): each ReLU layer multiplies the signal and the backward gradient by about sqrt(2), so over 16 layers the gradient with respect to the first layer's output is hundreds of times that at the last layer and the output (and loss) start orders of magnitude too large; the first updates blow the weights up and the loss goes non-finite within a few steps.",
)
def h255_sea_stack_init_gain_typo(ctx: Context) -> None:
    gen = seeded(25502)
    model = Tower(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratio = {}

    def scale_loss(step, total):
        if step == 0:
            total.backward(retain_graph=True)
            first = float(model.hiddens[0].grad.norm())
            last = float(model.hiddens[-2].grad.norm())
            ratio["depth"] = first / max(last, 1e-30)
            model.zero_grad(set_to_none=True)
        return total

    _train(ctx, model, opt, _readings(gen, 64, 12, 2552), 80, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "at step 0 the gradient at the first layer's output is over 100x that at the last hidden",
        ratio.get("depth", 0.0) > 100,
    )
    ctx.check("the loss at step 0 is over 100x a unit-scale target's", ls[0] > 100)
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x or went non-finite",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )


# -- sugar shack: the resume reloads a stale checkpoint ------------------------------------------

ONSET_SUGAR = 120
STALE_SUGAR = 12


@scenario(
    family="sugar_shack_sap_boil_time_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SUGAR,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a sugar shack's evaporator boil time to syrup density from 10 standardised readings (sap sugar content, sap volume, flue temperature, pan depth, ...), NAdam at 2e-3, MSE. The job is pre-empted and at step 120 the resume path loads the model weights from 'last.pt', which the checkpoint callback stopped overwriting after step 12 (a path typo): the weights jump back 108 steps while the optimizer state is the current one. The loss jumps over 3x and falls back within tens of steps; the batches are ordinary, the gradient at the jump is not a burst (under 20x the median before), finite.",
)
def h255_sugar_shack_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(25503)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}
    xs = []

    def before(step):
        if step == STALE_SUGAR:
            saved["w"] = copy.deepcopy(model.state_dict())
        if step == ONSET_SUGAR:
            model.load_state_dict(saved["w"])

    def watch(step, out, x, y):
        if ONSET_SUGAR - 1 <= step <= ONSET_SUGAR:
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 2553),
        220,
        F.mse_loss,
        before=before,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_SUGAR - 10 : ONSET_SUGAR])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SUGAR], ratio=0.5))
    ctx.check("the loss at the onset over 3x its level before", ls[ONSET_SUGAR] > 3 * pre)
    ctx.check(
        "the gradient at the onset under 20x the median before (no burst)",
        gn[ONSET_SUGAR] < 20 * _median(gn[ONSET_SUGAR - 20 : ONSET_SUGAR]),
    )
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 1.5x its pre-onset level)",
        _mean(ls[ONSET_SUGAR + 50 : ONSET_SUGAR + 60]) < 1.5 * pre,
    )


# -- ikebana: the softmax temperature read in percent ---------------------------------------------


class Scaled(nn.Module):
    """Divides the logits by a fixed temperature."""

    def __init__(self, tau):
        super().__init__()
        self.tau = tau

    def forward(self, z):
        return z / self.tau


class StyleNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, tau=0.5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.scale = Scaled(tau)

    def forward(self, x):
        return self.scale(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))))


@scenario(
    family="ikebana_arrangement_school_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("scale", "head"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) and a fixed softmax temperature module (scale) classifying an ikebana arrangement into six schools (Ikenobo, Ohara, Sogetsu, ...) from 16 standardised measurements (stem angles, heights, vessel width, ...), Adam at 1e-3, cross-entropy. The temperature is 0.5 in the config and the loader, which converts percent fields, divides it by 100: the logits are divided by 0.005, 200x too sharp. The softmax saturates: within the run most rows' target probability is exactly 1.0 in float32 and the logit gap is in the hundreds; finite, no blow-up.",
)
def h255_ikebana_temperature_percent(ctx: Context) -> None:
    gen = seeded(25504)
    model = StyleNet(tau=0.5 / 100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = {"frac": [], "gap": []}

    def watch(step, out, x, y):
        z = out.detach()
        seen["frac"].append(collapsed_fraction(z, y))
        top2 = z.topk(2, dim=1).values
        seen["gap"].append(float((top2[:, 0] - top2[:, 1]).median()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 2554),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("under 10% of rows collapsed at step 0", seen["frac"][0] < 0.1)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 10 steps",
        _mean(seen["frac"][-10:]) > 0.5,
    )
    ctx.check(
        "the median top-2 logit gap over 20 at the end (exp(-20) below float32's step at 1)",
        seen["gap"][-1] > 20,
    )


# -- Blood Falls: one batch's conductivity in microsiemens per cm ---------------------------------

ONSET_BLOOD = 110


@scenario(
    family="blood_falls_brine_discharge_gelu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BLOOD,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the daily iron-brine discharge at Blood Falls (Taylor Glacier) from 8 standardised readings (brine conductivity, iron concentration, ice temperature, air temperature, ...), Adagrad at 5e-2, MSE, gradient clipping at 5. The batch at step 110 comes from a shard whose conductivity column was exported in microsiemens per centimetre instead of the standardised siemens per metre the loader expects: that column is in the thousands. The loss and the gradient spike at that step (clipped); the run recovers; finite.",
)
def h255_blood_falls_conductivity_unit(ctx: Context) -> None:
    gen = seeded(25505)
    model = Stack(8, hidden=64, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    xs = {}

    def alter(step, x, y):
        if step == ONSET_BLOOD:
            x = x.clone()
            x[:, 0] = 3000.0 + 500.0 * x[:, 0]
        return x, y

    def watch(step, out, x, y):
        xs[step] = float(x.abs().max())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 2555),
        200,
        F.mse_loss,
        alter=alter,
        watch=watch,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_BLOOD - 10 : ONSET_BLOOD])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_BLOOD], ratio=0.5))
    ctx.check("the onset batch's inputs over 1000 (max |x|)", xs[ONSET_BLOOD] > 1000)
    ctx.check("the other batches are ordinary (max |x| under 6)", xs[ONSET_BLOOD - 1] < 6)
    ctx.check("the loss at the onset over 20x its level before", ls[ONSET_BLOOD] > 20 * pre)
    ctx.check(
        "the gradient norm at the onset over 50x the median before",
        gn[ONSET_BLOOD] > 50 * _median(gn[ONSET_BLOOD - 20 : ONSET_BLOOD]),
    )
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_BLOOD + 50 : ONSET_BLOOD + 60]) < 2 * pre,
    )


# -- yukigassen: the gradient all-reduce sums over 64 workers for one step ------------------------

ONSET_YUKI = 100
WORKERS = 64


@scenario(
    family="yukigassen_snowball_speed_silu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_YUKI,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a yukigassen (competitive snowball fight) throw's snowball speed from 12 standardised readings (arm angle, run-up, snow density, ball mass, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, gradient clipping at 10. The job trains data-parallel on 64 workers; at step 100 a worker rejoins after an elastic restart and for that one step the gradient hook sums the all-reduced gradients without dividing by the world size: the gradient is 64x that of the steps around it. The batches are ordinary; the run recovers; finite.",
)
def h255_yukigassen_allreduce_sum(ctx: Context) -> None:
    gen = seeded(25506)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = []

    def scale_loss(step, total):
        return total * WORKERS if step == ONSET_YUKI else total

    def watch(step, out, x, y):
        if step in (ONSET_YUKI - 1, ONSET_YUKI):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 2556),
        200,
        F.mse_loss,
        scale_loss=scale_loss,
        watch=watch,
        clip=10.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_YUKI - 20 : ONSET_YUKI])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_YUKI], ratio=0.5))
    ctx.check(
        "the gradient norm at the onset over 30x the median before", gn[ONSET_YUKI] > 30 * before
    )
    ctx.check("the gradient norm 30 steps after back under 5x", gn[ONSET_YUKI + 30] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_YUKI + 50 : ONSET_YUKI + 60]) < 2 * _mean(ls[ONSET_YUKI - 10 : ONSET_YUKI]),
    )


# -- washi: the layer-wise lr decay typed 0.005 for 0.5 ------------------------------------------


@scenario(
    family="washi_sheet_thickness_tanh_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the thickness of a washi sheet from 10 standardised readings of the vat and the mould (kozo fibre concentration, neri viscosity, dip count, mould tilt, ...), Adamax at 4e-3 with per-layer param groups built by layer-wise lr decay lr * decay**depth (head depth 0, fc2 1, fc1 2), MSE. The decay was typed 0.005 for 0.5: fc1's group trains at 1e-7, fc2's at 2e-5: fc1 barely moves (relative weight change under 1e-3 over the run) while the head moves over 5%; the loss still falls (the head, and slowly fc2, train), finite, no blow-up.",
)
def h255_washi_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(25507)
    model = Stack(10, hidden=48, act=nn.Tanh)
    lr, decay = 4e-3, 0.005
    groups = [
        {"params": model.head.parameters(), "lr": lr},
        {"params": model.fc2.parameters(), "lr": lr * decay},
        {"params": model.fc1.parameters(), "lr": lr * decay**2},
    ]
    opt = torch.optim.Adamax(groups)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(ctx, model, opt, _readings(gen, 64, 10, 2557), 160, F.mse_loss)
    moved = _moved(model, w0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("fc1's weight moved under 1e-3 relative", moved["fc1.weight"] < 1e-3)
    ctx.check("the head's weight moved over 5% relative", moved["head.weight"] > 0.05)
    ctx.check(
        "fc1's move under 1% of the head's", moved["fc1.weight"] < 0.01 * moved["head.weight"]
    )
    ctx.check("no blow-up (max loss under 3x the first)", max(ctx.losses) < 3 * ctx.losses[0])


# -- thufur: StepLR gamma typed 10 for 0.1 --------------------------------------------------------

ONSET_THUFUR = 60


@scenario(
    family="thufur_frost_hummock_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_THUFUR,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the height of thufur (frost hummocks in subarctic grassland) from 10 standardised site readings (freezing days, soil silt fraction, moisture, snow cover, ...), plain SGD at 1e-1, MSE, a StepLR meant to divide the lr by 10 at step 60 (step_size=60, gamma=0.1) with gamma typed 10: at step 60 the lr becomes 1.0, lr x sharpness (about 6.5 at the onset) goes from under 1 to over 2 and the loss oscillates, grows and blows up to non-finite within 20 steps.",
)
def h255_thufur_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(25508)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_THUFUR, gamma=10.0)
    batches = _readings(gen, 64, 10, 2558)
    probe = next(batches)
    seen = {}

    def before(step):
        if step == ONSET_THUFUR:
            seen["sharp"] = _sharpness(model, F.mse_loss, probe)
            seen["lr"] = opt.param_groups[0]["lr"]
            seen["lr_before"] = 1e-1

    _train(ctx, model, opt, batches, 110, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:ONSET_THUFUR])
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_THUFUR], ratio=0.5))
    ctx.check("lr x sharpness under 2 before the onset", seen["lr_before"] * seen["sharp"] < 2)
    ctx.check("lr x sharpness over 2 at the onset", seen["lr"] * seen["sharp"] > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x its low, or non-finite)",
        not _finite(ls[ONSET_THUFUR:]) or max(ls[ONSET_THUFUR:]) > 100 * low,
    )


# -- kemari: RMSprop lr typed 1e-1 for 1e-3, ReLU units die ---------------------------------------


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


@scenario(
    family="kemari_kick_height_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head, nn.ReLU modules) regressing the height of a kemari kick (the Heian court football) from 10 standardised readings (kick angle, ankle speed, ball mass, ...), RMSprop with lr typed 2e-2 for 2e-3, MSE. RMSprop's first updates (its squared-gradient average still near zero) are large: they push fc2's pre-activations negative for every input, and over 40% of act2's units are dead on every batch from step 20 to the end, where the twin run at 2e-3 keeps almost all of them alive; the loss stalls at several times the twin's; finite, no blow-up.",
)
def h255_kemari_rmsprop_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(25509)
        model = Stack(10, hidden=64, act=nn.ReLU)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        dead = []

        def watch(step, out, x, y):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(x)))

        _train(c, model, opt, _readings(gen, 128, 10, 2559), 160, F.mse_loss, watch=watch)
        return dead

    dead = run(ctx, 2e-2)
    twin = _Quiet()
    dead_twin = run(twin, 2e-3)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("under 10% of act2 dead at step 0", dead[0] < 0.1)
    ctx.check("over 40% of act2 dead on every batch from step 20", min(dead[20:]) > 0.4)
    ctx.check("the twin at 2e-3 has under 20% dead at the end", dead_twin[-1] < 0.2)
    ctx.check(
        "the loss over the last 10 steps over 2x the twin's",
        _mean(ctx.losses[-10:]) > 2 * _mean(twin.losses[-10:]),
    )


# -- shoji: {-1, +1} targets fed to BCE with logits -----------------------------------------------


@scenario(
    family="shoji_paper_defect_multilabel_tagger",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) tagging a shoji screen panel's paper with five defects (tear, water stain, loose glue, sag, hole) from 14 standardised readings of a backlit scan, RAdam at 2e-3, binary_cross_entropy_with_logits. The labels come from an SVM-era export encoded as -1 / +1 and are passed to the BCE unchanged: for a -1 target the loss is log(sigmoid(z)) - 2 log(1 - sigmoid(z)), which has no lower bound and keeps pushing z down. The head's logits grow without bound (over 20x their start and still growing at the end) and the loss goes negative; finite, no NaN within the run.",
)
def h255_shoji_pm1_targets_bce(ctx: Context) -> None:
    gen = seeded(25510)
    model = Stack(14, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(25511)
    proj = torch.randn(14, 5, generator=g)
    mags = []

    def batches():
        while True:
            x = torch.randn(64, 14, generator=gen)
            y01 = x @ proj / math.sqrt(14) + 0.3 * torch.randn(64, 5, generator=gen) > 0.3
            yield x, y01.float() * 2 - 1

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _train(ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits, watch=watch)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("mean |logit| over 20x its start at the end", mags[-1] > 20 * mags[0])
    ctx.check("mean |logit| still growing over the last 50 steps", mags[-1] > 1.2 * mags[-50])
    ctx.check("the loss went negative", min(ls) < 0)


# -- controls ---------------------------------------------------------------------------------------


class CosineHead(nn.Module):
    """Cosine similarity to learnt class prototypes times a learnable temperature exp(log_s)."""

    def __init__(self, dim, classes, scale=10.0):
        super().__init__()
        self.proto = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_s = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, h):
        return self.log_s.exp() * F.normalize(h, dim=-1) @ F.normalize(self.proto, dim=-1).T


class ConfectionNet(nn.Module):
    def __init__(self, d_in=18, hidden=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="wagashi_confection_type_cosine_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2) with a cosine-similarity head (head: learnt class prototypes, logits = exp(log_s) * cos, log_s a learnable temperature starting at log 10) classifying a wagashi confection into eight kinds (nerikiri, daifuku, yokan, ...) from 18 standardised measurements (bean-paste moisture, sugar, rice-flour fraction, ...), AdamW at 3e-3 with weight decay on the weights only (param groups), OneCycleLR, label smoothing 0.1 on 10% noisy labels, clipping at 1.0.",
)
def h255_wagashi_cosine_control(ctx: Context) -> None:
    gen = seeded(25512)
    model = ConfectionNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    stream = _kinds(gen, 64, 18, 8, 25513)
    acc = []

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 8, y.shape, generator=gen), y)

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
        watch=watch,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over 70% over the last 10 steps", _mean(acc[-10:]) > 0.7)


@scenario(
    family="trugo_mallet_drive_distance_fp16_huber_mlp",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the distance of a trugo mallet drive (the Melbourne railway-workshop game of hitting rubber rings between goal posts) from 12 standardised readings (swing speed, stance width, ring wear, ...), Adam at 2e-3 under fp16 autocast with a torch.amp.GradScaler, Huber loss on targets with heavy-tailed noise, linear warm-up over 20 steps then cosine decay (LambdaLR), clipping at 1.0.",
)
def h255_trugo_fp16_control(ctx: Context) -> None:
    gen = seeded(25514)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps, warm = 180, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 12, 25515)

    def heavy():
        while True:
            x, y = next(stream)
            noise = torch.distributions.StudentT(3.0).sample((len(y),)) * 0.1
            yield x, y + noise

    _train(
        ctx,
        model,
        opt,
        heavy(),
        steps,
        lambda out, y: F.huber_loss(out, y, delta=1.0),
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the loss scale stayed at or above 64", min(ctx.scales) >= 64)


class MeanVarNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="soy_sauce_moromi_salinity_gaussian_nll_net",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2) with a mean head and a log-variance head predicting a soy-sauce moromi mash's salinity and its uncertainty from 9 standardised brewery readings (koji ratio, brine strength, vat temperature, months fermented, ...), Gaussian NLL with heteroscedastic noise, SGD with momentum 0.9 at 1e-2, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 10, factor 0.5), clipping at 2.0.",
)
def h255_soy_sauce_nll_control(ctx: Context) -> None:
    gen = seeded(25516)
    model = MeanVarNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    stream = _readings(gen, 32, 9, 25517, noise=0.0)

    def hetero():
        while True:
            x, y = next(stream)
            yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 0])) * torch.randn(len(y), generator=gen)

    _train(
        ctx,
        model,
        opt,
        hetero(),
        200,
        _gauss_nll,
        sched=sched,
        accumulate=2,
        clip=2.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
