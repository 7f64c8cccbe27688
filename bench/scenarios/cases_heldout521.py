"""Held-out set 521 (``h521_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a lugger halyard-load SiLU regressor resumed with an empty Adam state (one loss spike,
recovered); a cresset beacon-flame classifier whose z-loss is written with the wrong sign (head
logits grow, SGD momentum); a crampon front-point bite deep tanh MLP initialised with gain 4
(gradients grow through depth, ASGD); a solifluction-lobe ConvNeXt-style 1-D block stack whose
stem param group has its lr typed 1e-7 (Adadelta); a fulling-mill stock-hammer regressor with
its warm-up peak lr typed 1.0 for 0.1, past 2/sharpness (plain SGD); a sledge-dog team bearing net taking
acos of a cosine that rounds above 1 (RAdam); a thatch-spar split-length regressor fed one
sample in millimetres (RMSprop); a shipwright caulking-mallet regressor whose leftover batch is
summed instead of averaged for one step (SGD Nesterov); a gravity-wave cloud-band regressor under
fp16 autocast + GradScaler fed an unmasked 99999 sentinel (AdamW); a kulintang gong-strike ReLU
classifier with its Adam lr typed 1e-1 for 1e-3 (dying ReLUs).

Controls: a hoar-frost crystal-habit ConvNeXt-style 1-D classifier whose layer scales start at
1e-6 (AdamW, warm-up + cosine, clipping); a rebab bow-stroke hand-written Elman RNN classifier
(label smoothing, SGD Nesterov, StepLR, clipping); a quern-stone grind tied-weight autoencoder
(fp16 autocast + GradScaler, Adagrad, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    total=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``total(step, out, y, loss)``
    gives the backpropagated loss, ``after(step, loss, out)``. Stops after a non-finite loss
    once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        back = total(step, out, y, loss) if total is not None else loss
        back.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1], out)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Readings (std ``scale``) and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield scale * x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2, noise=0.4):
    """1-D sensor traces: each class a mix of two tones with its own frequencies and phase
    offset between the channels; a random amplitude and start phase per trace."""
    g = torch.Generator().manual_seed(seed)
    f1 = 1.0 + 5.0 * torch.rand(classes, generator=g)
    f2 = 1.0 + 5.0 * torch.rand(classes, generator=g)
    off = math.pi * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float() / length * 2 * math.pi
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        amp = 0.7 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        arg1 = f1[y][:, None, None] * t + off[y][:, :, None] + ph
        arg2 = f2[y][:, None, None] * t + ph
        x = amp * (torch.sin(arg1) + 0.5 * torch.sin(arg2))
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


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


# -- a hand-written ConvNeXt-style 1-D block stack ------------------------------------------------


class _ConvNeXtBlock1d(nn.Module):
    """Depthwise conv (k=7), LayerNorm over channels, inverted-bottleneck MLP (4x, GELU), layer
    scale, residual."""

    def __init__(self, dim, scale_init):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(scale_init * torch.ones(dim))

    def forward(self, x):  # x: (batch, dim, length)
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class _ConvNeXt1d(nn.Module):
    def __init__(self, channels=2, dim=24, depth=3, out=4, scale_init=1e-6):
        super().__init__()
        self.stem = nn.Conv1d(channels, dim, 4, stride=2)
        self.stem_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(_ConvNeXtBlock1d(dim, scale_init) for _ in range(depth))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(m.weight, std=0.02 if m is not self.stem else 0.2)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.stem_norm(self.stem(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.head_norm(h.mean(-1)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. loss spike: resumed with the optimizer state of the step-0 checkpoint ---------------------

LUGGER_ONSET = 120


@scenario(
    family="lugger_sail_halyard_load_resume_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LUGGER_ONSET,
    note="Lugger sail halyard-load regressor (SiLU MLP on wind speed, heel, sail area, reef "
    "points, sea state and sheet angle, MSE, Adam lr 2e-2). At step 120 the job is resumed: the "
    "weights come from the latest checkpoint but the optimizer state is loaded from the step-0 "
    "file (empty moments, step counter 0). The first updates after resume are full-size "
    "sign-like steps: the loss jumps for a few steps on ordinary data and gradients, then the "
    "run recovers.",
)
def h521_lugger_halyard_resume_empty_adam(ctx):
    gen = seeded(5211)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)

    def before(step):
        if step == LUGGER_ONSET:
            opt.state.clear()  # loaded from the step-0 optimizer checkpoint

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 52110), 240, F.mse_loss, before=before
    )
    o = LUGGER_ONSET
    pre = _median(losses[o - 30 : o])
    ctx.check("loss jumps over 3x within 10 steps of resume", max(losses[o : o + 10]) > 3 * pre)
    ctx.check("gradient at resume ordinary (under 3x)", norms[o] < 3 * _median(norms[o - 30 : o]))
    ctx.check("recovers under 1.5x", _mean(losses[-20:]) < 1.5 * pre and _finite(losses))


# -- 2. output logit divergence: the z-loss written with the wrong sign ----------------------------


@scenario(
    family="cresset_beacon_flame_zloss_sign_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Cresset beacon flame-colour classifier (ReLU MLP on fuel mix, wind, basket height, "
    "pitch content and damp, 6 classes, cross-entropy, SGD momentum 0.9). The z-loss meant to "
    "keep the head's log-partition near 0 is written ce - 2e-3 * lse^2 instead of + : it rewards "
    "large logits and the head's logits grow without bound; the logged cross-entropy first "
    "falls, then climbs and the loss goes non-finite near step 105.",
)
def h521_cresset_zloss_sign(ctx):
    gen = seeded(5212)
    model = _Net(10, 48, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(4), 256, 10, 6, 52120))
    with torch.no_grad():
        l0 = float(model(probe_x).abs().max())
    peaks = []

    def total(step, out, y, loss):
        lse = torch.logsumexp(out, -1)
        return loss - 2e-3 * lse.pow(2).mean()  # sign bug: meant + 2e-3 * lse^2

    def after(step, loss, out):
        peaks.append(float(out.detach().abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 52120),
        200,
        F.cross_entropy,
        classifier=True,
        total=total,
        after=after,
    )
    fin = [v for v in peaks if math.isfinite(v)]
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("head logits grew over 20x before the break", max(fin) > 20 * l0)
    ctx.check("logits still growing at the break", fin[-1] > 1.5 * fin[max(len(fin) - 30, 0)])
    ctx.check("cross-entropy climbed over 10x its best", max(ok) > 10 * min(ok))
    ctx.check("the run ends non-finite", not math.isfinite(losses[-1]))


# -- 3. exploding gradients: a deep tanh MLP initialised with gain 4 -------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.xavier_normal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="crampon_front_point_bite_gain_typo_deep_tanh_mlp",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Crampon front-point bite-depth regressor, a 14-layer tanh MLP on ice hardness, "
    "kick angle, boot stiffness, point sharpness and temperature (MSE, ASGD lr 1e-4). The "
    "Xavier init gain is typed 4 for 5/3: every layer amplifies the backward signal, so the "
    "gradient grows through depth from the last layer to the first and the first layers' "
    "gradients dwarf a correctly initialised model's.",
)
def h521_crampon_deep_tanh_gain_typo(ctx):
    gen = seeded(5213)
    model = _DeepTanh(5, 64, 14, 4.0)
    torch.manual_seed(52131)
    ref = _DeepTanh(5, 64, 14, 5.0 / 3.0)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-4)
    x0, y0 = next(_readings(torch.Generator().manual_seed(7), 64, 5, 52130))
    F.mse_loss(ref(x0), y0).backward()
    ref_first = float(ref.layers[0].weight.grad.norm())
    F.mse_loss(model(x0), y0).backward()
    first = float(model.layers[0].weight.grad.norm())
    last = float(model.layers[-1].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 52130), 120, F.mse_loss)
    ctx.check("first layer's gradient over 100x the last layer's", first > 100 * last)
    ctx.check("first layer's gradient over 30x a gain-5/3 model's", first > 30 * ref_first)
    ctx.check("loss finite", _finite(losses))


# -- 4. update ratio: the ConvNeXt stem group's lr typed 1e-7 ---------------------------------------


@scenario(
    family="solifluction_lobe_creep_convnext1d_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("stem",),
    diverges=None,
    heldout=True,
    note="Solifluction-lobe creep-rate regressor, a hand-written ConvNeXt-style 1-D block stack "
    "(patchify conv stem, depthwise conv k=7, LayerNorm, inverted-bottleneck MLP, layer scale "
    "0.1) over soil-temperature and moisture traces (MSE, Adadelta). The stem sits "
    "in its own param group for a planned lower rate; its lr is typed 1e-7 for 1e-1: the stem "
    "never moves while the blocks and head learn.",
)
def h521_solifluction_convnext_stem_lr_typo(ctx):
    gen = seeded(5214)
    model = _ConvNeXt1d(2, 24, 3, 1, scale_init=0.1)
    stem = list(model.stem.parameters())
    ids = {id(p) for p in stem}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adadelta([{"params": stem, "lr": 1e-7}, {"params": rest, "lr": 1.0}])
    s0 = model.stem.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    classes = _traces(gen, 32, 5, 52140)
    rates = torch.linspace(-1.0, 1.0, 5)

    def batches():
        while True:
            x, y = next(classes)
            yield x, rates[y]

    losses, _ = _loop(ctx, model, opt, batches(), 150, F.mse_loss)
    ctx.check("stem moved under 1e-5 of its norm", _rel_change(model.stem.weight, s0) < 1e-5)
    ctx.check("head moved over 5%", _rel_change(model.head.weight, h0) > 0.05)
    ctx.check("the rest still trained (loss under 0.8x)", _fell(losses, ratio=0.8))


# -- 5. sharpness above the limit: warm-up peak lr typed 1.0 for 0.1 ---------------------------------------------


@scenario(
    family="fulling_mill_stock_hammer_lr_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Fulling-mill stock-hammer cloth-shrinkage regressor (small tanh MLP on hammer rate, "
    "fuller's-earth dose, water temperature, cloth weight and hours, readings of std 2, MSE, "
    "plain SGD, linear warm-up over 80 steps). The peak lr is typed 1.0 for 0.1: the loss's top "
    "Hessian eigenvalue is already above 2/1.0 at the start; the run trains while the warm-up lr "
    "is small, then once the lr passes 2/sharpness the iterates oscillate with growing "
    "amplitude and the loss blows up.",
)
def h521_fulling_mill_lr_typo(ctx):
    gen = seeded(5215)
    model = _Net(5, 24, 1, act=nn.Tanh)
    lr = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    px, py = next(_readings(torch.Generator().manual_seed(5), 256, 5, 52150, scale=2.0))
    params = list(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(px), py), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    warm = 80
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 1.0))
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52150, scale=2.0), 150, F.mse_loss, sched=sched
    )
    ctx.check("top Hessian eigenvalue above 2/lr at the start", lam > 2 / lr)
    ctx.check("and below 2/0.1 (the intended lr is stable)", lam < 2 / 0.1)
    bad = [v for v in losses if not math.isfinite(v)] or [max(losses)]
    ctx.check("loss blew up over 1000x its start", bad[0] > 1000 * losses[0] or math.isnan(bad[0]))


# -- 6. nonfinite: acos of a cosine that rounds above 1 --------------------------------------------

SLEDGE_ONSET = 100
_PARALLEL = (4.622988224029541, -0.880286693572998)


class _Bearing(nn.Module):
    """Angle between the team's heading vector and the wind vector (no clamp on the cosine)."""

    def forward(self, heading, wind):
        cos = (heading * wind).sum(-1) / (heading.norm(dim=-1) * wind.norm(dim=-1))
        return torch.acos(cos)


