"""Held-out set 427 (``h427_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a curling sweep-count SiLU regressor whose log feature lost its clamp (log 0 on a stone
thrown unswept), a sheepdog-trial course-time regressor fed one trial's export in seconds for
minutes (one corrupted batch), a beekeeper brood-frame attention pointer whose key LayerNorm was
dropped in a refactor (attention logits grow), an alphorn mouthpiece two-group regressor whose
trunk lr is typed 2e-9 for 2e-3 (a frozen trunk), an avalanche slab-fracture deep tanh MLP with
its init std typed 3.0 for 1.0 (gradients grow through depth), a canoe-polo roll BCE net whose
resumed step reads a loss weight in percent (one gradient burst), a tea-taster liquor-colour
classifier whose temperature is read in hundredths (softmax saturates), a sepak-takraw serve
BCE net fed ratings in percent (the head's logits grow without bound), a snowshoe strap-wear
tanh regressor whose hand-written weight decay has its sign flipped (a slow climb) and a
lighthouse lamp-oil burn tanh regressor whose warm-up peak lr is typed 10x (past 2/sharpness).

Controls: a dowsing-rod tremor contrastive predictive coding model (GRU context, InfoNCE with
in-batch negatives, learnt temperature clamped, AdamW, clipping), a hurling sliotar-strike fp16
Conv1d classifier (GradScaler, SGD Nesterov under OneCycleLR, label smoothing, clipping) and a
geyser sinter-terrace tied autoencoder (Huber, RAdam, ReduceLROnPlateau, accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
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
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- 1. nonfinite: log of a sweep count with no clamp ----------------------------------------------


class LogSweeps(nn.Module):
    """log of the sweep count (column 0); the clamp_min(1) that guarded it was dropped."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _CurlingNet(nn.Module):
    def __init__(self, d_in=6, hidden=40):
        super().__init__()
        self.log_sweeps = LogSweeps()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.fc1(self.log_sweeps(x)))
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _curling(gen, batch, onset):
    """Sweep count (1..20 sweeps) and five ice readings -> extra travel of the stone in metres."""
    w = torch.tensor([0.4, -0.3, 0.2, 0.1, -0.2])
    step = 0
    while True:
        sweeps = torch.randint(1, 21, (batch, 1), generator=gen).float()
        if step == onset:
            sweeps[3, 0] = 0.0  # a stone thrown with no sweeping at all
        ice = torch.randn(batch, 5, generator=gen)
        y = 0.8 * torch.log(sweeps.clamp_min(1.0)).squeeze(1) + torch.tanh(ice @ w)
        yield torch.cat([sweeps, ice], 1), y + 0.05 * torch.randn(batch, generator=gen)
        step += 1


@scenario(
    family="curling_sweep_count_log_feature_silu_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("log_sweeps",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Curling extra-travel SiLU regressor (MSE, Adam) with a log sweep-count feature whose "
    "clamp_min(1) was dropped in a refactor. Every stone had been swept until the batch at step "
    "90 carries one thrown unswept: log(0) = -inf, the forward pass mixes +inf and -inf and the "
    "loss is NaN at step 90.",
)
def h427_curling_log_sweeps(ctx) -> None:
    gen = seeded(4271)
    model = _CurlingNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = []
    model.log_sweeps.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isinf(o).any())))
    _loop(ctx, model, opt, _curling(gen, 64, 90), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("loss finite before step 90", _finite(ls[:90]))
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == 90)
    ctx.check("log_sweeps output has -inf at step 90 only", seen[90] and not any(seen[:90]))
    ctx.check("loss fell before the fault", _mean(ls[80:90]) < 0.5 * _mean(ls[:10]))


# -- 2. data_outlier: one trial exported in seconds -----------------------------------------------


