"""Held-out set 369 (``h369_``): hand-written models of crafts, sports and natural phenomena not
covered before: a kolam dot-grid Bernoulli MADE whose hand-written log-likelihood takes log(1 - p)
at p == 1 (NaN), a tumbaga melt-mass GELU regressor converting grams to milligrams inside fp16
autocast (overflow), a palin strike-speed ReLU regressor with SGD lr typed 0.1 for 1e-3 (dead
ReLUs), a zardozi stitch classifier whose cross-entropy detaches the logsumexp (logits grow), a
phulkari stitch classifier with its temperature read per mille (softmax collapse), a jamdani motif
classifier whose head is replaced after the optimizer is built (head frozen), a bojagi seam BCE net
fed one shard with -9999 sentinels (one corrupted batch), a bunad brooch Huber regressor weighting
one resumed step by 64 (one gradient burst), a pate-de-verre slump tanh regressor with its L2
penalty subtracted (a slow climb), a tsujigahana 16-layer tanh MLP with init std fan_in ** -0.25
(gradients grow through depth), and three controls (a bf16 Gaussian MADE with a careful float32
log-likelihood, a suzani Conv1d classifier under OneCycleLR, a tivaevae ASGD Huber regressor with
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


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
    alter=None,
    watch=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=None,
    accumulate=1,
    inspect=None,
    after=None,
):
    """The file's training loop: ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)``
    sees the forward pass, ``backprop(step, loss)`` returns the loss actually backpropagated,
    ``inspect(step)`` sees the gradients before clipping, ``after(step)`` runs after the update.
    ``amp`` is None or the autocast dtype. Stops after a non-finite loss (once ``ctx.step`` has
    seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
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


# -- data -----------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised readings and a smooth nonlinear target (about unit scale, then scaled)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
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


def _kolam_grids(gen, batch, seed, half=8):
    """Binary rows of a kolam dot grid: the first half drawn from a few motifs with flipped dots,
    the second half the mirror image of the first (kolams are symmetric)."""
    g = torch.Generator().manual_seed(seed)
    motifs = (torch.rand(6, half, generator=g) < 0.5).float()
    while True:
        m = motifs[torch.randint(0, 6, (batch,), generator=gen)]
        flip = (torch.rand(batch, half, generator=gen) < 0.1).float()
        first = (m + flip) % 2
        x = torch.cat([first, first.flip(-1)], 1)
        yield x, x


def _powder_flows(gen, batch, seed, d=6):
    """Continuous rangoli powder-flow readings: each coordinate a nonlinear function of the earlier
    ones plus Gaussian noise (an autoregressive density)."""
    g = torch.Generator().manual_seed(seed)
    w = 0.8 * torch.randn(d, d, generator=g)
    while True:
        x = torch.zeros(batch, d)
        for i in range(d):
            mu = torch.tanh(x[:, :i] @ w[:i, i]) if i else torch.zeros(batch)
            sd = 0.3 + 0.2 * torch.sigmoid(x[:, i - 1]) if i else torch.ones(batch)
            x[:, i] = mu + sd * torch.randn(batch, generator=gen)
        yield x, x


# -- models ---------------------------------------------------------------------------------------


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


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed connectivity mask (MADE)."""

    def __init__(self, d_in, d_out, mask):
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def _made_masks(d, hidden, seed, outputs_per_dim=1):
    """MADE degrees: inputs 1..d, hidden units in 1..d-1, outputs see strictly earlier inputs."""
    g = torch.Generator().manual_seed(seed)
    deg_in = torch.arange(1, d + 1)
    deg_h1 = torch.randint(1, d, (hidden,), generator=g)
    deg_h2 = torch.randint(1, d, (hidden,), generator=g)
    deg_out = deg_in.repeat(outputs_per_dim)
    m1 = deg_h1[:, None] >= deg_in[None]
    m2 = deg_h2[:, None] >= deg_h1[None]
    m3 = deg_out[:, None] > deg_h2[None]
    return m1, m2, m3


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: masked fc1 -> act1 -> masked fc2 -> act2 ->
    masked out, output k of each group sees only inputs before k."""

    def __init__(self, d, hidden, seed, outputs_per_dim=1):
        super().__init__()
        m1, m2, m3 = _made_masks(d, hidden, seed, outputs_per_dim)
        self.fc1 = MaskedLinear(d, hidden, m1)
        self.act1 = nn.ReLU()
        self.fc2 = MaskedLinear(hidden, hidden, m2)
        self.act2 = nn.ReLU()
        self.out = MaskedLinear(hidden, d * outputs_per_dim, m3)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- 1. nonfinite: a MADE's hand-written Bernoulli log-likelihood takes log(1 - p) at p == 1 -------


class BernoulliLogLik(nn.Module):
    """The hand-written per-row negative log-likelihood of binary data under sigmoid(logits):
    log(p) and log(1 - p) with no clamp and no logsigmoid."""

    def __init__(self):
        super().__init__()
        self.saturated = 0

    def forward(self, logits, x):
        p = torch.sigmoid(logits)
        self.saturated = int(((p == 1.0) | (p == 0.0)).sum())
        return -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)


