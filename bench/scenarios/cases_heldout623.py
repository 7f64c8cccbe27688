"""Held-out set 623 (``h623_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data or scikit-learn's bundled digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, digit_batches, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(model: nn.Module) -> float:
    return float(
        torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
    )


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


# -- faults -----------------------------------------------------------------------------------------


class ElmanCell(nn.Module):
    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.ih = nn.Linear(n_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.ih(x) + self.hh(h))


class ClapperRNN(nn.Module):
    """Hand-written ReLU Elman RNN over a swing trace, regresses the strike time from the end."""

    def __init__(self, n_in: int = 2, hidden: int = 24) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(n_in, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.out(h)


def _swing_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        t = torch.arange(length)[None] * 0.3
        x = torch.stack([torch.sin(t + phase), torch.cos(t + phase)], -1)
        yield x, torch.sin(phase + 0.3 * length)


@scenario(
    family="bellfounder_clapper_swing_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh",),
    diverges="auto",
    onset=80,
    heldout=True,
    note="hand-written ReLU Elman RNN whose recurrent weight was initialised orthogonal with gain "
    "1.6 (an IRNN recipe copied with the wrong gain); fine on the 8-step warm-up traces, but at "
    "step 80 the loader switches to full 64-step traces and the gradient through time explodes, "
    "SGD momentum takes a giant step, the loss blows up",
)
def h623_bellfounder_clapper_recurrent_gain(ctx: Context) -> None:
    gen = seeded(6231)
    model = ClapperRNN()
    nn.init.orthogonal_(model.cell.hh.weight, gain=1.6)  # recipe: gain 1.0
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    ctx.attach(model, opt)
    short, full = _swing_batches(gen, length=8), _swing_batches(gen, length=64)
    onset = 80
    for step in range(160):
        x, y = next(short if step < onset else full)
        keep: list | None = [] if step == onset else None
        loss = F.mse_loss(model(x, keep), y)
        loss.backward()
        if keep is not None:
            first, last = float(keep[0].grad.norm()), float(keep[-1].grad.norm())
            ctx.check("gradient at t=0 over 100x the last step's at onset", first > 100 * last)
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss fell before onset", ls[onset - 1] < 0.1 * ls[0])
    ctx.check(
        "gradient over 1000x its pre-onset median at onset", gs[onset] > 1e3 * _median(gs[40:onset])
    )
    finite = [v for v in ls if math.isfinite(v)]
    ctx.check(
        "loss blew up (non-finite or over 1000x its start)",
        (not _finite(ls)) or max(finite) > 1e3 * ls[0],
    )


class SaltpanNet(nn.Module):
    def __init__(self, n_in: int = 16, hidden: int = 32, k: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(x)))


@scenario(
    family="saltpan_crystal_grade_raw_nll_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="F.nll_loss called on the head's raw logits (the log_softmax was dropped in a refactor): "
    "the loss is unbounded below, the target logits are pushed up without bound and the head's "
    "logits grow over 20x while the loss runs off to large negative values",
)
def h623_saltpan_crystal_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(6232)
    model = SaltpanNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _classes(gen)
    scale = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.nll_loss(logits, y)  # bug: should be F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        scale.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew over 20x", scale[-1] > 20 * scale[0])
    ctx.check("logit growth still going in the last 50 steps", scale[-1] > 1.3 * scale[-50])
    ctx.check("loss fell below -10", ctx.losses[-1] < -10)


class SliotarNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 32)
        self.mid = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.mid(F.silu(self.enc(x)))))


@scenario(
    family="hurling_sliotar_carry_group_typo_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("mid",),
    diverges=None,
    heldout=True,
    note="three Adagrad param groups; mid's lr typed 5e-8 for 5e-2 in the config, mid's weights "
    "barely move while enc and out train",
)
def h623_hurling_sliotar_mid_lr_typo(ctx: Context) -> None:
    gen = seeded(6233)
    model = SliotarNet()
    opt = torch.optim.Adagrad(
        [
            {"params": model.enc.parameters(), "lr": 5e-2},
            {"params": model.mid.parameters(), "lr": 5e-8},  # typo: 5e-2
            {"params": model.out.parameters(), "lr": 5e-2},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w_mid, w_enc = model.mid.weight.detach().clone(), model.enc.weight.detach().clone()
    for _ in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel_mid = float((model.mid.weight.detach() - w_mid).norm() / w_mid.norm())
    rel_enc = float((model.enc.weight.detach() - w_enc).norm() / w_enc.norm())
    ctx.check("mid moved under 1e-5 relative", rel_mid < 1e-5)
    ctx.check("enc moved over 1e-2 relative", rel_enc > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < ctx.losses[0] and _finite(ctx.losses))


def _sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [a.detach() for a in hv]
    return lam


@scenario(
    family="mangrove_root_accretion_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=25,
    heldout=True,
    note="plain SGD with a linear warm-up whose peak was typed 1.5 for 0.15: the rate ramps past "
    "2/sharpness during warm-up, the loss starts to oscillate and blows up",
)
def h623_mangrove_accretion_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(6234)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    peak, warm = 1.5, 100  # typo: 0.15
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    ctx.attach(model, opt)
    batches = _regression(gen)
    xp, yp = next(batches)
    crossed = None
    for step in range(150):
        x, y = next(batches)
        lr = opt.param_groups[0]["lr"]
        if crossed is None and step % 5 == 0:
            if lr * _sharpness(model, xp, yp) > 2.0:
                crossed = step
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("lr x sharpness crossed 2 during warm-up", crossed is not None)
    ctx.check(
        "loss fell before the crossing",
        crossed is not None and min(ls[: crossed + 1]) < 0.7 * ls[0],
    )
    finite = [v for v in ls if math.isfinite(v)]
    ctx.check("loss blew up over 100x its start", (not _finite(ls)) or max(finite) > 100 * ls[0])


class BonsaiNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gauge = nn.Linear(8, 32)
        self.bend = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.bend(F.gelu(self.gauge(x)))))


@scenario(
    family="bonsai_wire_bend_huber_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="one shard's missing wire-gauge readings were written as the sentinel -9999 instead of "
    "being dropped; the batch at step 110 carries three such samples, the gradient and Huber "
    "loss jump, the run recovers",
)
def h623_bonsai_wire_sentinel_shard(ctx: Context) -> None:
    gen = seeded(6235)
    model = BonsaiNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:3, 2] = -9999.0  # missing-value sentinel left in the shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient over 20x its median at onset", gs[onset] > 20 * _median(gs[onset - 20 : onset])
    )
    ctx.check("loss over 10x its median at onset", ls[onset] > 10 * _median(ls[onset - 20 : onset]))
    ctx.check(
        "recovered: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


class SapSpread(nn.Module):
    """Standard deviation of the sugar reading: sqrt of a linear output (its clamp was lost)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.raw = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.raw(h))  # missing: .clamp_min(1e-6)


class SapNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.mean = nn.Linear(32, 1)
        self.spread = SapSpread(32)
        nn.init.constant_(self.spread.raw.bias, 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mean(h), self.spread(h)


@scenario(
    family="maple_sap_sugar_sqrt_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread",),
    diverges=81,
    heldout=True,
    note="Gaussian NLL whose standard deviation is sqrt of a raw linear output; the clamp_min was "
    "lost in a refactor. As the NLL pushes the variance down, an update takes the raw output "
    "below zero for some samples and sqrt returns NaN",
)
def h623_maple_sap_sqrt_without_clamp(ctx: Context) -> None:
    gen = seeded(6236)
    model = SapNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, noise=0.02)
    seen: dict[str, torch.Tensor] = {}
    model.spread.raw.register_forward_hook(lambda m, i, o: seen.__setitem__("raw", o.detach()))
    for _ in range(300):
        x, y = next(batches)
        mu, sd = model(x)
        loss = (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    k = len(ls) - 1
    ctx.check("loss NaN at step 81", k == 81 and math.isnan(ls[k]))
    ctx.check("spread's raw output negative there", bool((seen["raw"] < 0).any()))
    ctx.check("loss finite and falling before", _finite(ls[:k]) and ls[k - 1] < ls[0])


class GatherEnergy(nn.Module):
    """Sum of squares over the furnace trace: the signal's energy."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h * h).sum(1)


class GlassNet(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.probe = nn.Linear(4, hidden)
        self.energy = GatherEnergy()
        self.out = nn.Sequential(nn.Linear(hidden, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.log1p(self.energy(self.probe(x))))


def _furnace_batches(gen: torch.Generator, batch: int = 32, length: int = 256):
    while True:
        amp = 0.5 + torch.rand(batch, 1, 1, generator=gen)
        x = amp * torch.randn(batch, length, 4, generator=gen)
        yield x, torch.log(amp[:, 0])


@scenario(
    family="glassblower_gather_energy_fp16_pool_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; the energy pooling (sum of squares over 256 samples) runs "
    "in fp16. From step 90 a new pyrometer feeds raw counts (gain x40 left uncalibrated): the "
    "fp16 sum overflows past 65504 to inf, the loss is non-finite; the same batch is finite in "
    "float32",
)
def h623_glassblower_energy_fp16_gain(ctx: Context) -> None:
    gen = seeded(6237)
    model = GlassNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _furnace_batches(gen)
    seen: dict[str, torch.Tensor] = {}
    model.energy.register_forward_hook(lambda m, i, o: seen.__setitem__("e", o.detach()))
    onset = 90
    for step in range(150):
        x, y = next(batches)
        if step >= onset:
            x = x * 40.0  # uncalibrated pyrometer gain
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "energy's fp16 output non-finite at onset", not bool(seen["e"].isfinite().all())
            )
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(_gnorm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


class ChainmailNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rings = nn.Linear(64, 64)
        self.weave = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.weave(F.relu(self.rings(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    family="chainmail_ring_weave_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("weave",),
    diverges=None,
    heldout=True,
    note="SGD Nesterov on digits fed raw 0-16 pixel counts (the /16 scaling dropped) at lr 0.1: "
    "early large updates push most of weave's ReLUs negative for every input, they die and the "
    "loss stalls",
)
def h623_chainmail_weave_dead_relus(ctx: Context) -> None:
    gen = seeded(6238)
    model = ChainmailNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    xp, _ = next(batches)
    xp = xp * 16.0

    def dead() -> float:
        with torch.no_grad():
            return float((model.features(xp) <= 0).all(0).float().mean())

    d0 = dead()
    for _ in range(200):
        x, y = next(batches)
        x = x * 16.0  # bug: raw counts, the loader's /16 was dropped
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d1 = dead()
    ctx.check("under 20% of weave dead at the start", d0 < 0.2)
    ctx.check("over 60% of weave dead at the end", d1 > 0.6)
    ctx.check("loss stalls above 1.0", _median(ctx.losses[-20:]) > 1.0)


class SheepdogNet(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.fc = nn.Linear(8 * 16, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x[:, None]))
        h = F.relu(self.fc(h.flatten(1)))
        return self.head(h) / self.temperature


@scenario(
    family="sheepdog_whistle_command_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="whistle-command classifier whose logits are divided by a temperature read from a "
    "config as 1.0 and then converted ms to s by mistake (0.001): logits 1000x, most rows' target "
    "probability rounds to exactly 1.0 in float32",
)
def h623_sheepdog_whistle_temperature_units(ctx: Context) -> None:
    gen = seeded(6239)
    model = SheepdogNet(temperature=1e-3)  # meant 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _classes(gen, n_in=16, k=4)
    frac = 0.0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac = collapsed_fraction(logits.detach(), y)
    ctx.check("over 50% of rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("finite", _finite(ctx.losses))


class RopewalkNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.strand = nn.Linear(8, 48)
        self.lay = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lay(torch.tanh(self.strand(x)))


@scenario(
    family="ropewalk_strand_twist_accum_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="4-micro-batch gradient accumulation; on the step after a checkpoint save (step 120) the "
    "loop's resume path forgets to divide by the accumulation count and multiplies the loss "
    "weight by 10 (percent read as a factor): one 40x gradient burst from ordinary data, SGD "
    "momentum recovers",
)
def h623_ropewalk_accum_resume_bug(ctx: Context) -> None:
    gen = seeded(62310)
    model = RopewalkNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=16)
    onset, accum = 120, 4
    for step in range(220):
        weight = 1.0 / accum if step != onset else 10.0  # bug on the resume step
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (weight * loss).backward()
            total += float(loss.detach()) / accum
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient over 20x its median at onset", gs[onset] > 20 * _median(gs[onset - 20 : onset])
    )
    ctx.check(
        "logged loss ordinary at onset (under 3x)", ls[onset] < 3 * _median(ls[onset - 20 : onset])
    )
    ctx.check(
        "recovered: last 20 under 2x pre-onset",
        _median(ls[-20:]) < 2 * _median(ls[onset - 20 : onset]),
    )
    ctx.check("finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


class SeracNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.melt = nn.Linear(8, 48)
        self.creep = nn.Linear(48, 48)
        self.out = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.creep(F.silu(self.melt(x)))))


@scenario(
    family="icefall_serac_creep_clipped_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy but alarming: clip_grad_norm_ at max_norm 0.02, far below the typical gradient "
    "norm, so it clips on nearly every step; Adam is insensitive to the gradient's scale and the "
    "run trains normally",
)
def h623_icefall_serac_always_clipped(ctx: Context) -> None:
    gen = seeded(62311)
    model = SeracNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    clipped = 0
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        pre = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.02))
        clipped += pre > 0.02
        ctx.grad_norms.append(pre)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("clipped on over 90% of steps", clipped > 0.9 * len(ls))
    ctx.check("loss fell over 70%", _median(ls[-20:]) < 0.3 * ls[0])
    ctx.check("finite", _finite(ls))


class FeltNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 12, 3, padding=1)
        self.norm = nn.BatchNorm2d(12)
        self.head = nn.Linear(12 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.norm(self.conv(x.reshape(-1, 1, 8, 8)))), 2)
        return self.head(h.flatten(1))


@scenario(
    family="hatter_felt_shrink_onecycle_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: SGD Nesterov with OneCycleLR (peak 0.2), label smoothing 0.1, weight decay in "
    "a separate param group (none on norm/bias), 5% noisy labels, on digits",
)
def h623_hatter_felt_onecycle(ctx: Context) -> None:
    gen = seeded(62312)
    model = FeltNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.02,
        momentum=0.9,
        nesterov=True,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        noisy = torch.rand(len(y), generator=gen) < 0.05
        y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(_gnorm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-20:]) < 0.5 * ls[0])
    ctx.check("finite", _finite(ls))


class SmokerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuel = nn.Linear(8, 32)
        self.draft = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.elu(self.draft(F.elu(self.fuel(x)))))


@scenario(
    family="beekeeper_smoker_plateau_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: RMSprop with ReduceLROnPlateau on a 20-step mean loss, Huber loss, "
    "2-micro-batch gradient accumulation, clipping at 1.0, noisy targets",
)
def h623_beekeeper_smoker_plateau(ctx: Context) -> None:
    gen = seeded(62313)
    model = SmokerNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=32, noise=0.2)
    for step in range(240):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
        if step % 20 == 19:
            sched.step(sum(ctx.losses[-20:]) / 20)
    ls = ctx.losses
    ctx.check("loss fell over 50%", _median(ls[-20:]) < 0.5 * ls[0])
    ctx.check("finite", _finite(ls))