@scenario(
    family="sheepdog_trial_course_minutes_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="Sheepdog-trial course-time regressor (ReLU MLP, MSE, RMSprop, clipping at 5). The batch "
    "at step 110 is one trial's export whose course times are in seconds, not minutes (60x "
    "targets). The loss and gradient jump for that one batch and the run recovers.",
)
def h427_sheepdog_seconds_shard(ctx) -> None:
    gen = seeded(4272)
    model = _Net(10, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 10, seed=272, scale=2.0)

    def alter(step, x, y):
        return (x, y * 60.0) if step == 110 else (x, y)

    _loop(ctx, model, opt, data, 200, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 110 over 100x the median of 60..109", ls[110] > 100 * _median(ls[60:110]))
    ctx.check("gradient at 110 over 20x the median of 60..109", gn[110] > 20 * _median(gn[60:110]))
    ctx.check(
        "recovers: last 20 steps under 3x the median before",
        _mean(ls[-20:]) < 3 * _median(ls[60:110]),
    )
    ctx.check("finite", _finite(ls))


# -- 3. attention_logit_growth: a key LayerNorm dropped --------------------------------------------


class FrameAttention(nn.Module):
    """A learned query attends over the hive's frames; the keys' LayerNorm was dropped."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)
        self.last_max_logit = 0.0

    def forward(self, h):
        logits = (self.key(h) @ self.query) * self.scale  # (B, T); self.key_norm(...) dropped
        self.last_max_logit = float(logits.detach().abs().max())
        w = torch.softmax(logits, dim=-1)
        return (w.unsqueeze(-1) * self.value(h)).sum(1)


class _HivePointer(nn.Module):
    def __init__(self, d_in=6, dim=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = FrameAttention(dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)
        for m in (self.embed, self.attn.key, self.attn.value, self.fc, self.head):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = F.gelu(self.embed(x))
        return self.head(F.gelu(self.fc(self.attn(h))))


def _hive(gen, batch, frames=12):
    """Twelve frames of readings; one is the brood frame (marker column 0); the grade is the
    argmax of that frame's four comb readings."""
    while True:
        x = torch.randn(batch, frames, 6, generator=gen)
        x[:, :, 0] *= 0.3
        m = torch.randint(0, frames, (batch,), generator=gen)
        x[torch.arange(batch), m, 0] = 3.0
        y = x[torch.arange(batch), m, 1:5].argmax(-1)
        yield x, y


@scenario(
    family="beekeeper_brood_frame_attention_pointer_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Beekeeper brood-frame pointer: a learned query attends over twelve hive frames and the "
    "grade is read from the brood frame. A refactor dropped the LayerNorm on the keys and the run "
    "uses AdamW at lr 3e-2 with no weight decay on the attention group: the attention logits q.k/sqrt(d) "
    "grow step after step.",
)
def h427_hive_attention_growth(ctx) -> None:
    gen = seeded(4273)
    model = _HivePointer()
    attn_params = list(model.attn.parameters())
    ids = {id(p) for p in attn_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": attn_params, "weight_decay": 0.0}],
        lr=3e-2,
    )
    logits = []
    _loop(
        ctx,
        model,
        opt,
        _hive(gen, 64),
        240,
        F.cross_entropy,
        classifier=True,
        after=lambda s: logits.append(model.attn.last_max_logit),
    )
    start = _mean(logits[:5])
    ctx.check("max attention logit over 10x its start", max(logits[-20:]) > 10 * start)
    ctx.check("max attention logit over 25 at the end", _mean(logits[-10:]) > 25)
    ctx.check("still growing", _mean(logits[-20:]) > 1.3 * _mean(logits[100:120]))
    ctx.check("finite", _finite(ctx.losses))


# -- 4. update_ratio_out_of_range: a trunk group's lr typed 2e-9 ----------------------------------


class _TwoGroup(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="alphorn_mouthpiece_resonance_two_group_gelu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Alphorn mouthpiece-resonance GELU regressor (MSE, Adamax) with two param groups: the "
    "trunk's lr is typed 2e-9 for 2e-3, the head's is 2e-3. The trunk receives gradients but its "
    "updates are ~1e-6 of its weights; only the head learns.",
)
def h427_alphorn_frozen_trunk(ctx) -> None:
    gen = seeded(4274)
    model = _TwoGroup(8)
    opt = torch.optim.Adamax(
        [
            {"params": model.trunk.parameters(), "lr": 2e-9},  # typed 2e-9 for 2e-3
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    gsum = []

    def after(step):
        g = model.trunk[0].weight.grad
        gsum.append(0.0 if g is None else float(g.norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=274), 200, F.mse_loss, after=after)
    ctx.check("trunk.0 moves under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("trunk.0 receives gradients", _median(gsum) > 1e-4)
    ctx.check("head moves over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- 5. exploding_gradients: init std typed 3.0 ----------------------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=10, std=1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=std / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-12))


def _avalanche_run(ctx, std, steps, attach):
    gen = seeded(4275)
    model = _DeepTanh(std=std)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=275),
        steps,
        F.mse_loss,
        clip=1.0,
        after=lambda s: ratios.append(_depth_ratio(model)),
        attach=attach,
    )
    return ratios


@scenario(
    family="avalanche_slab_fracture_deep_tanh_gain_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Avalanche slab-fracture depth regressor: a 10-layer tanh MLP whose init std is typed "
    "3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in) (SGD momentum, MSE, clipping at 1). The network "
    "is in the chaotic regime: the gradient grows backwards through depth, largest at layers.0.",
)
def h427_avalanche_init_gain(ctx) -> None:
    ratios = _avalanche_run(ctx, 3.0, 150, True)
    ref = _avalanche_run(None, 1.0, 20, False)
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.9) at the start", ratios[0] > 10)
    ctx.check("... and in median over the run", _median(ratios) > 10)
    ctx.check("under 5x at std 1.0", _median(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))


# -- 6. gradient_spike: a resumed loss weight in percent ------------------------------------------


def _binary(gen, batch, d_in, seed, flip=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.sin(2 * x[:, 0]) > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


@scenario(
    family="canoe_polo_eskimo_roll_bce_relu_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Canoe-polo roll-recovery ReLU BCE net (SGD Nesterov, clipping at 1, 5% noisy labels). "
    "The step resumed at 150 reads the roll loss weight from a config written in percent (100 "
    "for 1.0): one step's gradient is 100x while the logged loss is ordinary; the run recovers.",
)
def h427_canoe_polo_percent_weight(ctx) -> None:
    gen = seeded(4276)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (100.0 if step == 150 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, seed=276),
        230,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 30x the median of 100..149", gn[150] > 30 * _median(gn[100:150])
    )
    ctx.check("logged loss at 150 ordinary", ls[150] < 2 * _median(ls[100:150]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _median(ls[100:150]))
    ctx.check("finite", _finite(ls))


# -- 7. softmax_collapse: temperature read in hundredths -------------------------------------------


class _TempClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, classes)
        self.temperature = temperature
        self.raw = None

    def forward(self, x):
        self.raw = self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return self.raw / self.temperature


@scenario(
    family="tea_taster_liquor_colour_hundredths_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tea-taster liquor-colour grade ReLU classifier (cross-entropy, NAdam) whose softmax "
    "temperature is read from a sheet in hundredths: 0.01 for 1.0. The logits are divided by 0.01 "
    "and the target probabilities round to exactly 1.0 in float32.",
)
def h427_tea_taster_temperature(ctx) -> None:
    gen = seeded(4277)
    model = _TempClassifier(12, 6, 0.01)  # read 1 (hundredths) as 0.01
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaled, plain = [], []
    data = _grades(gen, 64, 12, 6, seed=277, spread=0.8)
    last = {}

    def alter(step, x, y):
        last["y"] = y
        return x, y

    def after(step):
        if step >= 150:
            raw = model.raw.detach()
            scaled.append(collapsed_fraction(raw / 0.01, last["y"]))
            plain.append(collapsed_fraction(raw, last["y"]))

    _loop(ctx, model, opt, data, 180, F.cross_entropy, classifier=True, alter=alter, after=after)
    ctx.check("over half the rows' target probability exactly 1.0", _mean(scaled) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(plain) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- 8. output_logit_divergence: ratings in percent into BCE ---------------------------------------


@scenario(
    family="sepak_takraw_serve_percent_target_bce_net",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sepak-takraw serve-success GELU net trained with BCEWithLogits on judges' ratings that "
    "the loader passes in percent (0..100) instead of fractions. For targets above 1 the loss has "
    "no minimum: the head's logits grow without bound and the 'loss' goes far below zero.",
)
def h427_sepak_takraw_percent_targets(ctx) -> None:
    gen = seeded(4278)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 8, seed=278)
    logit = []

    def alter(step, x, y):
        return x, 100.0 * torch.sigmoid(2 * y)  # percent, not a fraction

    def after(step):
        with torch.no_grad():
            logit.append(float(model(probe).abs().max()))

    probe = next(_readings(torch.Generator().manual_seed(9), 128, 8, seed=278))[0]
    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", logit[-1] > 20 * logit[0])
    ctx.check("still growing", logit[-1] > 1.5 * logit[100])
    ctx.check("'loss' below -5", ctx.losses[-1] < -5)
    ctx.check("finite", _finite(ctx.losses))


# -- 9. loss_divergence: weight decay with its sign flipped ----------------------------------------


@scenario(
    family="snowshoe_binding_strap_wear_wd_sign_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowshoe binding-strap wear tanh regressor (MSE, plain SGD) with a hand-written "
    "decoupled weight decay whose sign is flipped: p += lr * wd * p. The weights grow a little "
    "every step, the tanh units saturate and the loss climbs slowly from its low.",
)
def h427_snowshoe_wd_sign(ctx) -> None:
    gen = seeded(4279)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr, wd = 0.05, 0.2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # the bug: should be alpha=-lr * wd
            norms.append(float(torch.cat([p.reshape(-1) for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=279), 200, F.mse_loss, after=after)
    ls = ctx.losses
    m10 = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check(
        "loss over the last 20 steps over 2x its lowest 10-step mean",
        _mean(ls[-20:]) > 2 * min(m10),
    )
    ctx.check(
        "no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(m10, m10[1:], strict=False)),
    )
    ctx.check("climbs through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[100:120]))
    ctx.check("weight norm over 2x its start", norms[-1] > 2 * norms[0])
    ctx.check("finite", _finite(ls))


# -- 10. sharpness_above_limit: warm-up peak typed 10x ---------------------------------------------


@scenario(
    family="lighthouse_lamp_oil_burn_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Lighthouse lamp-oil burn-rate tanh regressor (MSE, full 256-row batches) on plain SGD "
    "with a linear warm-up over 250 steps whose peak lr is typed 3.0 for 0.3. Early on lr x "
    "sharpness is under 2; the warm-up carries it past 2/sharpness and the loss blows up.",
)
def h427_lighthouse_warmup_peak(ctx) -> None:
    gen = seeded(42710)
    model = _Net(8, 32, 1, act=nn.Tanh)
    peak, warm = 3.0, 250  # typed 3.0 for 0.3
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    data = _readings(gen, 256, 8, seed=2710)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=2710))
    edge = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, data, 220, F.mse_loss, before=before)
    ctx.check("lr x sharpness under 2 at step 0", edge[0][1] < 2)
    ctx.check("lr x sharpness past 2 later", any(v > 2 for _, v in edge[1:]))
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )


# -- 11. control: contrastive predictive coding with a clamped learnt temperature ------------------


class _CPC(nn.Module):
    """Per-step encoder, GRU context, one linear predictor per future offset, learnt log-temperature."""

    def __init__(self, d_in=4, z=16, c=32, offsets=3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, z))
        self.context = nn.GRU(z, c, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(c, z) for _ in range(offsets))
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.3)))

    def infonce(self, x):
        zs = self.encoder(x)  # (B, T, z)
        cs, _ = self.context(zs)
        b, t, _ = zs.shape
        tau = self.log_tau.exp()
        losses, hits = [], []
        for k, pred in enumerate(self.predictors, start=1):
            p = F.normalize(pred(cs[:, : t - k]), dim=-1)  # (B, T-k, z)
            f = F.normalize(zs[:, k:], dim=-1)
            logits = torch.einsum("bsd,csd->sbc", p, f) / tau  # in-batch negatives per step
            labels = torch.arange(b).expand(t - k, b)
            losses.append(F.cross_entropy(logits.reshape(-1, b), labels.reshape(-1)))
            hits.append(float((logits.argmax(-1) == labels).float().mean()))
        return torch.stack(losses).mean(), _mean(hits)


