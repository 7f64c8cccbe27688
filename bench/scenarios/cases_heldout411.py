"""Held-out set 411 (``h411_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a dhow lateen-sail trim tanh regressor whose hand-written L2 term has its sign flipped
(a slow climb), a hurling sliotar rebound regressor whose accumulation divisor is multiplied in for
one step (a gradient burst), a pelota fronton rebound classifier with hand-written label smoothing
whose smoothing term has its sign flipped (the head's logits grow), a sitar sympathetic-string
regressor whose GradScaler growth_interval is typed 1 for 1000 (fp16 overflow), a snowpack
surface-hoar regressor taking log of a ReLU output with its clamp dropped (log 0), a quilting-frame
stitch regressor fed one shard in wrong units (one corrupted batch), a kiteboard kite-loop FGSM
adversarially trained classifier whose trunk group lr is typed 1e-9 for 1e-3 (a frozen layer), a
didgeridoo drone deep ReLU MLP initialised with std 2/sqrt(fan_in) (gradients grow through depth),
a tannery liming-vat tanh regressor whose warm-up lambda lost its min(1, .) (lr past 2/sharpness)
and a kora bridge-harp pluck ReLU regressor on NAdam with lr typed 3e-1 for 3e-3 (ReLUs die).

Controls: a farrier anvil-ring ReLU classifier with PGD adversarial training at a small epsilon
and a StepLR decay, a tonewood tap-tone Conv1d classifier (RAdam, OneCycleLR, label smoothing,
clipping) and a glassblower glory-hole SiLU Huber regressor (fp16 autocast with a GradScaler,
AdamW with a no-decay group, accumulation, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs):
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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
    backprop=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    make_input=None,
):
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
            if make_input is not None:
                x = make_input(x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
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
            sched.step(plateau()) if plateau is not None else sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _sharpness(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- faults ------------------------------------------------------------------------------------


@scenario(
    "dhow_lateen_sail_trim_tanh_regressor",
    "SGD",
    "loss_divergence",
    diverges=None,
    heldout=True,
    onset=0,
    note="hand-written L2 term added as loss - wd * ||w||^2 (sign typo) with wd 0.1: the weights "
    "grow in the low-curvature directions and the loss climbs slowly with no other mechanism",
)
def h411_dhow_sail_trim_decay_sign(ctx):
    gen = seeded(4111)
    model = _Net(12, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    wd = 0.1

    def backprop(step, loss):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2

    _loop(ctx, model, opt, _readings(gen, 64, 12, 11), 240, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check("loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * low)
    ctx.check("the loss stays finite", _finite(ls))
    jumps = [
        _mean(ls[i + 10 : i + 20]) / max(_mean(ls[i : i + 10]), 1e-9) for i in range(0, 220, 10)
    ]
    ctx.check("no 10-step mean over 2x the one before (a slow climb)", max(jumps) < 2.0)


@scenario(
    "hurling_sliotar_rebound_accum_nesterov_regressor",
    "SGD (Nesterov)",
    "gradient_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="accumulation over 8 micro-batches; after a resume at step 150 the divisor is multiplied "
    "in (loss * 8 for loss / 8) for one step: a 64x gradient burst on a clean batch, clipped",
)
def h411_hurling_rebound_accum_bug(ctx):
    gen = seeded(4112)
    model = _Net(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    acc = 8

    def backprop(step, loss):
        return loss * acc * acc if step == 150 else loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 12),
        260,
        F.huber_loss,
        backprop=backprop,
        accumulate=acc,
        clip=5.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 150 over 30x the median before", g[150] > 30 * _median(g[100:150]))
    ctx.check("the logged loss at 150 is ordinary (under 3x)", ls[150] < 3 * _median(ls[100:150]))
    ctx.check(
        "recovers: last 20 steps under 1.5x the 20 before onset",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]),
    )


@scenario(
    "pelota_fronton_rebound_smoothing_classifier",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="hand-written label smoothing (1-eps)*nll - eps*mean(log p) typed with + eps*mean(log p): "
    "non-target logits are pushed down forever, the head's logits grow without bound",
)
def h411_pelota_smoothing_sign(ctx):
    gen = seeded(4113)
    model = _Net(16, 48, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    eps = 0.1

    def loss_fn(out, y):
        lp = F.log_softmax(out, -1)
        return (1 - eps) * F.nll_loss(lp, y) + eps * lp.mean(-1).mean()

    peaks = []
    probe = next(_grades(torch.Generator().manual_seed(1), 256, 16, 6, 13))[0]

    def inspect(step):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().max()))

    _loop(
        ctx, model, opt, _grades(gen, 64, 16, 6, 13), 240, loss_fn, classifier=True, inspect=inspect
    )
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check("still growing over the last 40 steps", peaks[-1] > 1.2 * peaks[-40])
    ctx.check("the 'loss' goes below -1", ctx.losses[-1] < -1.0)


@scenario(
    "sitar_sympathetic_string_fp16_silu_regressor",
    "AdamW",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast with GradScaler(growth_interval=1) typed for 1000: the scale doubles every "
    "clean step until the fp16 gradients overflow, so about half the steps are skipped",
)
def h411_sitar_scaler_growth_interval(ctx):
    gen = seeded(4114)
    model = _Net(14, 64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    _loop(ctx, model, opt, _readings(gen, 64, 14, 14), 200, F.mse_loss, scaler=scaler, amp=True)
    s = ctx.scales
    backs = sum(1 for a, b in zip(s[:-1], s[1:], strict=False) if b < a)
    ctx.check("over 40 scale back-offs", backs > 40)
    ctx.check("over 25% of steps skipped", backs > 0.25 * len(s))
    ctx.check("the scale passed 2**20", max(s) > 2.0**20)


@scenario(
    "snowpack_surface_hoar_log_relu_regressor",
    "RMSprop",
    "nonfinite",
    where=("head",),
    diverges=124,
    heldout=True,
    note="log-space loss on relu(head) after the clamp_min(1e-4) was dropped: a crystal-size "
    "prediction reaches exactly 0, log 0 = -inf and the loss is non-finite",
)
def h411_snowpack_hoar_log_zero(ctx):
    gen = seeded(4115)
    model = _Net(10, 32)
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    base = _readings(gen, 64, 10, 15)

    def sizes():
        for x, y in base:
            yield x, torch.exp(1.5 * y - 1.0)

    zeros = []

    def loss_fn(out, y):
        pred = F.relu(out)
        zeros.append(int((pred == 0).sum()))
        return F.mse_loss(torch.log(pred), torch.log(y))

    _loop(ctx, model, opt, sizes(), 300, loss_fn)
    k = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at some step", k is not None)
    ctx.check("a prediction is exactly 0 at that step", k is not None and zeros[k] > 0)
    ctx.check("finite for the first 60 steps", k is not None and k > 60)


@scenario(
    "quilting_frame_stitch_shard_relu_regressor",
    "SGD (momentum)",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=120,
    note="one longarm frame's shard at step 120 logged in millimetres for centimetres: features "
    "and targets x10 on that batch, clipped, the run recovers",
)
def h411_quilting_stitch_bad_shard(ctx):
    gen = seeded(4116)
    model = _Net(12, 48)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x * 10, y * 10) if step == 120 else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 12, 16), 240, F.mse_loss, alter=alter, clip=2.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at 120 over 50x the median before", ls[120] > 50 * _median(ls[90:120]))
    ctx.check("gradient at 120 over 20x the median before", g[120] > 20 * _median(g[90:120]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[100:120]))


@scenario(
    "kiteboard_kite_loop_fgsm_two_group_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="FGSM adversarial training (eps 0.1, perturbations made in the inner loop); the trunk "
    "param group's lr typed 1e-9 for 1e-2: fc1 is frozen in effect while the head learns",
)
def h411_kiteboard_fgsm_frozen_trunk(ctx):
    gen = seeded(4117)
    model = _Net(16, 48, out=5)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )

    def fgsm(x, y):
        x = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        return (x + 0.1 * gx.sign()).detach()

    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    gs = []

    def inspect(step):
        gs.append(float(model.fc1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 17, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        make_input=fgsm,
        inspect=inspect,
    )
    rel = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    relh = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", rel < 1e-5)
    ctx.check("fc1 receives gradients", _median(gs) > 1e-3)
    ctx.check("the head moves over 5%", relh > 0.05)


@scenario(
    "didgeridoo_drone_circular_breath_deep_relu_mlp",
    "Adamax",
    "exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="12-layer ReLU MLP initialised with std 2/sqrt(fan_in) for sqrt(2/fan_in): each layer "
    "gains sqrt(2), dL/d(layer 0 output) is tens of times dL/d(last hidden output), clipped",
)
def h411_didgeridoo_deep_init_gain(ctx):
    gen = seeded(4118)

    def build(std_num):
        layers = [nn.Linear(16, 32)] + [nn.Linear(32, 32) for _ in range(11)]
        m = nn.Module()
        m.layers = nn.ModuleList(layers)
        m.head = nn.Linear(32, 1)
        for lin in layers:
            nn.init.normal_(lin.weight, std=std_num / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        return m

    def ratio(m, x, y):
        outs = []
        h = x
        for lin in m.layers:
            h = F.relu(lin(h))
            h.retain_grad()
            outs.append(h)
        F.mse_loss(m.head(h).squeeze(-1), y).backward()
        r = float(outs[0].grad.norm() / outs[-1].grad.norm().clamp_min(1e-30))
        m.zero_grad(set_to_none=True)
        return r

    class Deep(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.layers = inner.layers
            self.head = inner.head

        def forward(self, x):
            for lin in self.layers:
                x = F.relu(lin(x))
            return self.head(x).squeeze(-1)

    model = Deep(build(2.0))
    ref = Deep(build(math.sqrt(2.0)))
    batches = _readings(gen, 64, 16, 18)
    x0, y0 = next(batches)
    r_start = ratio(model, x0, y0)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    _loop(ctx, model, opt, batches, 120, F.mse_loss, clip=1.0)
    r_end = ratio(model, x0, y0)
    r_ref = ratio(ref, x0, y0)
    ctx.check("dL/d(layer 0) over 20x dL/d(layer 11) at init", r_start > 20)
    ctx.check("still over 10x after training", r_end > 10)
    ctx.check("under 5x at He init", r_ref < 5)


@scenario(
    "tanner_vat_liming_warmup_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=40,
    note="LambdaLR warm-up written as step / 40 without min(1, .): the lr keeps climbing past its "
    "0.2 peak and crosses 2/sharpness, then the loss blows up",
)
def h411_tanner_warmup_no_cap(ctx):
    gen = seeded(4119)
    model = _Net(10, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 40)
    batches = _readings(gen, 64, 10, 19)
    xp, yp = next(batches)
    prod = {}

    def inspect(step):
        if step in (30, 300) or step % 25 == 0:
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, xp, yp)

    _loop(ctx, model, opt, batches, 400, F.mse_loss, inspect=inspect, sched=sched)
    ls = ctx.losses
    k = _first_bad(ls)
    blown = k if k is not None else next((i for i, v in enumerate(ls) if v > 100 * ls[0]), None)
    ctx.check("lr x sharpness under 2 at step 25", prod.get(25, 9.0) < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        blown is not None and any(v > 2 for s, v in prod.items() if s < blown),
    )
    ctx.check("the loss blows up (non-finite or over 100x its start)", blown is not None)


@scenario(
    "kora_bridge_harp_pluck_nadam_relu_regressor",
    "NAdam",
    "loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="NAdam lr typed 3e-1 for 3e-3: the first large steps push fc2's pre-activations negative "
    "and most of act2's ReLUs die for the rest of the run",
)
def h411_kora_pluck_dead_relus(ctx):
    gen = seeded(4120)
    batches = _readings(gen, 64, 12, 20)
    xp, _ = next(batches)

    def train(lr, c):
        model = _Net(12, 48)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        dead = []
        if c is None:
            for _ in range(150):
                x, y = next(batches)
                F.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(xp)))
            return dead

        def inspect(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(xp)))

        _loop(c, model, opt, batches, 150, F.mse_loss, inspect=inspect)
        return dead

    bad = train(3e-1, ctx)
    good = train(3e-3, None)
    ctx.check("over 50% of act2 dead over the last 50 steps", _mean(bad[-50:]) > 0.5)
    ctx.check("under 20% at 3e-3", _mean(good[-50:]) < 0.2)
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------


@scenario(
    "farrier_anvil_ring_pgd_relu_classifier",
    "SGD (momentum)",
    "healthy",
    heldout=True,
    note="PGD adversarial training (eps 0.05, 3 steps of 0.02) with SGD momentum and StepLR",
)
def h411_farrier_anvil_pgd_control(ctx):
    gen = seeded(4121)
    model = _Net(16, 48, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.3)

    def pgd(x, y, eps=0.05, alpha=0.02):
        xa = x.clone()
        for _ in range(3):
            xa.requires_grad_(True)
            (gx,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
            xa = (x + (xa.detach() + alpha * gx.sign() - x).clamp(-eps, eps)).detach()
        return xa

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 21, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        make_input=pgd,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


class _Tap(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _taps(gen, batch, classes, seed, length=48):
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.8 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freqs[y][:, None] * t + ph) * torch.exp(-t / 30)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    "tonewood_tap_tone_conv1d_classifier",
    "RAdam",
    "healthy",
    heldout=True,
    note="RAdam under OneCycleLR, label smoothing 0.1, clipping at 1.0",
)
def h411_tonewood_tap_control(ctx):
    gen = seeded(4122)
    model = _Tap()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _taps(gen, 32, 4, 22),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "glassblower_glory_hole_fp16_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="fp16 autocast with a default GradScaler, AdamW with a no-decay bias group, "
    "accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping",
)
def h411_glassblower_fp16_control(ctx):
    gen = seeded(4123)
    model = _Net(12, 48, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 32, 12, 23, noise=0.2)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
