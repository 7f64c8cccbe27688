"""Held-out set 383 (``h383_``): hand-written models of crafts, sports, instruments and natural
phenomena: a skijoring harness-tow tanh regressor whose SGD lr is typed 0.6 for 0.06 (past
2/sharpness, blows up), a jangada raft sail-load SiLU Huber regressor resumed at step 150 from a
weights-only checkpoint with a fresh NAdam state (one loss spike, recovers), a jianzi feather-spin
GELU classifier whose z-loss coefficient is typed -1e-3 for 1e-3 (the head's logits grow without
bound), a paludier fleur-de-sel masked-MSE regressor whose mask count at step 100 is clamped to
1e-5 instead of 1 (one giant gradient poisons Adam's second moment), an ant-lion pit prey-count
Poisson net whose rate is a bare ReLU fed to log (log 0, non-finite), a mofette CO2-vent flux
ReLU regressor under fp16 autocast with targets in raw mg/m2/day (fp16 overflow), a siku panpipe
breath ReLU Elman RNN whose recurrent weights start at 1.15 x identity (gradients grow through
time), a kubb king-toppling BCE net fed one shard in millimetres at step 140 (one corrupted
batch), a sarangi sympathetic-string two-group classifier whose per-group LambdaLR keeps the
encoder frozen (a steps-per-epoch constant of 1000), a chaupar cowrie-throw prototype classifier
on raw-unit features (softmax saturates), and three controls (a pollen-grain exine PointNet with
Adam, label smoothing and StepLR, a dowsing-rod dip Conv1d Huber regressor with SGD Nesterov,
OneCycleLR, accumulation and clipping, a light-pillar column-tilt BCE net under fp16 autocast with
a GradScaler, AdamW and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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
    """``before(step)`` runs first, ``alter(step, x, y)`` changes a batch, ``watch(step, out, x,
    y)`` sees the forward pass, ``backprop(step, loss, out, y)`` returns the loss actually
    backpropagated, ``after(step)`` runs after the optimizer step. Stops after a non-finite loss
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


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Readings labelled by a hidden nonlinear rule with a little label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    v = torch.randn(d_in, generator=g)
    v = v / v.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w) + 0.5 * (x @ v) ** 2 > 0.5).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, seed, length=48, channels=2):
    """Damped oscillation traces; the target is a smooth function of frequency and decay."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.1 + 0.5 * torch.rand(batch, 1, 1, generator=gen)
        tau = 10 + 30 * torch.rand(batch, 1, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(f * t + phase) * torch.exp(-t / tau)
        x = x + 0.2 * torch.randn(batch, channels, length, generator=gen)
        y = 3 * f.flatten() + tau.flatten() / 20
        yield x, y


def _point_clouds(gen, batch, points=64, classes=4):
    """Pollen-grain outlines as point clouds: sphere, prolate ellipsoid, three-lobed, flat disc;
    randomly rotated, scaled and jittered."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        u = torch.randn(batch, points, 3, generator=gen)
        u = u / u.norm(dim=-1, keepdim=True)
        scale = torch.ones(batch, 1, 3)
        scale[y == 1] = torch.tensor([1.0, 1.0, 2.0])
        scale[y == 3] = torch.tensor([1.4, 1.4, 0.3])
        p = u * scale
        lobes = y == 2
        if lobes.any():
            ang = torch.atan2(p[..., 1], p[..., 0])
            r = 1 + 0.4 * torch.cos(3 * ang)
            p3 = torch.stack([p[..., 0] * r, p[..., 1] * r, p[..., 2]], -1)
            p = torch.where(lobes[:, None, None], p3, p)
        q, _ = torch.linalg.qr(torch.randn(batch, 3, 3, generator=gen))
        p = p @ q
        p = p * (0.8 + 0.4 * torch.rand(batch, 1, 1, generator=gen))
        yield p + 0.03 * torch.randn(batch, points, 3, generator=gen), y


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