class KolamMADE(nn.Module):
    def __init__(self, d, hidden, seed):
        super().__init__()
        self.made = MADE(d, hidden, seed)
        self.loglik = BernoulliLogLik()

    def forward(self, x):
        self.logits = self.made(x)
        return self.loglik(self.logits, x)


KOLAM_DIV = 58


@scenario(
    family="kolam_dot_grid_bernoulli_made_density",
    optimizer="Adam",
    cause="nonfinite",
    where=("loglik",),
    diverges=KOLAM_DIV,
    heldout=True,
    note="A hand-written MADE (masked linear fc1, fc2, out with MADE degree masks) models 16-dot kolam grid rows (generated: the first half from six motifs with 10% flipped dots, the second half its mirror image), Adam lr 1e-2. Its Bernoulli log-likelihood was written by hand as x * log(p) + (1 - x) * log(1 - p) with p = sigmoid(logits), no clamp and no logsigmoid: as the mirrored dots become predictable the logits pass about 17, a sigmoid rounds to exactly 1.0 in float32, log(1 - p) is log 0 and the loss is NaN at step 58 (the same logits through binary_cross_entropy_with_logits are finite).",
)
def h369_kolam_made_log_one_minus_p(ctx) -> None:
    gen = seeded(36901)
    model = KolamMADE(16, 96, seed=36901)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = _kolam_grids(gen, 64, seed=36901)
    seen = {}

    def watch(step, out, x, y):
        seen["sat"] = model.loglik.saturated
        seen["safe"] = float(
            F.binary_cross_entropy_with_logits(model.logits.detach(), x, reduction="none")
            .sum(-1)
            .mean()
        )

    n = _loop(ctx, model, opt, batches, 300, lambda out, y: out.mean(), watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"loss non-finite at step {KOLAM_DIV}", bad == KOLAM_DIV and n == KOLAM_DIV + 1)
    ctx.check("finite for the 50 steps before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("a sigmoid output is exactly 0 or 1 on the NaN step", seen.get("sat", 0) > 0)
    ctx.check("the same logits with a stable BCE are finite", math.isfinite(seen.get("safe", 0)))


# -- 2. amp_overflow: grams turned to milligrams inside the fp16 autocast region -----------------


class ToMilligrams(nn.Module):
    """The port's unit conversion: the head predicts grams, the loss wants milligrams."""

    def forward(self, grams):
        return grams * 1000.0


class TumbagaNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.trunk = Trunk(d_in, 64, 1, act=nn.GELU)
        self.units = ToMilligrams()

    def forward(self, x):
        return self.units(self.trunk(x))


TUMBAGA_DIV = 41


@scenario(
    family="tumbaga_alloy_melt_mass_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("units",),
    diverges=TUMBAGA_DIV,
    heldout=True,
    note="A hand-written GELU MLP (trunk) predicts the mass of a tumbaga melt in grams (about 45 +- 12 g) from twelve readings; the port added a units module that multiplies by 1000 to milligrams inside the fp16 autocast region, AdamW, GradScaler, Huber loss in grams. As the predictions grow towards their targets a prediction passes 65504 mg (65.5 g) and overflows to inf in fp16 at step 41, while the same batch in fp32 is finite.",
)
def h369_tumbaga_milligrams_in_fp16(ctx) -> None:
    gen = seeded(36902)
    model = TumbagaNet(12)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    raw = _readings(gen, 64, 12, seed=36902, scale=12.0, offset=45.0)

    def batches():
        for x, grams in raw:
            yield x, grams * 1000.0

    seen = {}

    def watch(step, out, x, y):
        seen["out"] = out.detach()
        seen["x"] = x

    def loss_fn(out, y):
        return F.huber_loss(out / 1000.0, y / 1000.0)

    _loop(ctx, model, opt, batches(), 300, loss_fn, watch=watch, scaler=scaler, amp=torch.float16)
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        fp32 = model(seen["x"]) if bad is not None else torch.tensor([float("inf")])
    ctx.check(f"loss non-finite at step {TUMBAGA_DIV}", bad == TUMBAGA_DIV)
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("an fp16 prediction is inf on that step", bool(torch.isinf(seen["out"]).any()))
    ctx.check(
        "the same batch in fp32 is finite and passes 65504 mg",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )


# -- 3. loss_of_plasticity: SGD momentum rate typed 0.5 for 0.005, act2 dies ----------------------


@scenario(
    family="palin_stick_strike_speed_relu_regressor",
    optimizer="SGD(momentum)",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) regresses a palin stick-strike speed (target variance about 9) from ten readings, SGD momentum 0.9 with lr typed 0.1 for 1e-3, MSE. The early huge steps push fc2's pre-activations negative: over 90% of act2's units are dead on each of the last 50 steps (none at step 0), and the loss stays at the targets' variance, finite.",
)
def h369_palin_dead_relus(ctx) -> None:
    gen = seeded(36903)
    model = Trunk(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = _readings(gen, 64, 10, seed=36903, scale=3.0)
    dead = []
    var = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.features(x)
        dead.append(float((h <= 0).all(0).float().mean()))
        var.append(float(y.var()))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, watch=watch)
    ctx.check("over 90% of act2's units dead on each of the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check("under 10% dead at step 0", dead[0] < 0.1)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check(
        "loss over the last 50 steps at or above 80% of the targets' variance",
        _mean(ctx.losses[-50:]) > 0.8 * _mean(var),
    )


