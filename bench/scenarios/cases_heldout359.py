"""Held-out set 359 (``h359_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a rapper-sword lock-figure sparse autoencoder whose L1
coefficient is typed 3.0 for 3e-3 (latents die), a skutsje tack-speed tanh regressor whose speed
log's calibration correction is compounded on every batch (drifting targets, a slow climb), a kaatsen
ball-carry GELU regressor converting metres to millimetres inside the fp16 autocast region (fp16
overflow), a sphairistike rally-length GELU regressor whose auxiliary loss weight is read in basis
points at its switch step (Adam's second moment poisoned), a tipcat stick-flight Gaussian NLL net
whose variance head lost its softplus (sqrt of a negative, NaN), a nipsy stone-throw Conv1d
classifier fed one shard in millimetres (one corrupted batch), a pall-mall mallet-stroke Huber
regressor whose epoch-end step sums the loss (one gradient burst), a bartitsu cane-parry deep ReLU
MLP whose Kaiming gain is applied twice (gradients grow through depth), a la-canne strike
classifier whose layer-wise lr decay is typed 0.05 for 0.95 (fc1 frozen), a longsword
bind-pressure tanh regressor whose linear-scaling rule is applied twice (past 2/sharpness), and
three controls (a knurr-and-spell strike sparse autoencoder with unit-norm decoder columns,
a heliochrome plate-exposure Conv1d classifier with SGD Nesterov, OneCycleLR and label smoothing,
a jeu-de-paume chase-mark Huber regressor under fp16 autocast with a GradScaler, Adamax and
ReduceLROnPlateau).

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


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
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


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


# -- sparse autoencoders ---------------------------------------------------------------------------


class SparseAutoencoder(nn.Module):
    """Dictionary learning: encoder -> act (ReLU latents) -> decoder (columns are the atoms)."""

    def __init__(self, d_in=48, latents=128):
        super().__init__()
        self.encoder = nn.Linear(d_in, latents)
        self.act = nn.ReLU()
        self.decoder = nn.Linear(latents, d_in)
        self.z = None

    def forward(self, x):
        self.z = self.act(self.encoder(x))
        return self.decoder(self.z)


def _sparse_codes(gen, batch, seed, d_in=48, atoms=64, active=4):
    """Readings built from a few of a fixed set of unit atoms with positive weights."""
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(atoms, d_in, generator=g), dim=1)
    while True:
        pick = torch.rand(batch, atoms, generator=gen).argsort(1)[:, :active]
        w = torch.zeros(batch, atoms).scatter_(
            1, pick, 0.5 + torch.rand(batch, active, generator=gen)
        )
        x = w @ dictionary + 0.02 * torch.randn(batch, d_in, generator=gen)
        yield x, x


def _sae_loss(model, l1):
    def loss_fn(out, x):
        return F.mse_loss(out, x) * x.shape[1] + l1 * model.z.abs().sum(-1).mean()

    return loss_fn


@scenario(
    family="rapper_sword_lock_figure_sparse_autoencoder",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("encoder", "act"),
    diverges=None,
    heldout=True,
    note="A hand-written sparse autoencoder (encoder, act: ReLU latents, decoder) learning a dictionary of 128 atoms for the 48 sword-grip and stepping readings of a rapper-sword team as it weaves its lock figure, Adam at 1e-2, summed-squares reconstruction plus an L1 penalty on the latents, 240 steps. The L1 coefficient was typed 3.0 for 3e-3: the penalty outweighs the reconstruction, every latent is pushed below zero, and once a latent is never positive it gets no gradient again: the latents die one after another over the first hundred steps (on average over 95% are never positive on a batch over the last 100 steps) and stay dead, the reconstruction stays as bad as predicting zero, and the loss stays finite.",
)
def h359_rapper_sword_sae_l1_typo(ctx: Context) -> None:
    gen = seeded(35901)
    model = SparseAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    l1 = 3.0  # meant: 3e-3
    dead, recon = [], []

    def watch(step, out, x, y):
        dead.append(_dead(model.z))
        recon.append(float(F.mse_loss(out.detach(), x) / x.pow(2).mean()))

    _loop(ctx, model, opt, _sparse_codes(gen, 256, 3591), 240, _sae_loss(model, l1), watch=watch)
    ctx.check("under a third of the latents are dead at step 0", dead[0] < 1 / 3)
    ctx.check(
        "over 95% of the latents are dead on average over the last 100 steps",
        _mean(dead[-100:]) > 0.95,
    )
    ctx.check("over 75% are dead in every one of the last 100 steps", min(dead[-100:]) > 0.75)
    ctx.check(
        "the relative reconstruction error over the last 20 steps is over 0.8 (nothing learnt)",
        _mean(recon[-20:]) > 0.8,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="knurr_and_spell_strike_unit_decoder_sparse_autoencoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written sparse autoencoder (encoder, act: ReLU latents, decoder) learning a dictionary of 128 atoms for 48 readings of a knurr-and-spell striker's swing and the knurr's release, AdamW at 2e-3 (no decay on biases) with linear warm-up over 20 steps, summed-squares reconstruction plus an L1 penalty 3e-3 on the latents, the decoder's columns renormalised to unit norm after each step (the usual guard against the L1 being dodged by shrinking latents and growing atoms), 240 steps. A control.",
)
def h359_knurr_and_spell_sae_unit_decoder(ctx: Context) -> None:
    gen = seeded(35902)
    model = SparseAutoencoder()
    decay = [model.encoder.weight, model.decoder.weight]
    no_decay = [model.encoder.bias, model.decoder.bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    dead, recon = [], []

    def renorm(step):
        with torch.no_grad():
            w = model.decoder.weight
            w.div_(w.norm(dim=0, keepdim=True).clamp_min(1e-8))

    def watch(step, out, x, y):
        dead.append(_dead(model.z))
        recon.append(float(F.mse_loss(out.detach(), x) / x.pow(2).mean()))

    renorm(-1)
    _loop(
        ctx,
        model,
        opt,
        _sparse_codes(gen, 256, 3592),
        240,
        _sae_loss(model, 3e-3),
        watch=watch,
        after=renorm,
        sched=sched,
    )
    norms = model.decoder.weight.detach().norm(dim=0)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the relative reconstruction error ends under 0.3", _mean(recon[-20:]) < 0.3)
    ctx.check("under half the latents are dead at the end", _mean(dead[-20:]) < 0.5)
    ctx.check("the decoder columns have unit norm", float((norms - 1).abs().max()) < 1e-4)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- skutsje: the log's calibration correction is compounded every batch --------------------------


@scenario(
    family="skutsje_sailing_tack_speed_log_calibration_tanh_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a Frisian skutsje's speed out of a tack from twelve readings of wind, leeboards and sail trim, SGD with momentum 0.9 at 1e-2, MSE, 260 steps. The data loader applies the speed log's calibration correction (x 1.012) to its running calibration factor on every batch where it was meant to be applied once, so the target speeds drift upward geometrically (over 20x over the run): the net tracks them at first, then falls behind, and the loss climbs slowly and steadily to many times its minimum, with no single jump and no NaN.",
)
def h359_skutsje_log_calibration_compounded(ctx: Context) -> None:
    gen = seeded(35903)
    model = Trunk(12, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    cal = {"factor": 1.0}

    def speeds():
        for x, y in _readings(gen, 64, 12, 3593):
            cal["factor"] *= 1.012  # meant: once, when the log is read in
            yield x, cal["factor"] * y

    _loop(ctx, model, opt, speeds(), 260, F.mse_loss)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean", _mean(ls[-20:]) > 5.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the targets' scale drifted over 5x", cal["factor"] > 5.0)


class ToMillimetres(nn.Module):
    """The unit conversion of the head's metres, in whatever dtype it is handed."""

    def forward(self, x):
        return x * 1000.0


