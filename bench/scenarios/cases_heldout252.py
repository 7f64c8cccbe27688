"""Held-out set 252 (``h252_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lavender-still oil-yield SiLU MLP fed one still's steam
gauge in pascals under fp16 autocast, a wetland methane-ebullition net whose bubble-share feature
divides 0 by 0 for a flooded chamber, an espalier pear fruit-set regressor whose EMA evaluation
forgets to restore the live weights once, a spinning-top spin-time regressor whose unfrozen
encoder group is reset to lr 0 by LambdaLR every step, a hydrothermal-vent plume Conv1d stack
whose init std dropped the channel count from the fan-in, a dendrochronology latewood-density
tanh regressor whose warm-up peak was typed 10x, an oarlock swivel-pin wear regressor fed one
logger's -9999 missing-value codes, a skep straw-hive two-head net whose loss balancer is resumed
with a 1e-3 buffer for one step, a marbles ring-shot classifier whose temperature annealing floor
was typed 1e-4 for 1e-1, a varve sediment-layer regressor whose L2 penalty has its sign flipped,
and three controls (a corn-maze exit-time Huber regressor with RAdam, param groups and
ReduceLROnPlateau, a poi-spinning flower-pattern GELU classifier with OneCycleLR, label smoothing
and clipping, a needle-felting barb-depth Gaussian-NLL MLP under fp16 autocast with a GradScaler
and accumulation).

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


def _moved(model: nn.Module, w0: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm().clamp_min(1e-12))
        for n, p in model.named_parameters()
    }


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
    amp=None,
    accumulate=1,
    backprop=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``backprop(step, loss, out,
    y)`` returns what is backpropagated (default: the loss), ``after(step)`` runs after the
    optimizer step; ``amp`` is the autocast dtype (None: float32); stops after logging a NaN."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, out, y) if backprop is not None else loss
            total = total / accumulate
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


# -- lavender still: one still's steam gauge in pascals into an fp16 forward ----------------------

ONSET_LAVENDER = 100


def _still_readings(gen, batch, pascals_from, seed=3):
    """Twelve standardised readings of a lavender steam still (charge mass, steam pressure,
    condenser temperature, distillation minutes, ...) and the essential-oil yield, standardised.
    From ``pascals_from`` the batches come from a still whose gauge logs the steam pressure
    (column 1) in pascals instead of the standardised bar reading."""
    stream = _readings(gen, batch, 12, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step >= pascals_from:
            x = x.clone()
            x[:, 1] = 1.5e5 + 2e4 * x[:, 1]  # absolute pascals, about 1.5 bar
        step += 1
        yield x, y


@scenario(
    family="lavender_still_oil_yield_fp16_silu_mlp",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_LAVENDER,
    heldout=True,
    onset=ONSET_LAVENDER,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the essential-oil yield of a lavender steam-distillation run from 12 standardised readings (charge mass, steam pressure, condenser temperature, minutes, ...), AdamW at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 100 the batches come from a second still whose gauge logs the steam pressure in absolute pascals (about 1.5e5) and the loader passes it on unscaled. Under autocast fc1 casts its input to fp16, where 1.5e5 is past 65504 and becomes inf: fc1's output and the prediction are non-finite and the loss is NaN at step 100. The same batch through the same weights in float32 gives a finite output.",
)
def h252_lavender_still_pascals_fp16(ctx: Context) -> None:
    gen = seeded(25201)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_LAVENDER:
            seen["x_max"] = float(x.abs().max())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                seen["x_finite"] = bool(torch.isfinite(x).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1_finite"] = bool(torch.isfinite(model.fc1(x)).all())
                seen["out_finite"] = bool(torch.isfinite(out).all())

    def loss_fn(out, y):
        return F.mse_loss(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _still_readings(gen, 64, pascals_from=ONSET_LAVENDER),
        130,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LAVENDER], ratio=0.5))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_LAVENDER)
    ctx.check("the onset inputs are in pascals (max over 65504)", seen.get("x_max", 0.0) > 65504)
    ctx.check("the onset inputs are finite in float32", seen.get("x_finite") is True)
    ctx.check("fc1's fp16 output is non-finite at the onset", seen.get("fc1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- wetland methane ebullition: the bubble share divides 0 by 0 ----------------------------------

ONSET_METHANE = 90


class BubbleShare(nn.Module):
    """The ebullitive share of a chamber's methane flux: bubble / (bubble + diffusive)."""

    def forward(self, flux):
        return flux[:, :1] / (flux[:, :1] + flux[:, 1:2])