class _SledgeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bearing = _Bearing()
        self.body = _Net(5, 48, 1, act=nn.SiLU)

    def forward(self, x):
        ang = self.bearing(x[:, :2], x[:, 2:4])
        return self.body(torch.cat([torch.cos(ang)[:, None], ang[:, None], x[:, 4:]], 1))


@scenario(
    family="sledge_dog_team_wind_bearing_acos_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("bearing",),
    diverges=SLEDGE_ONSET,
    heldout=True,
    onset=SLEDGE_ONSET,
    note="Sledge-dog team speed net (an angle layer takes acos of the cosine between the "
    "team's heading and the wind vector, then a SiLU MLP with snow hardness, load and team "
    "size, MSE, RAdam). The cosine is not clamped to [-1, 1]; at step 100 one row has the wind "
    "exactly along the heading and the float32 cosine rounds to 1.0000001: acos gives NaN and "
    "the loss is NaN.",
)
def h521_sledge_dog_acos_unclamped(ctx):
    gen = seeded(5216)
    model = _SledgeNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    flags = []
    base = _readings(gen, 64, 5, 52160)

    def batches():
        while True:
            x, y = next(base)
            head = 2 * math.pi * torch.rand(64, generator=gen)
            rel = 0.3 + (math.pi - 0.6) * (0.5 + 0.5 * torch.tanh(x[:, 0]))
            r1 = 1.0 + torch.rand(64, generator=gen)
            r2 = 1.0 + torch.exp(0.5 * x[:, 1])
            vecs = torch.stack(
                [
                    r1 * torch.cos(head),
                    r1 * torch.sin(head),
                    r2 * torch.cos(head + rel),
                    r2 * torch.sin(head + rel),
                ],
                1,
            )
            yield torch.cat([vecs, x[:, 2:]], 1), y

    def alter(step, x, y):
        if step == SLEDGE_ONSET:
            x = x.clone()
            x[5, 0:2] = torch.tensor(_PARALLEL)
            x[5, 2:4] = torch.tensor(_PARALLEL)
            with torch.no_grad():
                flags.append(bool(torch.isnan(model.bearing(x[:, :2], x[:, 2:4])).any()))
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 160, F.mse_loss, alter=alter)
    ctx.check("trained before onset", _fell(losses[:SLEDGE_ONSET]))
    ctx.check("bearing output NaN at onset", bool(flags) and flags[0])
    ctx.check("loss NaN at onset", len(losses) == SLEDGE_ONSET + 1 and math.isnan(losses[-1]))