class CarryInMillimetres(Trunk):
    """Trunk whose head predicts metres, converted to millimetres (to_mm) in the forward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_mm = ToMillimetres()

    def forward(self, x):
        return self.to_mm(super().forward(x))  # under autocast this is fp16: meant after .float()


KAATSEN_DIV = 60


@scenario(
    family="kaatsen_ball_carry_millimetre_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("to_mm", "head"),
    diverges=KAATSEN_DIV,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head, to_mm) predicting how far a Frisian kaatsen server's ball carries from ten readings of the glove, the swing and the wind, fp16 autocast with a torch.amp.GradScaler, Adam at 3e-3, MSE against the carry logged in millimetres, 200 steps. The head predicts metres and the conversion to millimetres (to_mm, x 1000) was written inside the autocast region, in fp16: the net learns the carries (30-90 m), and once a prediction passes 65.5 m its millimetre value passes fp16's 65504 and becomes inf: the loss is inf at the step where the predictions reach the longest serves, while the same batch in fp32 is finite.",
)
def h359_kaatsen_mm_inside_autocast(ctx: Context) -> None:
    gen = seeded(35904)
    model = CarryInMillimetres(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def carries():
        for x, y in _readings(gen, 64, 10, 3594):
            yield x, 1000.0 * (55.0 + 14.0 * y)

    def watch(step, out, x, y):
        seen["x"], seen["out"] = x, out

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e6

    _loop(ctx, model, opt, carries(), 200, loss_fn, watch=watch, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {KAATSEN_DIV}", bad == KAATSEN_DIV)
    ctx.check(
        "the output under autocast holds an inf",
        bad is not None and bool(torch.isinf(seen["out"]).any()),
    )
    with torch.no_grad():
        fp32 = Trunk.forward(model, seen["x"]) * 1000.0
    ctx.check(
        "the same batch in fp32 is finite and passes 65504 mm",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check("finite before the overflow", bad is not None and _finite(ctx.losses[:bad]))


# -- sphairistike: the auxiliary loss weight is read in basis points at its switch step -----------

SPHAIR_ONSET = 100


@scenario(
    family="sphairistike_rally_length_aux_weight_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SPHAIR_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the length of a sphairistike (early lawn tennis) rally (standardised) from twelve readings of the serve, the court and the hourglass net, Adam at 1e-3 (betas 0.9, 0.999), MSE, 260 steps. A loss-weight schedule switches the objective's weight at step 100 and, on that switch step only, reads the new weight from the config in basis points (10000 for 1.0): one ordinary batch's gradient is 10000x, Adam's second moment takes 0.1% of its square and keeps it for thousands of steps, and once the first moment has forgotten the burst the median per-weight update stays under a tenth of its size before while the gradients are not smaller; the loss stays finite and is left above where it was.",
)
def h359_sphairistike_aux_weight_basis_points(ctx: Context) -> None:
    gen = seeded(35905)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    updates = []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step):
        updates.append(float((_flat(model) - prev["w"]).abs().median()))

    def backprop(step, loss):
        weight = 10000.0 if step == SPHAIR_ONSET else 1.0  # the switch step reads basis points
        return weight * loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3595),
        260,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median of steps 80-99",
        g[SPHAIR_ONSET] > 1000.0 * _median(g[80:SPHAIR_ONSET]),
    )
    ctx.check(
        "the median per-weight update over steps 180-259 is under 1/10 of steps 60-99",
        _median(updates[180:260]) < 0.1 * _median(updates[60:SPHAIR_ONSET]),
    )
    ctx.check(
        "the gradients over steps 180-259 are not small (over 0.3x of steps 60-99)",
        _median(g[180:260]) > 0.3 * _median(g[60:SPHAIR_ONSET]),
    )
    ctx.check(
        "the loss at step 100 is ordinary (the batch is clean)",
        ctx.losses[SPHAIR_ONSET] < 3.0 * _median(ctx.losses[80:SPHAIR_ONSET]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tipcat: the variance head lost its softplus ----------------------------------------------------


class FlightNLL(nn.Module):
    """A Gaussian over the flight distance: mean_head and var_head on a SiLU trunk."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)  # meant: F.softplus(...) + 1e-4
        return torch.stack([self.mean_head(h).squeeze(-1), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    std = torch.sqrt(var)
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


TIPCAT_DIV = 39


@scenario(
    family="tipcat_stick_flight_gaussian_variance_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=TIPCAT_DIV,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, mean_head, var_head) giving a Gaussian over how far a tipcat (the 'cat' struck off its block) flies from ten readings of the strike, RMSprop at 3e-4, Gaussian NLL with std = sqrt(var), 200 steps. A refactor dropped the softplus on var_head (its bias starts at 1.0): as the fit tightens the NLL drives the predicted variance down, and an RMSprop step takes one sample's variance below zero: sqrt of a negative is NaN and the loss is NaN from that step.",
)
def h359_tipcat_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(35906)
    model = FlightNLL()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    seen = {}

    def watch(step, out, x, y):
        seen["var"] = out[:, 1].detach()

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3596, noise=0.1), 200, _gauss_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first NaN at step {TIPCAT_DIV}", bad == TIPCAT_DIV)
    ctx.check(
        "var_head gave a negative variance at that step",
        bad is not None and float(seen["var"].min()) < 0,
    )
    ctx.check(
        "the loss fell before it",
        bad is not None and bad > 20 and _mean(ctx.losses[bad - 10 : bad]) < _mean(ctx.losses[:10]),
    )


# -- nipsy: one shard of throw traces in millimetres ------------------------------------------------


class ThrowConv(nn.Module):
    """Conv1d classifier over a 2-channel 32-sample trace: conv1, act1, conv2, act2, pool, head."""

    def __init__(self, channels=2, width=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def _traces(gen, batch, seed, classes=4, length=32):
    """Two-channel traces: one frequency and phase per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 + 3.0 * torch.rand(classes, 2, generator=g)
    phase = 6.28 * torch.rand(classes, 2, generator=g)
    t = torch.linspace(0, 6.28, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase[y][:, :, None])
        yield x + 0.6 * torch.randn(batch, 2, length, generator=gen), y


NIPSY_ONSET = 120


@scenario(
    family="nipsy_stone_throw_trace_conv1d_classifier",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=NIPSY_ONSET,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of four throws a nipsy player made (the 'nipsy' knocked up off the stone and struck) from a two-channel 32-sample trace of the stick, Adagrad at 5e-2, cross-entropy, gradient clipping at 1.0, 220 steps. One league's shard was logged in millimetres and not standardised; it arrives as the batch of step 120: its loss and gradient are over 20x the run's, the clipped step knocks the net back briefly and the run recovers.",
)
def h359_nipsy_shard_in_millimetres(ctx: Context) -> None:
    gen = seeded(35907)
    model = ThrowConv()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == NIPSY_ONSET else (x, y)  # that shard is in mm

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 3597),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of steps 100-119",
        ls[NIPSY_ONSET] > 20.0 * _median(ls[100:NIPSY_ONSET]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of steps 100-119",
        g[NIPSY_ONSET] > 20.0 * _median(g[100:NIPSY_ONSET]),
    )
    ctx.check("the loss fell before the shard", _mean(ls[100:NIPSY_ONSET]) < 0.6 * _mean(ls[:10]))
    ctx.check(
        "the run recovers (last 20 steps under 1.5x steps 100-119)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:NIPSY_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- pall mall: the epoch's last step sums the loss -------------------------------------------------

PALL_ONSET = 150


@scenario(
    family="pall_mall_mallet_stroke_distance_silu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=PALL_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far a pall-mall mallet stroke sends the boxwood ball down the alley (standardised) from twelve readings of the swing, SGD with Nesterov momentum 0.9 at 2e-2, Huber loss, gradient clipping at 5.0, 240 steps. The epoch's last step (150) takes a separate path for the partial batch and calls the loss with reduction='sum' over a full batch of 128 where 'mean' was meant: that step's gradient is over 50x on a perfectly ordinary batch, the clipped step knocks the net back and the run recovers.",
)
def h359_pall_mall_epoch_end_sum(ctx: Context) -> None:
    gen = seeded(35908)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    seen = {}

    def watch(step, out, x, y):
        seen[step] = (out, y)

    def backprop(step, loss):
        if step == PALL_ONSET:
            out, y = seen[step]
            return F.huber_loss(out, y, reduction="sum")  # meant: the mean
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 12, 3598),
        240,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median of steps 130-149",
        g[PALL_ONSET] > 50.0 * _median(g[130:PALL_ONSET]),
    )
    ctx.check(
        "the loss at step 150 is ordinary (a clean batch)",
        ls[PALL_ONSET] < 2.0 * _median(ls[130:PALL_ONSET]),
    )
    ctx.check(
        "the loss after the burst is over 1.5x before it",
        max(ls[PALL_ONSET + 1 : PALL_ONSET + 4]) > 1.5 * _median(ls[130:PALL_ONSET]),
    )
    ctx.check(
        "the run recovers (last 20 steps under 1.5x steps 130-149)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[130:PALL_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- bartitsu: the Kaiming gain is applied twice ----------------------------------------------------


class DeepParryNet(nn.Module):
    """Twelve Linear + ReLU layers (layers.0 ... layers.11) and a head; keeps each layer's output
    for gradient readings."""

    def __init__(self, d_in=16, width=64, depth=12, out=1):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, out)
        gain = nn.init.calculate_gain("relu")
        for layer in self.layers:
            fan_in = layer.weight.shape[1]
            # meant: std = gain / sqrt(fan_in); the helper already folds the gain into its
            # variance, and the caller multiplies by the gain again
            nn.init.normal_(layer.weight, std=gain * math.sqrt(2.0 / fan_in))
            nn.init.zeros_(layer.bias)
        self.hs = []

    def forward(self, x):
        self.hs = []
        for layer in self.layers:
            x = F.relu(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.hs.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="bartitsu_cane_parry_timing_deep_relu_mlp",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 12-layer ReLU MLP (layers.0 ... layers.11, head) predicting a bartitsu cane parry's timing (standardised) from sixteen readings of the attacker's lunge, RAdam at 1e-3, MSE, gradient clipping at 1.0, 200 steps. The init helper returns std sqrt(2 / fan_in), which already holds the ReLU gain, and the caller multiplies it by calculate_gain('relu') again: every layer amplifies by about sqrt(2), the output starts several times too large, and the backward pass grows by the same factor per layer: the gradient at the first layer's output is over 20x that at the last layer's at the start and stays over 10x through the first 50 steps; clipping keeps the steps bounded and the loss stays finite.",
)
def h359_bartitsu_kaiming_gain_twice(ctx: Context) -> None:
    gen = seeded(35909)
    model = DeepParryNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []

    def inspect(step):
        first = model.hs[0].grad
        last = model.hs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _readings(gen, 64, 16, 3599), 200, F.mse_loss, clip=1.0, inspect=inspect)
    ctx.check(
        "the first layer's output gradient is over 20x the last's at step 0", ratios[0] > 20.0
    )
    ctx.check("and over 10x in every one of the first 50 steps", min(ratios[:50]) > 10.0)
    ctx.check("the loss starts over 20x the target variance", ctx.losses[0] > 20.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- la canne: the layer-wise lr decay is typed 0.05 for 0.95 --------------------------------------


@scenario(
    family="la_canne_strike_class_llrd_relu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming which of six strikes a la canne fencer threw (brisé, croisé, enlevé, latéral, ...) from 24 readings of the cane's path, NAdam at 3e-3 with layer-wise lr decay, cross-entropy, 200 steps. The decay factor was typed 0.05 for 0.95: the head trains at 3e-3, fc2 at 1.5e-4 and fc1 at 7.5e-6, so fc1 moves under 2% of its norm over the whole run while the head moves by more than its own norm (over 100x fc1's relative movement); the loss falls (slowly, the head learns on nearly random features) and stays finite.",
)
def h359_la_canne_llrd_typo(ctx: Context) -> None:
    gen = seeded(35910)
    model = Trunk(24, 64, out=6)
    base, decay = 3e-3, 0.05  # meant: 0.95
    groups = [
        {"params": model.head.parameters(), "lr": base},
        {"params": model.fc2.parameters(), "lr": base * decay},
        {"params": model.fc1.parameters(), "lr": base * decay**2},
    ]
    opt = torch.optim.NAdam(groups)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 24, 6, 35910, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    moved1, movedh = _rel_change(w1, model.fc1.weight), _rel_change(wh, model.head.weight)
    ctx.check("fc1 moved under 2% of its norm over the run", moved1 < 0.02)
    ctx.check("the head moved over its own norm", movedh > 1.0)
    ctx.check("fc1's relative movement is under 1/100 of the head's", moved1 < 0.01 * movedh)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.9))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- longsword: the linear-scaling rule is applied twice --------------------------------------------

LONGSWORD_DIV = 10


@scenario(
    family="longsword_bind_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges=LONGSWORD_DIV,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the pressure in a longsword bind (standardised) from twelve readings of the two blades, plain SGD, MSE, batch 256, 200 steps. The recipe's lr 0.05 was tuned for batch 32 and the linear-scaling rule (x 256 / 32) was applied in the config and again in the training script: lr 3.2, and lr x the top Hessian eigenvalue (power iteration on Hessian-vector products) is past 2 from the start: the loss oscillates, grows and overflows.",
)
def h359_longsword_linear_scaling_twice(ctx: Context) -> None:
    gen = seeded(35911)
    model = Trunk(12, 64, act=nn.Tanh)
    lr = 0.05 * (256 / 32)  # the config already scaled it
    lr = lr * (256 / 32)  # the script scales again
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 256, 12, 35911)
    x0, y0 = next(batches)
    eig = _sharpness(model, F.mse_loss, x0, y0)
    _loop(ctx, model, opt, batches, 200, F.mse_loss)
    bad = _first_bad(ctx.losses)
    ctx.check("lr x top Hessian eigenvalue at the start is over 2", lr * eig > 2.0)
    ctx.check("the intended lr (0.4) x it is under 2", 0.4 * eig < 2.0)
    ctx.check(f"the loss is first non-finite at step {LONGSWORD_DIV}", bad == LONGSWORD_DIV)


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="heliochrome_plate_exposure_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of four exposure regimes a heliochrome (early colour photographic) plate got from a two-channel 32-sample trace of the light meter and the plate temperature, SGD with Nesterov momentum 0.9 under OneCycleLR (peak 0.1), cross-entropy with label smoothing 0.1, gradient clipping at 2.0, 220 steps. A control.",
)
def h359_heliochrome_onecycle_label_smoothing(ctx: Context) -> None:
    gen = seeded(35912)
    model = ThrowConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=220)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 35912),
        220,
        loss_fn,
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="jeu_de_paume_chase_mark_fp16_silu_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting where a jeu de paume chase is marked on the floor (standardised) from twelve readings of the stroke and the ball's second bounce, fp16 autocast with a torch.amp.GradScaler, Adamax at 4e-3, Huber loss on noisy marks, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, clipping at 1.0, 240 steps. A control.",
)
def h359_jeu_de_paume_fp16_plateau(ctx: Context) -> None:
    gen = seeded(35913)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 32, 12, 35913, noise=0.2)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        batches,
        240,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