class EbullitionNet(nn.Module):
    def __init__(self, extra=8, hidden=48):
        super().__init__()
        self.share = BubbleShare()
        self.fc1 = nn.Linear(extra + 3, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        flux, rest = x[:, :2], x[:, 2:]
        z = torch.cat([torch.log1p(flux), self.share(flux), rest], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _methane_readings(gen, batch, flooded_from, seed=7):
    """A floating chamber's bubble-trap and diffusive methane fluxes (mg m-2 h-1, positive),
    eight standardised readings (water-table depth, sediment temperature, pressure drop, ...)
    and the next day's total flux, standardised. From ``flooded_from`` one chamber is flooded:
    its logger writes 0 for both fluxes on a quarter of the rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        rest = torch.randn(batch, 8, generator=gen)
        bub = torch.exp(0.5 + 0.6 * torch.randn(batch, generator=gen))
        dif = torch.exp(1.0 + 0.4 * torch.randn(batch, generator=gen))
        share = bub / (bub + dif)
        y = torch.tanh(rest @ w / math.sqrt(8)) + 1.2 * (share - 0.35)
        y = y + 0.05 * torch.randn(batch, generator=gen)
        if step >= flooded_from:
            dead = torch.arange(batch) % 4 == 0
            bub = torch.where(dead, 0.0, bub)
            dif = torch.where(dead, 0.0, dif)
        step += 1
        yield torch.cat([bub[:, None], dif[:, None], rest], 1), y


@scenario(
    family="wetland_methane_ebullition_share_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("share",),
    diverges=ONSET_METHANE,
    heldout=True,
    onset=ONSET_METHANE,
    note="A wetland methane-flux net: a `share` module computing the ebullitive share bubble / (bubble + diffusive) of a floating chamber's two methane fluxes with no epsilon, then fc1, act1, fc2, act2 (SiLU) and a head, NAdam at 2e-3, MSE. From step 90 one chamber is flooded and its logger writes 0 for both fluxes on a quarter of the rows (finite values, accepted by the loader): the share is 0/0 = NaN in `share` and the loss is NaN at step 90.",
)
def h252_methane_ebullition_zero_over_zero(ctx: Context) -> None:
    gen = seeded(25202)
    model = EbullitionNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_METHANE:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["zero_rows"] = int(((x[:, 0] == 0) & (x[:, 1] == 0)).sum())
                seen["share_nan"] = bool(torch.isnan(model.share(x[:, :2])).any())
        if step == ONSET_METHANE - 1:
            with torch.no_grad():
                seen["share_before"] = bool(torch.isfinite(model.share(x[:, :2])).all())

    _train(
        ctx,
        model,
        opt,
        _methane_readings(gen, 64, flooded_from=ONSET_METHANE),
        120,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_METHANE], ratio=0.6))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_METHANE)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the onset batch has rows with both fluxes 0", seen.get("zero_rows", 0) > 0)
    ctx.check("share is finite on the batch before the onset", seen.get("share_before") is True)
    ctx.check("share produces NaN at the onset", seen.get("share_nan") is True)


# -- espalier pear: the EMA evaluation forgets to restore the live weights once ------------------

ONSET_ESPALIER = 120


def _tier_readings(gen, batch, seed=43):
    """Twelve standardised readings of an espalier pear tier and its fruit set, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(12)) + 0.3 * x[:, 0]
        yield x, y + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="espalier_pear_fruit_set_ema_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ESPALIER,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the fruit set of an espalier-trained pear tier from 12 standardised readings (arm angle, spur count, bloom date, pollinator visits, ...), Adam at 2e-3, MSE. The loop keeps an EMA of the weights (decay 0.999) and every 40 steps swaps it in to validate, then restores the live weights. At the validation after step 120 the validation loader is empty (a shard listing glitch) and the early-return skips the restore: training continues from the EMA weights, which still carry about 90% of the initialisation, so the loss jumps at step 120 to over 5x its level before; the batches are ordinary and the run recovers within tens of steps; finite, no divergence.",
)
def h252_espalier_ema_restore_skipped(ctx: Context) -> None:
    gen = seeded(25203)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs = []

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                ema[n].mul_(0.999).add_(p.detach(), alpha=0.001)
            if (step + 1) % 40 == 0:
                live = {n: p.detach().clone() for n, p in model.named_parameters()}
                for n, p in model.named_parameters():
                    p.copy_(ema[n])
                loader_empty = step + 1 == ONSET_ESPALIER
                if loader_empty:
                    return  # the early return skips the restore below
                for n, p in model.named_parameters():
                    p.copy_(live[n])

    def watch(step, out, x, y):
        if step in (ONSET_ESPALIER - 1, ONSET_ESPALIER):
            xs.append(float(x.abs().max()))

    _train(ctx, model, opt, _tier_readings(gen, 64), 220, F.mse_loss, after=after, watch=watch)
    ls = ctx.losses
    before = _median(ls[ONSET_ESPALIER - 20 : ONSET_ESPALIER])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ESPALIER], ratio=0.5))
    ctx.check("loss at the onset over 5x the median before", ls[ONSET_ESPALIER] > 5 * before)
    ctx.check("the loss just before the onset is ordinary", ls[ONSET_ESPALIER - 1] < 2 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_ESPALIER + 50 : ONSET_ESPALIER + 60]) < 2 * before,
    )


