"""Held-out set 498 (``h498_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a trireme oar-stroke Linformer encoder (keys and values projected down to a fixed length,
the projection shared) trained at an AdamW lr typed 3e-2 for 3e-4 (attention logits grow), a
chinampa canal silt-depth regressor whose echo-sounder square-root feature has no clamp (a
recalibrated sounder's readings below the surface offset give sqrt of a negative, NaN, RMSprop),
a salmon-wheel catch two-group tanh regressor whose fc1 group lr is typed 1e-7 for 1e-0 (fc1
frozen, Adadelta), a sugar-kelp blade-growth ReLU regressor with a hand-written decoupled weight
decay whose sign is flipped (a slow climb, SGD), a baidarka paddle-load SiLU regressor fed one
shard in newtons instead of kilonewtons (SGD momentum, clipping), a canoe-poling push Huber
regressor whose loss-weight schedule has 600 typed for 0.6 at one step (one gradient burst, SGD
Nesterov), a longship strake-stress 10-layer ReLU MLP initialised at gain 1.5 on He init
(exploding through depth, SGD), a bataireacht stick-guard GELU classifier whose logit scale is
read in percent (250 for 2.5, softmax collapse, Adamax), a knarr cargo-shift ReLU BCE classifier at
a NAdam lr typed 3.0 for 3e-3 (dead ReLUs) and a tsampa roast-grade hinge classifier with the
margin typed 1000 for 1.0 (output logits grow, Adam).

Controls: a quinquereme rowing-bank GELU regressor with stochastic weight averaging from step 150
(SGD momentum, cosine then a constant SWA rate); a walrus-ivory carving-grade Conv1d classifier
(RAdam, OneCycleLR, fp16 autocast + GradScaler, label smoothing, clipping); a ghee-churn
butterfat Gaussian-NLL SiLU net (Adagrad, two param groups, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
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
    alter=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated (before the division by
    ``accumulate``), ``after(step, loss)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            total.backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. attention logit growth: a Linformer encoder at an AdamW lr typed 3e-2 for 3e-4 ------------


class _LinformerAttention(nn.Module):
    """Self-attention with keys and values projected along the sequence down to ``proj`` slots
    (one projection shared by keys and values, as in Linformer's key-value sharing)."""

    def __init__(self, dim, heads, length, proj):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.e = nn.Linear(length, proj, bias=False)  # shared: F = E
        self.out = nn.Linear(dim, dim)
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, -1).transpose(1, 2)
        k = self.e(self.k(x).transpose(1, 2)).transpose(1, 2)  # (b, proj, d)
        v = self.e(self.v(x).transpose(1, 2)).transpose(1, 2)
        k = k.reshape(b, -1, h, d // h).transpose(1, 2)
        v = v.reshape(b, -1, h, d // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_max = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _LinformerLayer(nn.Module):
    def __init__(self, dim, heads, length, proj):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _LinformerAttention(dim, heads, length, proj)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class _OarLinformer(nn.Module):
    def __init__(self, vocab=12, dim=32, heads=2, length=32, proj=8, classes=4, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.layers = nn.ModuleList(
            _LinformerLayer(dim, heads, length, proj) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x).mean(1))


def _oar_strokes(gen, batch=32, length=32, classes=4):
    """Stroke-event tokens: filler strokes 4..11 with one cox call (token 0..3, the class)
    planted at a random beat; the class is the call."""
    while True:
        x = torch.randint(4, 12, (batch, length), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] = y
        yield x, y


def _oar_run(ctx, lr, steps, attach):
    gen = seeded(4981)
    model = _OarLinformer()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    peaks = []

    def after(step, loss):
        peaks.append(max(layer.attn.last_max for layer in model.layers))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _oar_strokes(gen),
        steps,
        F.cross_entropy,
        classifier=True,
        after=after,
        attach=attach,
    )
    return losses, peaks, model


@scenario(
    family="trireme_oar_stroke_linformer_encoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    heldout=True,
    note="Trireme oar-stroke call classifier: a hand-written Linformer-style encoder (keys and "
    "values projected along the sequence from 32 beats down to 8 slots by one shared projection, "
    "pre-LN, mean pool) over generated stroke-event sequences where one planted cox call is the "
    "class (cross-entropy, AdamW, no weight decay). The lr was typed 3e-2 for 3e-4: the query "
    "and key projections grow and the attention logits q.k/sqrt(d) climb far past where they "
    "sit at the intended lr.",
)
def h498_trireme_linformer_lr_typo(ctx) -> None:
    losses, peaks, _ = _oar_run(ctx, 3e-2, 200, True)
    _, ref_peaks, _ = _oar_run(ctx, 3e-4, 200, False)
    ctx.check(
        "max |q.k/sqrt(d)| over 20x its start and over 30",
        max(peaks[-20:]) > 20 * peaks[0] and max(peaks[-20:]) > 30,
    )
    ctx.check("under 10 at the intended lr 3e-4", max(ref_peaks) < 10)
    ctx.check("no NaN loss", _finite(losses))


# -- 2. nonfinite: an echo-sounder square root with no clamp ---------------------------------------


class _SqrtDepth(nn.Module):
    """Depth from echo-sounder two-way times: sqrt(reading - surface offset), no clamp."""

    def __init__(self, offset=0.5):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return torch.sqrt(x - self.offset)


class _SiltNet(nn.Module):
    def __init__(self, pings=8, hidden=48):
        super().__init__()
        self.depth_feat = _SqrtDepth()
        self.fc1 = nn.Linear(pings, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.depth_feat(x)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


CHINAMPA_ONSET = 130


@scenario(
    family="chinampa_canal_silt_depth_sqrt_feature_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("depth_feat",),
    diverges=CHINAMPA_ONSET,
    onset=CHINAMPA_ONSET,
    heldout=True,
    note="Chinampa canal silt-depth regressor (ReLU MLP on eight echo-sounder pings turned into "
    "depths by sqrt(reading - surface offset), MSE, RMSprop). The square root has no clamp: at "
    "step 130 a batch from a recalibrated sounder has readings below the offset, sqrt of a "
    "negative gives NaN in depth_feat and the loss is NaN.",
)
def h498_chinampa_sqrt_no_clamp(ctx) -> None:
    gen = seeded(4982)
    model = _SiltNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(49820)
    w = torch.randn(8, generator=g)
    seen = []

    def data():
        step = 0
        while True:
            x = 0.8 + 2.0 * torch.rand(64, 8, generator=gen)
            y = torch.tanh((torch.sqrt(x - 0.5) - 1.1) @ w / math.sqrt(8) * 2.0)
            if step == CHINAMPA_ONSET:
                x = x - 0.6  # recalibrated sounder: readings shifted below the offset
            step += 1
            yield x, y

    model.depth_feat.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isnan(o).any())))
    losses, _ = _train(ctx, model, opt, data(), 220, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN first at step 130", first_bad == CHINAMPA_ONSET)
    ctx.check(
        "depth_feat produced the NaN at 130", len(seen) > 130 and seen[130] and not any(seen[:130])
    )
    ctx.check("it trained before (loss fell)", _fell(losses[:CHINAMPA_ONSET]))


# -- 3. update ratio: fc1 group lr typed 1e-7 for 1e-0 ---------------------------------------------


@scenario(
    family="salmon_wheel_catch_two_group_tanh_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Salmon-wheel catch regressor (tanh MLP on river stage, water temperature, turbidity "
    "and run-day features, MSE, Adadelta with one param group per layer from a per-layer lr "
    "table). The table has fc1's lr typed 1e-7 for 1e-0: fc1's updates are about seven orders "
    "of magnitude too small for its weights, it barely moves while the rest trains.",
)
def h498_salmon_wheel_group_lr_typo(ctx) -> None:
    gen = seeded(4983)
    model = _Net(10, 48, 1, act=nn.Tanh)
    table = {"fc1": 1e-7, "fc2": 1.0, "head": 1.0}
    opt = torch.optim.Adadelta(
        [{"params": getattr(model, n).parameters(), "lr": lr} for n, lr in table.items()]
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4983), 220, F.mse_loss)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("fc2 moved over 2% of its norm", d2 > 0.02)
    ctx.check("the loss still fell (no blow-up)", _fell(losses, ratio=0.8))