def _tremor(gen, batch, steps=24):
    """A dowsing rod's four-axis tremor: each sequence its own mix of frequencies and phases."""
    t = torch.arange(steps).float()
    while True:
        freq = 0.2 + 0.8 * torch.rand(batch, 4, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 4, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 4, 1, generator=gen)
        x = amp * torch.sin(freq * t + phase) + 0.1 * torch.randn(batch, 4, steps, generator=gen)
        yield x.transpose(1, 2)


@scenario(
    family="dowsing_rod_tremor_cpc_gru_infonce",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dowsing-rod tremor contrastive predictive coding (hand-written): per-step MLP encoder, "
    "GRU context, linear predictors for 1..3 steps ahead, InfoNCE against the batch's other "
    "sequences, a learnt temperature clamped to [0.05, 1], AdamW with weight decay, clipping at 1.",
)
def h427_dowsing_cpc_control(ctx) -> None:
    gen = seeded(42711)
    model = _CPC()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    data = _tremor(gen, 32)
    acc = []
    for _ in range(160):
        loss, hit = model.infonce(next(data))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.log_tau.clamp_(math.log(0.05), 0.0)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        acc.append(hit)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("top-1 over 3x chance at the end", _mean(acc[-10:]) > 3 / 32)
    tau = float(model.log_tau.exp())
    ctx.check("temperature within its range", 0.0499 <= tau <= 1.0001)
    ctx.check("finite", _finite(ctx.losses))