def _sharpness(model, loss_fn, x, y, iters=30) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
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


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _median_update(before, after) -> float:
    """Median over weights of |change| / (|weight| + 1e-8) between two snapshots."""
    r = [((a - b).abs() / (b.abs() + 1e-8)).flatten() for b, a in zip(before, after, strict=True)]
    return float(torch.cat(r).median())


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "skijoring_harness_tow_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="the SGD learning rate is typed 0.6 for 0.06: lr x top Hessian eigenvalue is past 2 "
    "from the start (and under 2 at the intended rate), the head oscillates with growing "
    "amplitude and the MSE blows up",
)
def h383_skijoring_lr_typo_sharpness(ctx: Context) -> None:
    gen = seeded(38301)
    model = Trunk(8, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.6)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 3831))
    lam = _sharpness(model, F.mse_loss, *probe)
    _loop(ctx, model, opt, _readings(gen, 64, 8, 3831), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x sharpness at the start is past 2", 0.6 * lam > 2)
    ctx.check("the intended lr 0.06 x sharpness is under 2", 0.06 * lam < 2)
    bad = _first_bad(ls)
    peak = max((v for v in ls if math.isfinite(v)), default=0.0)
    ctx.check(
        "the loss blows up (over 100x the first loss, or non-finite)",
        bad is not None or peak > 100 * ls[0],
    )


@scenario(
    "jangada_raft_sail_load_silu_huber_regressor",
    "NAdam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the job is pre-empted and resumed at step 150 from a weights-only checkpoint (the "
    "optimizer key is misspelled in the resume code, so NAdam silently starts with an empty "
    "state and no warm-up); the first bias-corrected steps move every weight by about lr, "
    "the loss spikes once on clean data with no gradient burst and the run recovers",
)
def h383_jangada_resume_fresh_nadam(ctx: Context) -> None:
    gen = seeded(38302)
    model = Trunk(10, 96, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)

    def before(step):
        if step == 150:
            opt.state.clear()

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 3832, noise=0.02), 300, F.huber_loss, before=before
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[130:150])
    ctx.check(
        "the loss after the resume spikes over 3x the 20 steps before", max(ls[150:158]) > 3 * pre
    )
    ctx.check(
        "no gradient burst at the resume (under 3x the median before)",
        gn[150] < 3 * _median(gn[100:150]),
    )
    ctx.check(
        "the run recovers (last 20 steps under 1.5x the mean before)", _mean(ls[-20:]) < 1.5 * pre
    )
    ctx.check("finite throughout", _finite(ls))


class ZHead(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "jianzi_feather_spin_zloss_gelu_classifier",
    "AdamW",
    "output_logit_divergence",
    "head",
    "auto",
    heldout=True,
    note="the z-loss coefficient (which should keep logsumexp near 0) is typed -1e-3 for 1e-3; "
    "the negative z-loss rewards a large logsumexp, which the head reaches by shifting every "
    "logit up, so the head's logits grow without bound; once they spread, the cross-entropy blows up too",
)
def h383_jianzi_zloss_sign(ctx: Context) -> None:
    gen = seeded(38303)
    model = ZHead(12, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    peaks = []

    def backprop(step, loss, out, y):
        return loss + (-1e-3) * (torch.logsumexp(out, -1) ** 2).mean()

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3833),
        250,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "the head's largest |logit| grows over 20x from the first 10 steps",
        _mean(peaks[-10:]) > 20 * _mean(peaks[:10]),
    )
    ctx.check("still growing over the last 50 steps (over 1.3x)", peaks[-1] > 1.3 * peaks[-50])
    ctx.check("the cross-entropy falls first (under 0.3 by step 80)", min(ls[:80]) < 0.3)