# -- spinning top: the unfrozen encoder group is reset to lr 0 by LambdaLR -----------------------

UNFREEZE_TOP = 30


class TopNet(nn.Module):
    """enc1 -> act1 -> enc2 -> act2 (the pretrained encoder) -> head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.enc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.enc2(self.act1(self.enc1(x))))).squeeze(-1)


@scenario(
    family="spinning_top_spin_time_encoder_head_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="update_ratio_out_of_range",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="A tanh encoder (enc1, act1, enc2, act2) and head regressing how long a spinning top spins from 10 standardised readings of the throw (string pull, tip radius, top mass, release tilt, ...), SGD with momentum 0.9, MSE, two param groups and a LambdaLR warm-up + cosine. The fine-tuning recipe freezes the encoder for the first 30 steps by creating its group with lr 0 and unfreezing it at step 30 by setting the group's 'initial_lr' to 2e-2 (the key schedulers read when resuming); but LambdaLR multiplies the base_lrs it cached at construction (0 for the encoder) by the schedule at every sched.step(), so the encoder's lr stays 0 for the whole run. The encoder weights do not move at all (under 1e-6 of their norm) while the head moves by percents; the loss still falls on the head alone, finite, no blow-up.",
)
def h252_spinning_top_lambdalr_freeze(ctx: Context) -> None:
    steps = 200

    def run(c, buggy):
        gen = seeded(25204)
        model = TopNet(10)
        enc = [p for n, p in model.named_parameters() if n.startswith("enc")]
        opt = torch.optim.SGD(
            [
                {"params": enc, "lr": 0.0 if buggy else 2e-2},
                {"params": model.head.parameters(), "lr": 2e-2},
            ],
            momentum=0.9,
        )

        def lam(step):
            if step < 20:
                return (step + 1) / 20
            return 0.5 * (1 + math.cos(math.pi * (step - 20) / (steps - 20)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        frozen = not buggy  # the twin freezes with requires_grad instead
        if frozen:
            for p in enc:
                p.requires_grad_(False)

        def before(step):
            if step == UNFREEZE_TOP:
                if buggy:
                    opt.param_groups[0]["initial_lr"] = 2e-2
                else:
                    for p in enc:
                        p.requires_grad_(True)

        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train(
            c, model, opt, _readings(gen, 64, 10, 47), steps, F.mse_loss, before=before, sched=sched
        )
        return _moved(model, w0), opt.param_groups[0]["lr"]

    twin = _Quiet()
    twin_moved, _ = run(twin, buggy=False)
    moved, enc_lr = run(ctx, buggy=True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the encoder group's lr is 0 at the end", enc_lr == 0.0)
    ctx.check("enc1's weight moved under 1e-6 of its norm", moved["enc1.weight"] < 1e-6)
    ctx.check("enc2's weight moved under 1e-6 of its norm", moved["enc2.weight"] < 1e-6)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "enc2 moved under 1/20 of what the intended unfreeze moves it",
        moved["enc2.weight"] < twin_moved["enc2.weight"] / 20,
    )


# -- hydrothermal vent plume: the conv init std dropped the channels from the fan-in -------------


class PlumeStack(nn.Module):
    """Eight Conv1d layers (no normalisation), ReLU, global mean pool and a head."""

    def __init__(self, channels=12, layers=8, kernel=5, buggy=True):
        super().__init__()
        self.lift = nn.Conv1d(3, channels, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=kernel // 2) for _ in range(layers)
        )
        self.head = nn.Linear(channels, 1)
        for conv in self.convs:
            fan_in = kernel if buggy else kernel * channels
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(conv.bias)
        self.maps = []

    def forward(self, x):
        h = self.lift(x.transpose(1, 2))
        self.maps = [h]
        for conv in self.convs:
            h = torch.relu(conv(h))
            if h.requires_grad:
                h.retain_grad()
            self.maps.append(h)
        return self.head(h.mean(2)).squeeze(-1)


def _plume_profiles(gen, batch, length=32):
    """Vertical profiles of a hydrothermal vent plume (temperature anomaly, turbidity, Eh) at
    32 depths, standardised, and the plume rise height, standardised."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3 + x[:, :8, 1].mean(1))
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="hydrothermal_vent_plume_rise_conv1d_stack",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("convs.0", "convs.1"),
    diverges="auto",
    heldout=True,
    note="An eight-layer Conv1d stack without normalisation (lift, convs.0..convs.7 with ReLU, mean pool, head) regressing a hydrothermal vent plume's rise height from temperature-anomaly, turbidity and Eh profiles at 32 depths, SGD with momentum 0.9 at 1e-3, MSE. The hand-written He init uses std sqrt(2 / kernel) where it should be sqrt(2 / (kernel * channels)): each layer multiplies the signal by about sqrt(12), so the activations grow layer by layer and the gradient with respect to the feature maps grows back towards the input (over 1000x from the last map to the first at step 0); the loss is already huge and the first updates blow it up.",
)
def h252_hydrothermal_plume_conv_init(ctx: Context) -> None:
    gen = seeded(25205)
    model = PlumeStack(buggy=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratio = {}
    batches = _plume_profiles(gen, 32)
    with torch.no_grad():
        twin = PlumeStack(buggy=False)
        x0, y0 = next(_plume_profiles(torch.Generator().manual_seed(1), 64))
        twin_loss = float(F.mse_loss(twin(x0), y0))
    ctx.attach(model, opt)
    for step in range(100):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            first = model.maps[1].grad.norm()
            last = model.maps[-1].grad.norm()
            ratio["t"] = float(first / max(float(last), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at the first conv map over 1000x that at the last (step 0)",
        ratio.get("t", 0.0) > 1000,
    )
    ctx.check("the intended init starts with a loss under 10", twin_loss < 10)
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x (or went non-finite)",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )


# -- dendrochronology latewood: the warm-up peak typed 10x ---------------------------------------

ONSET_LATEWOOD = 30


@scenario(
    family="dendrochronology_latewood_density_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_LATEWOOD,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the latewood density of a tree ring from 10 standardised readings (ring width, earlywood fraction, summer rainfall, site elevation, ...), plain SGD, MSE, a linear warm-up over 60 steps (LambdaLR) to a peak meant to be 0.08 and typed 0.8. Along the warm-up the rate rises past 2 / (top Hessian eigenvalue) around step 30 (checked in the run by power iteration every 5 steps), after which the loss oscillates and blows up.",
)
def h252_latewood_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(25206)
    model = Stack(10, hidden=48, act=nn.Tanh)
    peak, warm = 0.8, 60
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 53))
    prod = {}

    def before(step):
        if step % 5 == 0 and step <= warm:
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _readings(gen, 64, 10, 53), 140, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    crossed = next((s for s in sorted(prod) if prod[s] > 2), None)
    ctx.check("lr x sharpness under 2 at step 0", prod[0] < 2)
    ctx.check(
        "lr x sharpness passes 2 within 5 steps of the onset",
        crossed is not None and abs(crossed - ONSET_LATEWOOD) <= 5,
    )
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_LATEWOOD], ratio=0.7))
    ctx.check("finite before the onset", _finite(ls[:ONSET_LATEWOOD]))
    ctx.check(
        "the loss blew up after the onset (over 100x, or non-finite)",
        not _finite(ls)
        or max(ls[ONSET_LATEWOOD:]) > 100 * _mean(ls[ONSET_LATEWOOD - 10 : ONSET_LATEWOOD]),
    )