# -- 4. output_logit_divergence: the cross-entropy's logsumexp detached ---------------------------


@scenario(
    family="zardozi_couching_stitch_detached_lse_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP classifies zardozi couching stitches into seven kinds, NAdam lr 5e-4. The hand-written cross-entropy detaches the logsumexp term 'for stability', so its value is unchanged but only the target logit gets a gradient: nothing bounds the logits, the head's mean |logit| grows over 20x its first steps and rises every quarter, finite.",
)
def h369_zardozi_detached_logsumexp(ctx) -> None:
    gen = seeded(36904)
    model = Trunk(14, 64, 7)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    batches = _grades(gen, 64, 14, 7, seed=36904, spread=1.3)
    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    def loss_fn(out, y):
        # the log-partition detached "for stability": its value is kept, its gradient is gone
        return -(out.gather(1, y[:, None]).squeeze(1) - out.logsumexp(1).detach()).mean()

    _loop(ctx, model, opt, batches, 200, loss_fn, classifier=True, watch=watch)
    q = [_mean(mags[i * 50 : (i + 1) * 50]) for i in range(4)]
    ctx.check(
        "head's mean |logit| over 20x its first 10 steps", _mean(mags[-10:]) > 20 * _mean(mags[:10])
    )
    ctx.check("rising every quarter", all(b > a for a, b in zip(q, q[1:], strict=False)))
    ctx.check("finite", _finite(ctx.losses))


# -- 5. softmax_collapse: temperature read from a percent field and divided by 100 ----------------