# -- 4. loss divergence: decoupled weight decay with its sign flipped ------------------------------


@scenario(
    family="sugar_kelp_blade_growth_decay_sign_relu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sugar-kelp blade-growth regressor (ReLU MLP on light, nitrate, temperature and "
    "current features, MSE, plain SGD with a hand-written decoupled weight decay). The decay "
    "is written p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights inflate a little every "
    "step and, once fitted, the loss climbs slowly with no jump.",
)
def h498_sugar_kelp_decay_sign(ctx) -> None:
    gen = seeded(4984)
    model = _Net(10, 48, 1)
    lr, wd = 0.02, 0.25
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4984), 300, F.mse_loss, after=after)
    n1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the weights inflated over 1.5x", n1 > 1.5 * n0)
    ctx.check("no NaN (a slow climb)", _finite(losses))
    jumps = [losses[i + 1] / max(losses[i], 1e-9) for i in range(len(losses) - 1)]
    ctx.check("no single-step jump over 5x", max(jumps) < 5)


# -- 5. data outlier: one shard in newtons instead of kilonewtons -----------------------------------


BAIDARKA_ONSET = 120


@scenario(
    family="baidarka_paddle_load_shard_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=BAIDARKA_ONSET,
    heldout=True,
    note="Baidarka paddle-load regressor (SiLU MLP on stroke rate, blade angle, hull speed and "
    "sea-state features, MSE, SGD momentum, clipping at 1). The shard read at step 120 came "
    "from a logger set to newtons: its load targets are 1000x the kilonewton scale. The loss and "
    "gradient spike at that one batch; clipping holds and the run recovers.",
)
def h498_baidarka_newton_shard(ctx) -> None:
    gen = seeded(4985)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == BAIDARKA_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4985), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre = losses[BAIDARKA_ONSET - 20 : BAIDARKA_ONSET]
    ctx.check(
        "the loss at 120 over 1000x the median before", losses[BAIDARKA_ONSET] > 1000 * _median(pre)
    )
    ctx.check(
        "the gradient at 120 over 100x the median before",
        norms[BAIDARKA_ONSET] > 100 * _median(norms[BAIDARKA_ONSET - 20 : BAIDARKA_ONSET]),
    )
    ctx.check("recovers (last 20 under 2x the 20 before)", _mean(losses[-20:]) < 2 * _mean(pre))
    ctx.check("finite throughout", _finite(losses))