# -- oarlock swivel pin: one logger's -9999 missing-value codes ----------------------------------

ONSET_OARLOCK = 110


@scenario(
    family="oarlock_swivel_pin_wear_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OARLOCK,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the wear of a rowing shell's oarlock swivel pin from 14 standardised readings of a session (stroke rate, catch angle, pin force, gate height, ...), Adagrad at 5e-2, Huber loss, gradient clipping at 1.0. The batch at step 110 comes from one boat's logger that codes missing readings as -9999; the loader standardises only the other loggers' files, so those rows carry -9999 in the pin-force and gate-angle columns. The loss and the pre-clip gradient spike at that step; the targets are ordinary; finite, no divergence.",
)
def h252_oarlock_missing_code_batch(ctx: Context) -> None:
    gen = seeded(25207)
    model = Stack(14, hidden=48)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_OARLOCK:
            x = x.clone()
            x[::3, 2:4] = -9999.0
            seen["x_min"] = float(x.min())
            seen["y_max"] = float(y.abs().max())
        return x, y

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0)

    _train(ctx, model, opt, _readings(gen, 64, 14, 59), 200, loss_fn, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_OARLOCK], ratio=0.6))
    ctx.check(
        "loss at the onset over 100x the median before",
        ls[ONSET_OARLOCK] > 100 * _median(ls[ONSET_OARLOCK - 20 : ONSET_OARLOCK]),
    )
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_OARLOCK] > 100 * _median(gn[ONSET_OARLOCK - 20 : ONSET_OARLOCK]),
    )
    ctx.check("the onset batch carries the -9999 code", seen.get("x_min", 0.0) <= -9999)
    ctx.check("the onset targets are ordinary (max |y| under 3)", seen.get("y_max", 99.0) < 3)