@scenario(
    "paludier_fleur_de_sel_masked_mse_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="the masked MSE divides by the mask count clamped with clamp_min(1e-5) instead of "
    "clamp_min(1); at step 100 the collate bug gives a batch whose mask sums to 1e-5 of a "
    "valid row, the loss is scaled 1e5 for one step, the giant gradient fills Adam's second "
    "moment (beta2 0.999) and the updates stall for hundreds of steps afterwards",
)
def h383_paludier_masked_mse_poison(ctx: Context) -> None:
    gen = seeded(38304)
    model = Trunk(8, 64, 1, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    snaps = {}

    def backprop(step, loss, out, y):
        count = torch.tensor(float(len(y)))
        if step == 100:
            count = torch.tensor(1e-5)  # the mask came back (almost) empty
        return loss * len(y) / count.clamp_min(1e-5)

    def before(step):
        if step in (40, 60, 170, 190):
            snaps[step] = _weights(model)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 3834),
        300,
        F.mse_loss,
        before=before,
        backprop=backprop,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    med = _median(gn[50:100])
    ctx.check("the gradient at step 100 is over 1000x the median before", gn[100] > 1000 * med)
    ctx.check(
        "gradients after step 120 are not smaller than before (over 0.3x)",
        _median(gn[120:200]) > 0.3 * med,
    )
    # median per-weight relative update over 20 steps, before and after the burst
    u_before = _median_update(snaps[40], snaps[60])
    u_after = _median_update(snaps[170], snaps[190])
    ctx.check(
        "updates 70-90 steps after the burst under a tenth of before", u_after < 0.1 * u_before
    )
    ctx.check("finite throughout", _finite(ls))


class LogRate(nn.Module):
    """log of the Poisson rate, the rate being a bare ReLU of the head (no clamp, no eps)."""

    def forward(self, x):
        return torch.log(F.relu(x))


class PoissonNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(48, 1)
        self.log_rate = LogRate()
        nn.init.constant_(self.head.bias, 2.0)

    def forward(self, x):
        return self.log_rate(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(0.3 + 1.2 * (x @ w))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    "ant_lion_pit_prey_count_poisson_relu_net",
    "RMSprop",
    "nonfinite",
    "log_rate",
    197,
    heldout=True,
    note="the Poisson rate is taken as relu(head) and its log fed to the NLL without a clamp or "
    "softplus; once the head goes negative for a pit with few prey, the rate is exactly 0, "
    "log 0 = -inf and the loss is non-finite",
)
def h383_antlion_log_relu_rate(ctx: Context) -> None:
    gen = seeded(38305)
    model = PoissonNet(6)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    zeros = []

    def loss_fn(log_rate, y):
        return F.poisson_nll_loss(log_rate, y, log_input=True)

    def watch(step, out, x, y):
        zeros.append(bool(torch.isinf(out.detach()).any()))

    _loop(ctx, model, opt, _counts(gen, 64, 6, 3835), 300, loss_fn, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("finite for the first 10 steps", bad is not None and bad >= 10)
    ctx.check(
        "log_rate is -inf (a rate exactly 0) on the batch where it breaks",
        bad is not None and zeros[bad],
    )


class FluxNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    "mofette_co2_vent_flux_fp16_relu_regressor",
    "AdamW",
    "amp_overflow",
    "head",
    103,
    heldout=True,
    note="the CO2 flux targets are left in raw g/m2/day (about 4e4-9e4) instead of being "
    "standardised, and the model runs under fp16 autocast with a GradScaler; as the head's "
    "output climbs towards the targets it passes fp16's 65504 and the forward pass overflows "
    "to inf",
)
def h383_mofette_raw_units_fp16(ctx: Context) -> None:
    gen = seeded(38306)
    model = FluxNet(6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    last = {}

    def batches():
        base = _readings(gen, 64, 6, 3836)
        for x, y in base:
            yield x, 65000.0 + 15000.0 * y

    def watch(step, out, x, y):
        last["x"] = x

    _loop(ctx, model, opt, batches(), 250, F.mse_loss, scaler=scaler, amp=True, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("finite for the first 10 steps", bad is not None and bad >= 10)
    with torch.no_grad():
        out32 = model(last["x"])
        with torch.autocast("cpu", dtype=torch.float16):
            out16 = model(last["x"])
    ctx.check(
        "the same batch in float32 is finite with an output past 65504",
        bool(torch.isfinite(out32).all()) and float(out32.abs().max()) > 65504,
    )
    ctx.check("under fp16 autocast the output is inf", bool(torch.isinf(out16).any()))


class Elman(nn.Module):
    """Hand-written Elman RNN with ReLU: h_t = relu(ih(x_t) + hh(h_{t-1}))."""

    def __init__(self, d_in, hidden, classes, gain=1.0):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.weight.shape[0])
        self.states = []
        for t in range(x.shape[2]):
            h = F.relu(self.ih(x[:, :, t]) + self.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _breaths(gen, batch, classes, seed, length=40):
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + phase)
        x = torch.stack([x, torch.cos(freqs[y][:, None] * t + phase)], 1)
        yield x + 0.3 * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    "siku_panpipe_breath_relu_elman_rnn",
    "Adagrad",
    "exploding_gradients",
    "hh",
    None,
    heldout=True,
    note="the IRNN recipe's recurrent init (identity) is multiplied by the 1.15 'gain' meant for "
    "the input weights; through 40 time steps the backward pass multiplies by about 1.15 per "
    "step and the gradient at the first hidden state is hundreds of times that at the last",
)
def h383_siku_irnn_gain(ctx: Context) -> None:
    gen = seeded(38307)
    model = Elman(2, 32, 5, gain=1.15)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratios = []

    def after(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp_min(1e-12)))

    _loop(
        ctx,
        model,
        opt,
        _breaths(gen, 32, 5, 3837),
        120,
        F.cross_entropy,
        classifier=True,
        after=after,
        clip=1.0,
    )
    gn = ctx.grad_norms
    ctx.check("gradient at h_0 over 20x that at h_39 at the start", _mean(ratios[:5]) > 20)
    ctx.check("and still over 4x over the last 10 steps", _mean(ratios[-10:]) > 4)
    ctx.check("the raw gradient norm is over 10 (clipped to 1)", _median(gn) > 10)