# -- 12. control: fp16 Conv1d classifier with a GradScaler -----------------------------------------


class _StrikeConv(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _strikes(gen, batch, length=48):
    """A sliotar strike's microphone trace: a clean crack, a mishit buzz or a block thud."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        f = torch.tensor([1.2, 0.5, 0.15])[y][:, None]
        decay = torch.tensor([0.15, 0.03, 0.08])[y][:, None]
        x = torch.sin(f * t) * torch.exp(-decay * t)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="hurling_sliotar_strike_fp16_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hurling sliotar-strike sound ReLU Conv1d classifier under fp16 autocast with a "
    "GradScaler, SGD Nesterov under OneCycleLR, label smoothing 0.1, clipping at 1.",
)
def h427_hurling_fp16_control(ctx) -> None:
    gen = seeded(42712)
    model = _StrikeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=180)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _strikes(gen, 64),
        180,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- 13. control: tied autoencoder ------------------------------------------------------------------


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _sinter(gen, batch, seed):
    """Sixteen terrace readings driven by four hidden flow factors."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 16, generator=g) / 2
    while True:
        x = torch.randn(batch, 4, generator=gen) @ mix + 0.1 * torch.randn(batch, 16, generator=gen)
        yield x, x


@scenario(
    family="geyser_sinter_terrace_tied_autoencoder_huber",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Geyser sinter-terrace tied autoencoder (decoder reuses the encoder's weight), Huber loss, "
    "RAdam, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping at 1.",
)
def h427_geyser_tied_ae_control(ctx) -> None:
    gen = seeded(42713)
    model = _TiedAE()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_sinter(torch.Generator().manual_seed(5), 256, seed=2713))[0]

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held), held))

    _loop(
        ctx,
        model,
        opt,
        _sinter(gen, 32, seed=2713),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