# -- skep straw hive: the loss balancer resumed with a 1e-3 buffer for one step -------------------

ONSET_SKEP = 120


class SkepNet(nn.Module):
    """A shared trunk (trunk1, act1, trunk2, act2) and two heads: coil tension (regression)
    and a gap defect (binary)."""

    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.trunk1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.trunk2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.tension_head = nn.Linear(hidden, 1)
        self.gap_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.trunk2(self.act1(self.trunk1(x))))
        return torch.cat([self.tension_head(h), self.gap_head(h)], 1)


def _skep_readings(gen, batch, seed=61):
    """Twelve standardised readings of a straw coil being stitched into a skep (straw length,
    moisture, bramble-binding pitch, coil diameter, ...), the coil tension (standardised) and
    whether a gap opens between coils."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        tension = torch.tanh(x @ w / math.sqrt(12)) + 0.2 * torch.randn(batch, generator=gen)
        logit = 2.0 * (x @ v / math.sqrt(12)) + 0.5 * tension
        gap = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield x, torch.stack([tension, gap], 1)


def _skep_losses(out, y):
    return F.mse_loss(out[:, 0], y[:, 0]), F.binary_cross_entropy_with_logits(out[:, 1], y[:, 1])


@scenario(
    family="skep_straw_hive_coil_two_head_net",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SKEP,
    note="A multi-task net for a skep maker: a shared SiLU trunk (trunk1, act1, trunk2, act2) and two heads, tension_head (coil tension, MSE) and gap_head (gap between coils, BCE with logits), SGD with Nesterov momentum 0.9 at 2e-2, gradient clipping at 5. A loss balancer divides each task's loss by the mean of that task's last 20 losses (detached) so both weigh about 1. At step 120 the job is resumed; the gap task's loss window was added after the checkpoint format was fixed, so it is not restored and restarts from its default [1e-3]: for that one step the BCE task is weighted about 500x (the next step's window already holds a real loss): the pre-clip gradient bursts over 50x its level from an ordinary batch. The clipped step dents the run, which recovers; finite, no divergence.",
)
def h252_skep_balancer_resume_buffer(ctx: Context) -> None:
    gen = seeded(25208)
    model = SkepNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    window = {"tension": [], "gap": []}
    xs = []
    weights = {}

    def loss_fn(out, y):
        a, b = _skep_losses(out, y)
        return a + b

    def backprop(step, loss, out, y):
        a, b = _skep_losses(out, y)
        if step == ONSET_SKEP:  # resumed: the gap window was not in the checkpoint
            window["gap"] = [1e-3]
        wa = 1.0 / _mean(window["tension"][-20:]) if window["tension"] else 1.0
        wb = 1.0 / _mean(window["gap"][-20:]) if window["gap"] else 1.0
        weights[step] = wb
        window["tension"].append(float(a.detach()))
        window["gap"].append(float(b.detach()))
        return wa * a + wb * b

    def watch(step, out, x, y):
        if step in (ONSET_SKEP - 1, ONSET_SKEP):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _skep_readings(gen, 64),
        220,
        loss_fn,
        backprop=backprop,
        watch=watch,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_SKEP - 20 : ONSET_SKEP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SKEP], ratio=0.8))
    ctx.check(
        "the BCE weight at the onset over 100x that the step before",
        weights[ONSET_SKEP] > 100 * weights[ONSET_SKEP - 1],
    )
    ctx.check(
        "the gradient norm at the onset over 50x the median before", gn[ONSET_SKEP] > 50 * before
    )
    ctx.check("the gradient norm 20 steps later back under 5x", gn[ONSET_SKEP + 20] < 5 * before)
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 1.5x its pre-onset level)",
        _mean(ls[ONSET_SKEP + 50 : ONSET_SKEP + 60])
        < 1.5 * _mean(ls[ONSET_SKEP - 10 : ONSET_SKEP]),
    )


# -- marbles ring shot: the temperature annealing floor typed 5e-4 for 5e-1 ----------------------

ONSET_MARBLES = 23


class RingShotNet(nn.Module):
    """fc1 -> act1 (ReLU) -> fc2 -> act2 (ReLU) -> head, logits divided by an annealed
    temperature."""

    def __init__(self, d_in, classes, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="marbles_ring_taw_shot_outcome_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=ONSET_MARBLES,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) predicting the outcome of a shot in ring taw marbles (4 kinds: miss, knock-out, stick, knock-out and stick) from 14 standardised readings (knuckle-down height, shooter mass, distance, angle, ring surface, ...), Adamax at 2e-3, cross-entropy. The logits are divided by a temperature annealed as max(floor, 0.97**step); the floor was meant to be 5e-1 and typed 5e-4, so from step 23 the temperature keeps falling past 0.5 towards 5e-4: the float32 softmax rounds most targets' probabilities to exactly 1 (or 0) by the end; the intended floor keeps them soft. Finite, no blow-up.",
)
def h252_marbles_temperature_floor_typo(ctx: Context) -> None:
    steps = 220

    def run(c, floor):
        gen = seeded(25209)
        model = RingShotNet(14, 4)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        probe = next(_kinds(torch.Generator().manual_seed(6), 512, 14, 4, 67, noise=0.8))
        fr = []

        def before(step):
            model.temperature = max(floor, 0.97**step)

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 4, 67, noise=0.8),
            steps,
            F.cross_entropy,
            classifier=True,
            before=before,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, 5e-1)
    fr = run(ctx, 5e-4)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of the probe rows saturate at the onset", fr[ONSET_MARBLES] < 0.1)
    ctx.check("over half the probe rows saturate to exactly 1 at the end", fr[-1] > 0.5)
    ctx.check("the intended floor saturates under 10%", twin_fr[-1] < 0.1)


# -- varve sediment: the L2 penalty's sign flipped -----------------------------------------------


@scenario(
    family="varve_lake_sediment_layer_thickness_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the thickness of an annual varve (lake-sediment layer) from 10 standardised readings (spring melt, summer temperature, catchment runoff, ice-out date, ...), SGD with momentum 0.9 at 1e-2, MSE. An L2 penalty on the weight matrices is added to the backpropagated loss as `loss - l2 * sum(w**2)` (l2 = 3e-2): the sign was flipped when the penalty was moved into a helper. The logged data loss first falls, then climbs slowly and steadily to several times its low while the weight norm keeps growing; no spike, no bad batch, no NaN.",
)
def h252_varve_l2_sign_flip(ctx: Context) -> None:
    steps = 300

    def run(c, sign):
        gen = seeded(25210)
        model = Stack(10, hidden=48, act=nn.GELU)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        norms = []

        def backprop(step, loss, out, y):
            l2 = sum((p**2).sum() for p in model.parameters() if p.dim() > 1)
            return loss + sign * 3e-2 * l2

        def after(step):
            with torch.no_grad():
                norms.append(float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5))

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 10, 71),
            steps,
            F.mse_loss,
            backprop=backprop,
            after=after,
        )
        return norms

    twin = _Quiet()
    run(twin, sign=1.0)
    norms = run(ctx, sign=-1.0)
    ls = ctx.losses
    lo = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9))
    at = min(range(0, len(ls) - 9), key=lambda i: _mean(ls[i : i + 10]))
    means = [_mean(ls[i : i + 10]) for i in range(at, len(ls) - 9, 10)]
    jumps = max(
        (b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True)), default=99.0
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell (low under 0.6x the start)", lo < 0.6 * _mean(ls[:10]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * lo)
    ctx.check("the climb is gradual (no 10-step mean over 2x the one before)", jumps < 2.0)
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the twin with the right sign ends under 1/3 of it",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- healthy controls -----------------------------------------------------------------------------


def _maze_times(gen, batch, seed=73):
    """Twelve standardised readings of a team entering a corn maze (group size, map use,
    path-width, hedge height, time of day, ...) and the exit time, standardised, with
    occasional lost-team outliers."""
    stream = _readings(gen, batch, 12, seed, noise=0.1)
    while True:
        x, y = next(stream)
        lost = torch.rand(batch, generator=gen) < 0.03
        yield x, torch.where(lost, y + 2.0, y)


@scenario(
    family="corn_maze_exit_time_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing how long a team takes to exit a corn maze from 12 standardised readings, with 3% lost-team outliers in the targets, Huber loss, RAdam at 3e-3 with two param groups (weight decay 1e-4 on the weight matrices, none on the biases) and ReduceLROnPlateau (factor 0.5, patience 2) stepped every 20 batches on their mean loss. Trains normally.",
)
def h252_corn_maze_plateau_control(ctx: Context) -> None:
    gen = seeded(25211)
    model = Stack(12, hidden=48, act=nn.SiLU)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0)

    def after(step):
        if (step + 1) % 20 == 0:  # an "epoch" of 20 batches: step on its mean loss
            sched.step(_mean(ctx.losses[-20:]))

    _train(ctx, model, opt, _maze_times(gen, 64), 220, loss_fn, after=after)
    ls = ctx.losses
    x, y = next(_readings(torch.Generator().manual_seed(9), 1024, 12, 73, noise=0.1))
    with torch.no_grad():
        held = float(loss_fn(model(x), y))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out Huber loss under half the start", held < 0.5 * _mean(ls[:10]))


@scenario(
    family="poi_spinning_flower_pattern_gelu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) classifying which poi-spinning flower pattern (5 kinds: inspin 3-petal, 4-petal, antispin 3-petal, 4-petal, extension) a spinner performs from 18 standardised readings of wrist-worn inertial sensors, SGD with momentum 0.9 under OneCycleLR (max_lr 0.1), cross-entropy with label smoothing 0.1 on 10% mislabelled clips, gradient clipping at 1.0. Trains normally.",
)
def h252_poi_spinning_onecycle_control(ctx: Context) -> None:
    gen = seeded(25212)
    steps = 200
    model = Stack(18, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=4e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.3)
    stream = _kinds(gen, 64, 18, 5, 79)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
            yield x, y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, noisy(), steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ls = ctx.losses
    x, y = next(_kinds(torch.Generator().manual_seed(8), 1024, 18, 5, 79))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.6", acc > 0.6)


class FeltNet(nn.Module):
    """A SiLU trunk (fc1, act1, fc2, act2) and a head giving a mean and a log-variance."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _felt_gaussian_nll(out, y):
    out = out.float()
    var = F.softplus(out[:, 1]) + 1e-4
    return F.gaussian_nll_loss(out[:, 0], y, var)


@scenario(
    family="needle_felting_barb_depth_fp16_gaussian_nll_mlp",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) predicting the mean and variance of how deep a felting needle's barbs carry fibre into a wool batt from 10 standardised readings (needle gauge, barb count, stab rate, wool micron, ...) with heteroscedastic noise, Gaussian negative log-likelihood (softplus variance), RMSprop at 1e-3, gradient accumulation over 2, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h252_needle_felting_fp16_nll_control(ctx: Context) -> None:
    gen = seeded(25213)
    model = FeltNet(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _readings(gen, 64, 10, 83, noise=0.02)

    def hetero():
        while True:
            x, y = next(stream)
            yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 1])) * torch.randn(len(y), generator=gen)

    _train(
        ctx,
        model,
        opt,
        hetero(),
        200,
        _felt_gaussian_nll,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell (by over 0.5 nats)", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