@scenario(
    "kubb_king_toppling_bce_relu_net",
    "RAdam",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=140,
    note="one tournament's throw logs at step 140 record the baton distances and heights in "
    "millimetres instead of metres (x1000 in three columns); the BCE and gradient jump for that "
    "batch only (clipped), and the run recovers",
)
def h383_kubb_mm_shard(ctx: Context) -> None:
    gen = seeded(38308)
    model = Trunk(8, 64, 1, act=nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 140:
            x = x.clone()
            x[:, :3] *= 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 8, 3838),
        260,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 140 is over 20x the median of the 40 before",
        ls[140] > 20 * _median(ls[100:140]),
    )
    ctx.check(
        "the gradient at step 140 is over 20x the median before",
        gn[140] > 20 * _median(gn[100:140]),
    )
    ctx.check(
        "the run recovers (last 20 steps under 1.5x the 20 before the shard)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[120:140]),
    )
    ctx.check("finite throughout", _finite(ls))


class TwoPart(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.encoder = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.mixer = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.act2(self.mixer(self.act1(self.encoder(x)))))


@scenario(
    "sarangi_sympathetic_string_two_group_relu_classifier",
    "Adamax",
    "update_ratio_out_of_range",
    "encoder",
    None,
    heldout=True,
    note="the encoder group is meant to be frozen for the first 2 epochs: its LambdaLR lambda "
    "returns 0 while step < 2 * steps_per_epoch, with steps_per_epoch hard-coded 1000 from "
    "another dataset (an epoch here is 20 steps), so the encoder never moves in the 200-step "
    "run while the rest trains",
)
def h383_sarangi_frozen_encoder(ctx: Context) -> None:
    gen = seeded(38309)
    model = TwoPart(16, 8)
    opt = torch.optim.Adamax(
        [
            {"params": model.encoder.parameters()},
            {"params": list(model.mixer.parameters()) + list(model.head.parameters())},
        ],
        lr=2e-3,
    )
    steps_per_epoch = 1000
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < 2 * steps_per_epoch else 1.0, lambda s: 1.0]
    )
    enc0 = model.encoder.weight.detach().clone()
    enc_grads = []
    model.encoder.weight.register_hook(lambda g: enc_grads.append(float(g.norm())))
    head0 = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 3839, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    enc_move = float((model.encoder.weight.detach() - enc0).norm() / enc0.norm())
    head_move = float((model.head.weight.detach() - head0).norm() / head0.norm())
    ctx.check("the encoder moves under 1e-6 of its norm", enc_move < 1e-6)
    ctx.check("the head moves over 5% of its norm", head_move > 0.05)
    ctx.check("the encoder gets gradients all along", min(enc_grads) > 0)