# -- 6. gradient spike: a loss-weight schedule entry typed 600 for 0.6 -----------------------------


CANOE_ONSET = 110


@scenario(
    family="canoe_poling_push_weight_typo_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=CANOE_ONSET,
    heldout=True,
    note="Canoe-poling push-force regressor (ReLU MLP on pole angle, water depth, current and "
    "stance features, Huber loss, SGD Nesterov, clipping at 1). The loss weight comes from a "
    "per-step schedule whose entry for step 110 was typed 600 for 0.6: the backpropagated "
    "loss is 1000x its neighbours for that one step while the data and the logged loss are "
    "ordinary; clipping caps the update.",
)
def h498_canoe_poling_weight_typo(ctx) -> None:
    gen = seeded(4986)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (600.0 if step == CANOE_ONSET else 0.6)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4986),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        backprop=backprop,
        clip=1.0,
    )
    pre = norms[CANOE_ONSET - 20 : CANOE_ONSET]
    ctx.check(
        "the gradient at 110 over 200x the median before", norms[CANOE_ONSET] > 200 * _median(pre)
    )
    ctx.check(
        "the logged loss at 110 ordinary (under 3x the median)",
        losses[CANOE_ONSET] < 3 * _median(losses[CANOE_ONSET - 20 : CANOE_ONSET]),
    )
    ctx.check("it trained and stays finite", _fell(losses))