class TemperedHead(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.trunk = Trunk(d_in, 64, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.trunk(x) / self.temperature


@scenario(
    family="phulkari_darn_stitch_temperature_gelu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("trunk.head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (trunk) classifies phulkari darn stitches into six kinds, RMSprop lr 1e-3. The softmax temperature 1.0 is read from a per-mille config field and divided by 1000, so the logits are divided by 0.001: over half the rows give their target probability exactly 1.0 over the last 50 steps (under 5% at temperature 1.0 on the same logits), finite.",
)
def h369_phulkari_percent_temperature(ctx) -> None:
    gen = seeded(36905)
    cfg = {"temperature_permille": 1.0}  # the config author meant 1.0 (a plain temperature)
    model = TemperedHead(12, 6, cfg["temperature_permille"] / 1000.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 12, 6, seed=36905, spread=1.4)
    ones, ones_t1 = [], []

    def watch(step, out, x, y):
        o = out.detach()
        ones.append(float((torch.softmax(o, -1).gather(1, y[:, None]) == 1.0).float().mean()))
        raw = o * model.temperature
        ones_t1.append(float((torch.softmax(raw, -1).gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, watch=watch)
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 50 steps",
        _mean(ones[-50:]) > 0.5,
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(ones_t1[-50:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- 6. update_ratio_out_of_range: the head replaced after the optimizer was built ----------------


@scenario(
    family="jamdani_motif_replaced_head_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP classifies jamdani motifs, Adagrad lr 2e-2 built from model.parameters() on the 10-class template; the head is then replaced by an 8-class nn.Linear after the optimizer was built, so the new head gets gradients but is in no param group: it never moves while fc1 moves over 5% of its norm; the loss falls on the frozen random head.",
)
def h369_jamdani_head_not_in_optimizer(ctx) -> None:
    gen = seeded(36906)
    model = Trunk(16, 64, 10)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    # the motif set has 8 classes, not the template's 10: the head is swapped after the optimizer
    model.head = nn.Linear(64, 8)
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    batches = _grades(gen, 64, 16, 8, seed=36906, spread=1.3)
    hg = []

    def inspect(step):
        hg.append(float(model.head.weight.grad.norm()))

    _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, inspect=inspect)
    ctx.check("head never moves", float((model.head.weight.detach() - head0).abs().max()) == 0.0)
    ctx.check("head gets gradients", min(hg) > 0)
    ctx.check(
        "fc1 moves over 5% of its norm",
        float((model.fc1.weight.detach() - fc10).norm() / fc10.norm()) > 0.05,
    )
    ctx.check("finite", _finite(ctx.losses))


# -- 7. data_outlier: one workshop's shard logs missing readings as -9999 ------------------------


@scenario(
    family="bojagi_seam_pucker_relu_bce_net",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU BCE net predicts whether a bojagi seam puckers from twelve standardised readings, Adamax lr 2e-3, clipping at 1.0. At step 120 one workshop's shard arrives with missing readings logged as the sentinel -9999 in three columns of 16 rows (no masking): loss and gradient over 20x their recent median, then it recovers.",
    onset=120,
)
def h369_bojagi_sentinel_shard(ctx) -> None:
    gen = seeded(36907)
    model = Trunk(12, 64, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    raw = _readings(gen, 64, 12, seed=36907, noise=0.0)

    def batches():
        for x, y in raw:
            yield x, (y > 0.2).float()

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:16, 3:6] = -9999.0
        return x, y

    _loop(
        ctx, model, opt, batches(), 220, F.binary_cross_entropy_with_logits, alter=alter, clip=1.0
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 20x the median before", ls[120] > 20 * _median(ls[100:120]))
    ctx.check(
        "gradient at step 120 over 20x the median before", gs[120] > 20 * _median(gs[100:120])
    )
    ctx.check(
        "recovers: last 20 steps under 1.5x the 20 before the shard",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


# -- 8. gradient_spike: the resumed step's loss weighted by global / local batch with local read as 1


@scenario(
    family="bunad_brooch_weight_silu_huber_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU Huber regressor predicts a bunad silver brooch's weight, SGD Nesterov lr 2e-2, clipping at 5. The loss is weighted by global_batch / local_batch for data parallelism; on the resumed step 150 the local batch is read from a stale field as 1 instead of 64, so a clean batch's gradient is 64x (over 30x its median), clipped, and the run recovers.",
    onset=150,
)
def h369_bunad_resume_batch_ratio(ctx) -> None:
    gen = seeded(36908)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 10, seed=36908)
    cfg = {"global_batch": 64, "local_batch": 64}
    resumed = {"local_batch": 1}  # the resumed trainer's stale field, filled in after step 150

    def backprop(step, loss):
        local = resumed["local_batch"] if step == 150 else cfg["local_batch"]
        return loss * (cfg["global_batch"] / local)

    _loop(
        ctx,
        model,
        opt,
        batches,
        250,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        backprop=backprop,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 30x the median before", gs[150] > 30 * _median(gs[120:150])
    )
    ctx.check(
        "loss at step 150 under 3x the median before (clean batch)",
        ls[150] < 3 * _median(ls[120:150]),
    )
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]))
    ctx.check("finite", _finite(ls))


# -- 9. loss_divergence: the hand-written L2 penalty subtracted ----------------------------------


@scenario(
    family="pate_de_verre_kiln_slump_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP regresses pate-de-verre kiln slump, plain SGD lr 3e-2, MSE. The hand-written L2 penalty is subtracted (loss - wd * sum p^2, wd 0.12) instead of added: weights grow over 2x and the loss climbs slowly to over 3x its lowest 20-step mean, with no step over 3x the one before, finite.",
)
def h369_pate_de_verre_l2_sign(ctx) -> None:
    gen = seeded(36909)
    model = Trunk(10, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2)
    batches = _readings(gen, 64, 10, seed=36909)
    wd = 0.12
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def backprop(step, loss):
        penalty = sum((p * p).sum() for p in model.parameters())
        return loss - wd * penalty  # typed - for +

    _loop(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    lows = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19))
    ctx.check("weights grow over 2x", w1 > 2 * w0)
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lows)
    ctx.check(
        "no step jumps over 3x the one before",
        all(b < 3 * a for a, b in zip(ls, ls[1:], strict=False)),
    )
    ctx.check("finite", _finite(ls))


# -- 10. exploding_gradients: init std 1 / fan_in ** 0.25 for 1 / fan_in ** 0.5 -------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, exponent):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=layer.in_features**-exponent)
            nn.init.zeros_(layer.bias)
        self.acts = []

    def forward(self, x):
        self.acts = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.acts[0].grad.norm() / model.acts[-1].grad.norm().clamp_min(1e-30))