class Prototypes(nn.Module):
    """Squared Euclidean distance to learned class prototypes as (negative) logits."""

    def __init__(self, d_in, dim, classes):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.protos = nn.Linear(dim, classes, bias=False)

    def forward(self, x):
        f = self.embed(x)
        c = self.protos.weight
        return -((f[:, None, :] - c[None]) ** 2).sum(-1)


@scenario(
    "chaupar_cowrie_throw_prototype_classifier",
    "SGD",
    "softmax_collapse",
    "protos",
    None,
    heldout=True,
    note="the throw features (cowrie scatter radius, spin, bounce) go in raw millimetres instead "
    "of being standardised; the prototype head's squared distances are in the thousands, the "
    "float32 softmax rounds the target probability to exactly 1.0 for most rows and those rows "
    "give no gradient",
)
def h383_chaupar_raw_distance(ctx: Context) -> None:
    gen = seeded(38310)
    model = Prototypes(10, 16, 7)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    fracs = []

    def batches():
        for x, y in _grades(gen, 64, 10, 7, 3840, spread=0.6):
            yield 40.0 * x, y  # raw millimetres, not standardised

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))

    _loop(ctx, model, opt, batches(), 150, F.cross_entropy, classifier=True, watch=watch)
    ref = Prototypes(10, 16, 7)
    with torch.no_grad():
        x, y = next(_grades(torch.Generator().manual_seed(1), 256, 10, 7, 3840, spread=0.6))
        ref_frac = collapsed_fraction(ref(x), y)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 50 steps",
        _mean(fracs[-50:]) > 0.5,
    )
    ctx.check("standardised inputs give under 5% such rows", ref_frac < 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


class PointNet(nn.Module):
    """Shared per-point MLP (1x1 convs), max-pool over points, classifier head."""

    def __init__(self, classes=4):
        super().__init__()
        self.point1 = nn.Conv1d(3, 32, 1)
        self.point2 = nn.Conv1d(32, 64, 1)
        self.point3 = nn.Conv1d(64, 128, 1)
        self.fc = nn.Linear(128, 64)
        self.head = nn.Linear(64, classes)

    def forward(self, pts):
        h = pts.transpose(1, 2)
        h = F.relu(self.point1(h))
        h = F.relu(self.point2(h))
        h = self.point3(h).max(dim=2).values
        return self.head(F.relu(self.fc(h)))


@scenario(
    "pollen_grain_exine_pointnet_classifier",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: PointNet on generated pollen-grain point clouds, Adam 2e-3, label smoothing "
    "0.1, StepLR halving every 60 steps",
)
def h383_pollen_pointnet_control(ctx: Context) -> None:
    gen = seeded(38311)
    model = PointNet(4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, _point_clouds(gen, 32), 180, loss_fn, classifier=True, sched=sched)
    with torch.no_grad():
        x, y = next(_point_clouds(torch.Generator().manual_seed(5), 256))
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 70%", acc > 0.7)


class DipConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1)).squeeze(-1)


@scenario(
    "dowsing_rod_dip_huber_conv1d_regressor",
    "SGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: Conv1d Huber regressor on damped dip traces, SGD Nesterov under OneCycleLR, "
    "accumulation over 2, clipping at 1",
)
def h383_dowsing_conv_control(ctx: Context) -> None:
    gen = seeded(38312)
    model = DipConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=150)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 3842),
        150,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))


@scenario(
    "light_pillar_column_tilt_fp16_bce_net",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: BCE net with 8% label noise under fp16 autocast with a GradScaler, AdamW with "
    "a no-decay bias group, ReduceLROnPlateau on a held-out batch",
)
def h383_light_pillar_amp_control(ctx: Context) -> None:
    gen = seeded(38313)
    model = Trunk(8, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    xv, yv = next(_binary(torch.Generator().manual_seed(9), 256, 8, 3843, flip=0.08))

    def plateau():
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 8, 3843, flip=0.08),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("held-out BCE under 0.5", plateau() < 0.5)