# -- 7. exploding gradients: 10-layer ReLU MLP at gain 1.5 on He init -------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=12, width=32, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain * math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = F.relu(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="longship_strake_stress_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Longship strake-stress regressor (10-layer ReLU MLP on plank thickness, rivet spacing, "
    "oak grain and sea-state features, MSE, plain SGD). The init helper multiplies He's std by a "
    "gain of 1.5 meant for the output scale: every layer amplifies the backward signal 1.5x, the "
    "first layer's gradient is hundreds of times the last's and the loss blows up.",
)
def h498_longship_init_gain(ctx) -> None:
    gen = seeded(4987)
    model = _DeepNet(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=8e-4)
    x0, y0 = next(_readings(gen, 64, 12, 4987))
    zs = []
    h = x0
    for m in model.layers:
        z = m(h)
        z.retain_grad()
        zs.append(z)
        h = F.relu(z)
    F.mse_loss(model.head(h).squeeze(-1), y0).backward()
    ratio = float(zs[0].grad.norm() / zs[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 12, 4987), 150, F.mse_loss)
    ctx.check("dL/dz at layers.0 over 10x at the last layer at the start", ratio > 10)
    ctx.check(
        "the loss blows up (over 1e4x its start or NaN)",
        not _finite(losses) or max(losses) > 1e4 * losses[0],
    )


# -- 8. softmax collapse: a logit scale read in percent ---------------------------------------------


class _ScaledNet(_Net):
    def __init__(self, d_in, hidden, classes, scale):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.head(self.features(x))


@scenario(
    family="bataireacht_stick_guard_percent_scale_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bataireacht stick-guard classifier (GELU MLP on wrist and stick-tip motion features, "
    "five guards, cross-entropy, Adamax). The logit scale is read from a config that stores it "
    "in percent: 250 is used for 2.5, the softmax saturates and most rows' target probability "
    "rounds to exactly 1.0 in float32.",
)
def h498_bataireacht_percent_scale(ctx) -> None:
    gen = seeded(4988)
    model = _ScaledNet(12, 48, 5, 250.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 5, 4988)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: a NAdam lr typed 3.0 for 3e-3 -------------------------------------------


@scenario(
    family="knarr_cargo_shift_relu_bce_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Knarr cargo-shift classifier (ReLU MLP on heel angle, swell period, stow pattern and "
    "load features, BCE on one logit, NAdam). The lr was typed 3.0 for 3e-3: the first large "
    "steps push most of fc2's ReLU units' pre-activations negative for every input, they stop passing "
    "gradient and the loss stays near chance.",
)
def h498_knarr_nadam_lr_typo(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4989)
        model = _Net(12, 48, 1)
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(49890)
        w = torch.randn(12, generator=g)

        def data():
            while True:
                x = torch.randn(64, 12, generator=gen)
                yield x, (x[:, 0] * x[:, 1] + 0.3 * torch.tanh(x @ w) > 0).float()

        batches = data()
        losses, _ = _train(
            ctx, model, opt, batches, 200, F.binary_cross_entropy_with_logits, attach=attach
        )
        x, _ = next(batches)
        with torch.no_grad():
            h1 = model.fc1(x)
            h2 = model.fc2(F.relu(h1))
        return losses, dead_fraction(h1), dead_fraction(h2)

    losses, d1, d2 = run(3.0, True)
    ref, r1, r2 = run(3e-3, False)
    ctx.check("over 80% of fc2's units dead", d2 > 0.8)
    ctx.check("under 20% dead at the intended lr", max(r1, r2) < 0.2)
    ctx.check("the loss stays near chance (last 20 over 0.6)", _mean(losses[-20:]) > 0.6)
    ctx.check("the intended-lr run learns (last 20 under 0.5)", _mean(ref[-20:]) < 0.5)
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: a hinge margin typed 1000 for 1.0 ---------------------------------