# -- 7. data outlier: one sample's target in millimetres ----------------------------------------------

THATCH_ONSET = 110


@scenario(
    family="thatch_spar_split_length_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=THATCH_ONSET,
    note="Thatch-spar split-length regressor (ReLU MLP on hazel rod diameter, age, moisture, "
    "knot count and twist, MSE, RMSprop lr 1e-3, clipping at norm 1). In the batch at step 110 "
    "one sample's target was entered in millimetres instead of metres (1000x): that batch's loss "
    "and gradient are huge; clipping holds the update and the run recovers.",
)
def h521_thatch_spar_mm_sample(ctx):
    gen = seeded(5217)
    model = _Net(5, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == THATCH_ONSET:
            y = y.clone()
            y[11] = y[11] * 1000.0 + 700.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52170), 220, F.mse_loss, alter=alter, clip=1.0
    )
    o = THATCH_ONSET
    pre = _median(losses[o - 30 : o])
    ctx.check("loss over 100x at onset", losses[o] > 100 * pre)
    ctx.check("gradient over 20x at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("recovers under 2x", _mean(losses[-20:]) < 2 * pre and _finite(losses))


# -- 8. gradient spike: a leftover batch summed instead of averaged ---------------------------------

SHIPWRIGHT_ONSET = 140


@scenario(
    family="shipwright_caulking_mallet_sum_reduction_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHIPWRIGHT_ONSET,
    note="Shipwright caulking-mallet seam-tightness regressor (ReLU MLP on oakum weight, "
    "iron width, strike count, plank gap and wood moisture, MSE, SGD Nesterov momentum 0.9, "
    "clipping at norm 1). At step 140 the leftover-batch branch of the loader loop backpropagates "
    "F.mse_loss(..., reduction='sum') while logging the mean: one gradient 64x the usual on an "
    "ordinary batch and logged loss; clipping holds the update.",
)
def h521_shipwright_leftover_sum_reduction(ctx):
    gen = seeded(5218)
    model = _Net(5, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def total(step, out, y, loss):
        if step == SHIPWRIGHT_ONSET:
            return F.mse_loss(out, y, reduction="sum")
        return loss

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 52180), 200, F.mse_loss, total=total, clip=1.0
    )
    o = SHIPWRIGHT_ONSET
    ctx.check("gradient over 20x the median at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- 9. amp overflow: an unmasked 99999 sentinel under fp16 autocast ---------------------------------

GRAVITY_ONSET = 90


@scenario(
    family="gravity_wave_cloud_band_sentinel_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=GRAVITY_ONSET,
    heldout=True,
    onset=GRAVITY_ONSET,
    note="Atmospheric gravity-wave cloud-band spacing regressor (GELU MLP on Brunt-Vaisala "
    "frequency, wind shear, ridge height, humidity and lapse rate, MSE, fp16 autocast + "
    "GradScaler, AdamW). At step 90 a radiosonde row carries the missing-value sentinel 99999 "
    "that the loader does not mask: under autocast fc1 runs in fp16, 99999 is past 65504 and "
    "the output overflows to inf; the loss is non-finite (the same batch in float32 is "
    "finite).",
)
def h521_gravity_wave_sentinel_fp16(ctx):
    gen = seeded(5219)
    model = _Net(5, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52190)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step == GRAVITY_ONSET:
            x = x.clone()
            x[17, 3] = 99999.0
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == GRAVITY_ONSET:
            fc1_inf.append(not bool(torch.isfinite(h).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained before onset", _fell(losses[:GRAVITY_ONSET]))
    ctx.check("finite before onset", _finite(losses[:GRAVITY_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == GRAVITY_ONSET + 1)


# -- 10. loss of plasticity: Adam lr typed 1e-1 for 1e-3 kills the ReLUs ------------------------------


@scenario(
    family="kulintang_gong_strike_lr_typo_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Kulintang gong-strike classifier (ReLU MLP on mallet-impact spectra, 6 strike kinds, "
    "cross-entropy, Adam). The lr is typed 1e-1 for 1e-3 with no warm-up: the first large "
    "steps push most of the second layer's units negative on every input; they die, get no "
    "gradient back, and the net stalls well above what it reaches at the intended rate.",
)
def h521_kulintang_adam_lr_dead_relus(ctx):
    gen = seeded(5220)
    model = _Net(16, 64, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    px, _ = next(_grades(torch.Generator().manual_seed(6), 512, 16, 6, 52200, spread=1.5))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(px))
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 52200, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        dead1 = dead_fraction(model.features(px))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 60% of act2 dead at the end", dead1 > 0.6)
    ctx.check("stalls above 0.3 cross-entropy", _mean(losses[-20:]) > 0.3)
    ctx.check("finite", _finite(losses))


# -- controls ----------------------------------------------------------------------------------------


@scenario(
    family="hoar_frost_crystal_habit_convnext1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hoar-frost crystal-habit classifier (control): a hand-written ConvNeXt-style 1-D block "
    "stack (patchify conv stem, depthwise conv k=7, LayerNorm, inverted-bottleneck MLP, layer "
    "scale) over humidity and surface-temperature traces, 5 habits, cross-entropy. The layer "
    "scales start at 1e-6 as in ConvNeXt, so the residual branches add almost nothing at first "
    "and the loss barely moves in the first steps; AdamW, linear warm-up then cosine, "
    "clipping at norm 1.",
)
def h521_hoar_frost_convnext_layer_scale_control(ctx):
    gen = seeded(5221)
    model = _ConvNeXt1d(2, 24, 3, 5, scale_init=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
    steps, warm = 240, 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 52210),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_traces(torch.Generator().manual_seed(8), 512, 5, 52210))
    with torch.no_grad():
        acc = float((model(px).argmax(1) == py).float().mean())
    ctx.check(
        "loss barely moved in the first 5 steps", abs(losses[4] - losses[0]) < 0.05 * losses[0]
    )
    ctx.check("learned (acc > 0.8)", acc > 0.8)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))


class _ElmanClassifier(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        nn.init.orthogonal_(self.rec.weight)

    def forward(self, x):  # x: (batch, channels, length)
        h = x.new_zeros(x.shape[0], self.rec.in_features)
        for t in range(x.shape[2]):
            h = torch.tanh(self.inp(x[:, :, t]) + self.rec(h))
        return self.head(h)


@scenario(
    family="rebab_bow_stroke_label_smoothing_elman_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rebab bow-stroke classifier (control): a hand-written Elman RNN (orthogonal recurrent "
    "init) over bow-pressure and bow-speed traces, 4 stroke kinds, cross-entropy with label "
    "smoothing 0.1, SGD Nesterov momentum 0.9, StepLR halving every 60 steps, clipping at "
    "norm 1, noisy traces.",
)
def h521_rebab_elman_control(ctx):
    gen = seeded(5222)
    model = _ElmanClassifier(2, 32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, 60, 0.5)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 52220, length=24, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell and finite", _fell(losses, ratio=0.6))


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in, code):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.GELU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="quern_stone_grind_fp16_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Quern-stone grind-profile tied-weight autoencoder (control): 16 flour-fineness and "
    "stone-wear readings on a 4-factor structure, decoder tied to the encoder's weight, MSE "
    "under fp16 autocast + GradScaler, Adagrad lr 0.05, ReduceLROnPlateau, gradient "
    "accumulation 2.",
)
def h521_quern_tied_autoencoder_fp16_control(ctx):
    gen = seeded(5223)
    g = torch.Generator().manual_seed(52230)
    mix = torch.randn(4, 16, generator=g)
    model = _TiedAutoencoder(16, 8)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for _ in range(160):
        shown = 0.0
        for _ in range(2):
            z = torch.randn(32, 4, generator=gen)
            x = torch.tanh(z @ mix) + 0.05 * torch.randn(32, 16, generator=gen)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.mse_loss(out.float(), x)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.5))
    ctx.check("scaler scale stayed finite", _finite(ctx.scales))