@scenario(
    family="tsujigahana_dye_bleed_deep_tanh_mlp",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 16-layer tanh MLP (layers.0 .. layers.15, width 64) regresses tsujigahana dye bleed, RAdam lr 1e-3, clipping at 1.0. The init std is written in_features ** -0.25 for in_features ** -0.5 (about 2.8x too large): the net is in the chaotic phase and the gradient at layers.0's output is over 20x that at layers.15's at step 0 and over 10x through the run (under 2x with the intended std).",
)
def h369_tsujigahana_quarter_power_init(ctx) -> None:
    gen = seeded(36910)
    model = DeepTanh(12, 64, 16, exponent=0.25)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 12, seed=36910)
    ratios = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    _loop(ctx, model, opt, batches, 120, F.mse_loss, inspect=inspect, clip=1.0)
    ref = DeepTanh(12, 64, 16, exponent=0.5)
    x, y = next(batches)
    F.mse_loss(ref(x), y).backward()
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.15's at step 0", ratios[0] > 20
    )
    ctx.check("over 10x through the run (median)", _median(ratios) > 10)
    ctx.check("under 2x with std 1 / sqrt(fan_in)", _depth_ratio(ref) < 2)
    ctx.check("finite", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class GaussianMADE(nn.Module):
    """A MADE emitting a mean and a log-scale per coordinate; the log-likelihood is computed
    carefully outside autocast (float32, log-scale soft-clamped, constant term included)."""

    def __init__(self, d, hidden, seed):
        super().__init__()
        self.d = d
        self.made = MADE(d, hidden, seed, outputs_per_dim=2)

    def forward(self, x):
        return self.made(x)


def _gaussian_nll(out, x):
    d = x.shape[-1]
    out = out.float()
    mu, s = out[:, :d], out[:, d:]
    log_sd = 3.0 * torch.tanh(s / 3.0)
    z = (x.float() - mu) * torch.exp(-log_sd)
    return (0.5 * z.pow(2) + log_sd + 0.5 * math.log(2 * math.pi)).sum(-1).mean()


@scenario(
    family="rangoli_powder_flow_gaussian_made_density",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written Gaussian MADE (masked linear layers, a mean and a log-scale per coordinate) on generated six-dimensional rangoli powder-flow readings, bf16 autocast for the masked layers and a careful float32 log-likelihood (log-scale soft-clamped by 3 tanh(s / 3), constant term included), AdamW with a no-decay group, warm-up then cosine, clipping.",
)
def h369_rangoli_bf16_made_control(ctx) -> None:
    gen = seeded(36911)
    model = GaussianMADE(6, 96, seed=36911)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 250, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    batches = _powder_flows(gen, 128, seed=36911)
    _loop(ctx, model, opt, batches, steps, _gaussian_nll, sched=sched, clip=1.0, amp=torch.bfloat16)
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))


class StitchConv(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        h = F.max_pool1d(h, 2)
        h = self.act2(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    family="suzani_chain_stitch_trace_relu_conv1d_classifier",
    optimizer="SGD(nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier of suzani chain-stitch needle traces (five kinds), SGD Nesterov with weight decay under OneCycleLR, label smoothing 0.1, clipping.",
)
def h369_suzani_onecycle_control(ctx) -> None:
    gen = seeded(36912)
    model = StitchConv(2, 5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    batches = _traces(gen, 64, 5, seed=36912)
    _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="tivaevae_quilt_panel_tension_silu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU Huber regressor of tivaevae quilt panel tension, ASGD with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping.",
)
def h369_tivaevae_asgd_plateau_control(ctx) -> None:
    gen = seeded(36913)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    bias = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    opt = torch.optim.ASGD(
        [{"params": weights, "weight_decay": 1e-4}, {"params": bias, "weight_decay": 0.0}],
        lr=5e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 32, 10, seed=36913, noise=0.1)
    held = next(_readings(torch.Generator().manual_seed(7), 256, 10, seed=36913, noise=0.1))

    def loss_fn(o, y):
        return F.huber_loss(o, y, delta=0.5)

    def plateau():
        with torch.no_grad():
            return float(loss_fn(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        loss_fn,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))