@scenario(
    family="tsampa_roast_grade_hinge_margin_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tsampa barley-roast grade classifier (ReLU MLP on kernel colour, crackle count and "
    "pan-temperature features, four grades, multi-class hinge loss, Adam). The hinge margin was "
    "typed 1000 for 1.0: every row stays inside the margin, the head keeps pushing the target "
    "logit up and the others down, and the logits grow step after step.",
)
def h498_tsampa_hinge_margin(ctx) -> None:
    gen = seeded(4990)
    model = _Net(12, 48, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 12, 4, 4990)
    peaks = []

    def loss_fn(out, y):
        peaks.append(float(out.detach().abs().max()))
        return F.multi_margin_loss(out, y, margin=1000.0)

    losses, _ = _train(ctx, model, opt, batches, 200, loss_fn, classifier=True)
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing (last over 1.2x the value 40 steps before)", peaks[-1] > 1.2 * peaks[-41]
    )
    ctx.check("finite", _finite(losses))


# -- 11. control: stochastic weight averaging from step 150 -----------------------------------------


@scenario(
    family="quinquereme_rowing_bank_swa_gelu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Quinquereme rowing-bank power regressor (GELU MLP on oar count, stroke rate, hull "
    "trim and wind features, MSE, SGD momentum with cosine annealing, then stochastic weight "
    "averaging from step 150: the lr jumps to a constant SWA rate of 0.02 and an average of the "
    "weights is kept with AveragedModel). Healthy.",
)
def h498_quinquereme_swa(ctx) -> None:
    from torch.optim.swa_utils import AveragedModel

    gen = seeded(4991)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=0.005)
    swa = AveragedModel(model)
    batches = _readings(gen, 64, 10, 4991)

    def before(step):
        if step == 150:
            for group in opt.param_groups:
                group["lr"] = 0.02  # the constant SWA rate

    def after(step, loss):
        if step < 150:
            cosine.step()
        else:
            swa.update_parameters(model)

    losses, _ = _train(ctx, model, opt, batches, 250, F.mse_loss, before=before, after=after)
    x, y = next(batches)
    with torch.no_grad():
        live = float(F.mse_loss(model(x), y))
        avg = float(F.mse_loss(swa(x), y))
    ctx.check("the loss fell and stayed finite", _fell(losses, ratio=0.5))
    ctx.check(
        "the SWA average fits (under 0.2x the start loss, within 5x the live weights)",
        avg < 0.2 * _mean(losses[:10]) and avg < 5 * live,
    )


# -- 12. control: Conv1d classifier in fp16 autocast with a GradScaler -------------------------------


class _GradeConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _tool_marks(gen, batch=32, length=64, classes=4):
    """Scraper-tap traces: a decaying tone whose frequency is the grade, plus noise."""
    t = torch.arange(length) / length
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 3.0 + 3.0 * y.float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * f * t + phase) * torch.exp(-2 * t)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="walrus_ivory_carving_grade_fp16_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Walrus-ivory carving grade classifier (ReLU Conv1d over scraper-tap traces, four "
    "grades, cross-entropy with label smoothing 0.1, RAdam, OneCycleLR, fp16 autocast with a "
    "GradScaler, clipping at 1). Healthy.",
)
def h498_walrus_ivory_fp16(ctx) -> None:
    gen = seeded(4992)
    model = _GradeConv()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _tool_marks(gen)
    losses = []
    for _step in range(200):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell and stayed finite", _fell(losses, ratio=0.6))


# -- 13. control: Gaussian-NLL net, two groups, ReduceLROnPlateau, accumulation 2 --------------------


class _GaussNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="ghee_churn_butterfat_gaussian_nll_net",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ghee-churn butterfat-yield net (SiLU MLP predicting a mean and a variance from cream "
    "temperature, churn speed and culture-age features, Gaussian NLL, Adagrad with the head in "
    "its own param group at half the rate, ReduceLROnPlateau, gradient accumulation 2). Healthy.",
)
def h498_ghee_churn_gauss_nll(ctx) -> None:
    gen = seeded(4993)
    model = _GaussNet()
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adagrad(
        [{"params": body}, {"params": model.head.parameters(), "lr": 0.02}], lr=0.04
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4993, noise=0.2),
        200,
        _gauss_nll,
        accumulate=2,
        after=lambda step, loss: plateau.step(loss),
    )
    ctx.check(
        "the NLL fell by over 0.5 nats and stayed finite",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
