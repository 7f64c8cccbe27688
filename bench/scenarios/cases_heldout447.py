"""Held-out set 447 (``h447_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a sheepdog whistle-command Elman RNN whose recurrent weights are initialised with gain 3
typed for 1 (gradients grow back through time), a cheese-rolling chase-speed regressor whose
manual loss scaling is not undone on the first step after a resume (Adam's second moment is
filled and the updates stall), a sugarbush sap-volume Huber regressor fed one shard logged in
millilitres for litres (one corrupted batch), a bonsai soil-moisture regressor whose log feature
meets a disconnected probe reading 0 (log 0), a kendama lighthouse-hold classifier whose backbone
group's unfreeze step is typed 5000 for 50 (a frozen backbone), a cuckoo-clock call cosine
classifier whose scale is typed 300 for 30 (softmax saturates), a sandcastle moat seep-rate
regressor whose cached labels are rescaled in place on every fetch (a drifting target), a hurling
sliotar strike-distance regressor with a leftover loss-weight override of 1000 for one step (one
gradient burst), a glassblower punty spin-rate regressor whose warm-up peak lr is typed 1.0 for
0.1 (past the stability limit) and a beekeeper frame-cap classifier trained at lr 0.8 typed for
0.08 (ReLU units die).

Controls: a calligraphy brush-stroke siamese encoder trained with a contrastive margin loss on
generated pairs (Adam, StepLR, clipping), an ice-climbing route-grade classifier trained with a
curriculum that switches to harder routes at step 100 (RAdam, clipping, label smoothing) and a
didgeridoo overtone fp16 Conv1d classifier (GradScaler, AdamW under OneCycleLR, accumulation
over 2).
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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    weight=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's loop. ``alter(step, x, y)`` changes a batch, ``weight(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
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
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            total = weight(step, loss) if weight is not None else loss
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


def _gauges(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised gauge readings and a smooth nonlinear target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, offset + scale * (y + noise * torch.randn(batch, generator=gen))


def _kinds(gen, batch, d_in, classes, seed, spread=1.0, sep=1.2):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = sep * torch.randn(classes, d_in, generator=g)
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


# -- models ----------------------------------------------------------------------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.wx = nn.Linear(d_in, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.wx(x) + self.wh(h))


class _WhistleRNN(nn.Module):
    """Reads a whistle's pitch trace step by step, regresses the command from the last state."""

    def __init__(self, d_in=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.wh.weight, gain=gain)

    def forward(self, x, keep=None):
        h = x.new_zeros(x.shape[0], self.cell.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


def _whistles(gen, batch, steps=30):
    t = torch.arange(steps).float()
    while True:
        cmd = torch.rand(batch, generator=gen)
        pitch = torch.sin((0.2 + 0.4 * cmd[:, None]) * t) + 0.1 * torch.randn(
            batch, steps, generator=gen
        )
        loud = torch.exp(-0.1 * t)[None].expand(batch, steps)
        x = torch.stack([pitch, loud, 0.3 * torch.randn(batch, steps, generator=gen)], -1)
        yield x, 2 * cmd - 1


class _LogFeature(nn.Module):
    """Log-transforms the positive readings (moisture, conductivity, light, weight)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :4]), x[:, 4:]], 1)


class _Bonsai(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logfeat(x)))).squeeze(-1)


def _pots(gen, batch):
    while True:
        pos = torch.exp(0.5 * torch.randn(batch, 4, generator=gen))
        rest = torch.randn(batch, 4, generator=gen)
        y = 0.8 * torch.log(pos[:, 0]) - 0.4 * torch.log(pos[:, 1]) + 0.3 * torch.tanh(rest[:, 0])
        yield torch.cat([pos, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)


class _CosineHead(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d_in) / math.sqrt(d_in))
        self.scale = scale

    def cosines(self, f):
        return F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, f):
        return self.scale * self.cosines(f)


class _Cuckoo(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.GELU()
        self.head = _CosineHead(64, classes, scale)

    def features(self, x):
        return self.act(self.fc1(x))

    def forward(self, x):
        return self.head(self.features(x))


class _Siamese(nn.Module):
    def __init__(self, d_in=16, code=8):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, code)
        )

    def forward(self, pair):
        return self.encoder(pair[:, 0]), self.encoder(pair[:, 1])


def _stroke_pairs(gen, batch, d_in=16, brushes=8, seed=0):
    """Pairs of brush-stroke readings: same brush (label 1) or different brushes (label 0)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(brushes, d_in, generator=g)
    while True:
        a = torch.randint(0, brushes, (batch,), generator=gen)
        same = torch.rand(batch, generator=gen) < 0.5
        b = torch.where(same, a, (a + torch.randint(1, brushes, (batch,), generator=gen)) % brushes)
        xa = protos[a] + 0.6 * torch.randn(batch, d_in, generator=gen)
        xb = protos[b] + 0.6 * torch.randn(batch, d_in, generator=gen)
        yield torch.stack([xa, xb], 1), (a == b).float()


def _contrastive(out, y, margin=2.0):
    za, zb = out
    d = (za - zb).pow(2).sum(-1).add(1e-9).sqrt()
    return (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2)).mean()


class _Drone(nn.Module):
    def __init__(self, channels=2, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        return self.head(F.relu(self.conv2(x)).mean(-1))


def _drones(gen, batch, classes=5, length=64):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.1 + 0.08 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = 0.3 * torch.randn(batch, 2, length, generator=gen)
        x[:, 0] += torch.sin(f[:, None] * t + phase)
        x[:, 1] += 0.5 * torch.sin(2 * f[:, None] * t + phase)
        yield x, y


def _dead_fraction(h: torch.Tensor) -> float:
    return float(((h > 0).sum(0) == 0).float().mean())


# -- faults ----------------------------------------------------------------------------------------


WHISTLE_GAIN = 3.0


@scenario(
    family="sheepdog_whistle_command_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell.wh",),
    diverges=None,
    heldout=True,
    note="Sheepdog whistle-command regressor (hand-written tanh Elman cell over 30 pitch "
    "readings, MSE on the last state, SGD momentum 0.9). The config's recurrent_gain is typed "
    "3.0 for 1.0, so the recurrent weights cell.wh start orthogonal times 3: the cell runs in "
    "tanh's chaotic regime and the gradient grows step by step back through time, the first "
    "state's gradient many times the last state's.",
)
def h447_sheepdog_whistle_recurrent_gain(ctx) -> None:
    def build(gain):
        torch.manual_seed(4471)
        return _WhistleRNN(gain=gain)

    def through_time(m, x, y):
        keep = []
        m.zero_grad()
        F.mse_loss(m(x, keep), y).backward()
        g = [float(h.grad.norm()) for h in keep]
        m.zero_grad()
        return g[0] / max(g[-1], 1e-12)

    gen = seeded(4471)
    batches = _whistles(gen, 32)
    probe = next(batches)
    growth_bad = through_time(build(WHISTLE_GAIN), *probe)
    growth_ok = through_time(build(1.0), *probe)
    model = build(WHISTLE_GAIN)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _train(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("first state's gradient over 20x the last state's", growth_bad > 20)
    ctx.check("under 5x with gain 1 on the same batch", growth_ok < 5)
    ctx.check("finite throughout", _finite(ctx.losses))


CHEESE_SCALE = 2.0**16
CHEESE_RESUME = 60


@scenario(
    family="cheese_rolling_chase_speed_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="Cheese-rolling chase-speed regressor (SiLU MLP on slope and runner features, MSE, "
    "Adam). The loop scales the loss by 2^16 and divides the gradients back before the step; on "
    "the first step after a resume (step 60) the unscale hook is not re-registered, so one "
    "gradient 65536x too large reaches Adam: its second moment is filled, the step throws the "
    "weights off and afterwards the updates per unit gradient are over 10x smaller, so the "
    "loss stays stalled well above where a clean run gets.",
    onset=CHEESE_RESUME,
)
def h447_cheese_rolling_unscaled_resume(ctx) -> None:
    def run(attach):
        torch.manual_seed(4472)
        model = _Net(10, 48, 1, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(4472)
        stats = {}

        def weight(step, loss):
            return loss * CHEESE_SCALE

        def after(step):
            if step == CHEESE_RESUME - 1:
                stats["v_before"] = sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values())
                stats["w_pre"] = _snapshot(model)
            if step == CHEESE_RESUME:
                stats["v_after"] = sum(float(s["exp_avg_sq"].sum()) for s in opt.state.values())
            if step == CHEESE_RESUME + 70:
                stats["w_mid"] = _snapshot(model)
            if step == CHEESE_RESUME + 100:
                stats["w_end"] = _snapshot(model)
            if step == CHEESE_RESUME - 31:
                stats["w_early"] = _snapshot(model)

        def unscale(step):
            def hook(grad):
                return grad if (attach and step == CHEESE_RESUME) else grad / CHEESE_SCALE

            return hook

        handles = []

        def alter(step, x, y):
            for h in handles:
                h.remove()
            handles.clear()
            handles.extend(p.register_hook(unscale(step)) for p in model.parameters())
            return x, y

        losses = _train(
            ctx if attach else None,
            model,
            opt,
            _gauges(gen, 64, 10, seed=472),
            220,
            F.mse_loss,
            alter=alter,
            weight=weight,
            after=after,
            attach=attach,
        )
        return losses, stats, model

    ref, _, _ = run(False)
    ls, st, model = run(True)

    def moved(a, b):
        return math.sqrt(sum(float((st[b][n] - st[a][n]).norm() ** 2) for n in st[a]))

    g = ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "gradient at the resume over 1e4x the median before",
        g[CHEESE_RESUME] > 1e4 * _median(g[:CHEESE_RESUME]),
    )
    ctx.check("second moment over 1e4x after the step", st["v_after"] > 1e4 * st["v_before"])
    per_grad_before = moved("w_early", "w_pre") / _mean(g[30:60])
    per_grad_after = moved("w_mid", "w_end") / _mean(g[131:161])
    ctx.check(
        "weight movement per unit gradient over steps 130-160 under 1/10 of steps 29-59",
        per_grad_after < 0.1 * per_grad_before,
    )
    ctx.check(
        "loss over the last 20 over 1.5x the clean run's", _mean(ls[-20:]) > 1.5 * _mean(ref[-20:])
    )


SAP_SHARD = 120


@scenario(
    family="sugarbush_bucket_sap_volume_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="Sugarbush bucket sap-volume regressor (ReLU MLP on night frost, day thaw and tree "
    "features, Huber loss, Adagrad, clipping at 5). One shard at step 120 was logged in "
    "millilitres instead of litres, so that one batch's targets are 1000x too large: the loss "
    "jumps by orders of magnitude for that step and the run recovers.",
    onset=SAP_SHARD,
)
def h447_sugarbush_millilitre_shard(ctx) -> None:
    gen = seeded(4473)
    model = _Net(9, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == SAP_SHARD else (x, y)

    batches = _gauges(gen, 64, 9, seed=473, scale=1.0, offset=2.5)
    _train(ctx, model, opt, batches, 220, nn.HuberLoss(), alter=alter, clip=5.0)
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(ls[SAP_SHARD - 30 : SAP_SHARD])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss at the shard over 50x the median before", ls[SAP_SHARD] > 50 * base)
    ctx.check(
        "gradient at the shard over 5x the median before",
        g[SAP_SHARD] > 5 * _median(g[SAP_SHARD - 30 : SAP_SHARD]),
    )
    ctx.check("back under 2x within 40 steps", min(ls[SAP_SHARD + 1 : SAP_SHARD + 40]) < 2 * base)


BONSAI_DRY = 80


@scenario(
    family="bonsai_soil_moisture_log_feature_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logfeat",),
    diverges=BONSAI_DRY,
    heldout=True,
    note="Bonsai soil-moisture regressor (log of four positive probe readings, SiLU MLP, MSE, "
    "RMSprop). At step 80 one pot's probe is disconnected and reads 0.0; the log feature has no "
    "clamp, log 0 = -inf reaches fc1 and the loss is non-finite at that step.",
    onset=BONSAI_DRY,
)
def h447_bonsai_disconnected_probe(ctx) -> None:
    gen = seeded(4474)
    model = _Bonsai()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == BONSAI_DRY:
            x = x.clone()
            x[5, 0] = 0.0
            seen["feat"] = model.logfeat(x)
        return x, y

    _train(ctx, model, opt, _pots(gen, 64), 150, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the dry reading", _finite(ls[:BONSAI_DRY]))
    ctx.check("loss non-finite at the dry reading", not math.isfinite(ls[BONSAI_DRY]))
    ctx.check("the log feature holds -inf there", bool(torch.isinf(seen["feat"]).any()))
    ctx.check(
        "the loss fell before it", _mean(ls[BONSAI_DRY - 10 : BONSAI_DRY]) < 0.7 * _mean(ls[:10])
    )


KENDAMA_UNFREEZE = 5000  # typed for 50


@scenario(
    family="kendama_lighthouse_hold_two_group_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Kendama lighthouse-hold outcome classifier (two-group ReLU MLP on ken and tama motion "
    "features, cross-entropy, NAdam). The backbone group (fc1, fc2) is meant to stay frozen for "
    "a 50-step head warm-up through a LambdaLR factor min(1, step // unfreeze), but unfreeze is "
    "typed 5000 for 50: the backbone's lr stays 0 for the whole run and only the head learns.",
)
def h447_kendama_unfreeze_typo(ctx) -> None:
    gen = seeded(4475)
    model = _Net(12, 64, 4)
    backbone = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [{"params": backbone, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1, s // KENDAMA_UNFREEZE), lambda s: 1.0]
    )
    start = _snapshot(model)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, seed=475, spread=1.6),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    mv = {n: _rel_change(start[n], p) for n, p in model.named_parameters()}
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("fc1 and fc2 weights move under 1e-7", max(mv["fc1.weight"], mv["fc2.weight"]) < 1e-7)
    ctx.check("the head's weight moves over 5%", mv["head.weight"] > 0.05)
    ctx.check("gradients reach the model (median norm over 1e-4)", _median(ctx.grad_norms) > 1e-4)


CUCKOO_SCALE = 300.0  # typed for 30


@scenario(
    family="cuckoo_clock_call_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cuckoo-clock call classifier (GELU layer, cosine head, cross-entropy, Adamax) sorting "
    "bellows recordings into 6 call kinds. The cosine head's scale is typed 300 for 30: every "
    "logit gap is 10x too wide, so most rows' softmax rounds to exactly 1.0 on one class and "
    "0.0 on the others from the first step on.",
)
def h447_cuckoo_cosine_scale(ctx) -> None:
    gen = seeded(4476)
    model = _Cuckoo(14, 6, CUCKOO_SCALE)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _kinds(gen, 64, 14, 6, seed=476, spread=1.4)
    probe_x, _ = next(batches)
    _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        cos = model.head.cosines(model.features(probe_x))
        p_bad = torch.softmax(CUCKOO_SCALE * cos, -1).max(-1).values
        p_ok = torch.softmax(30.0 * cos, -1).max(-1).values
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "over half the rows' top probability exactly 1.0",
        float((p_bad == 1.0).float().mean()) > 0.5,
    )
    ctx.check(
        "under 5% at scale 30 on the same cosines", float((p_ok == 1.0).float().mean()) < 0.05
    )


@scenario(
    family="sandcastle_moat_seep_rate_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sandcastle moat seep-rate regressor (tanh MLP on sand grain, tide and wall features, "
    "MSE, AdamW with weight decay 0.01). The loader caches the labels and its preprocessing "
    "rescales them in place (labels *= 1.012) on every fetch instead of on a copy: the target "
    "drifts upward step after step and the loss climbs slowly through the run, no spike, no "
    "NaN, no single bad step.",
)
def h447_sandcastle_inplace_label_drift(ctx) -> None:
    gen = seeded(4477)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(477)
    xs = torch.randn(1024, 8, generator=g)
    w = torch.randn(8, generator=g)
    cache = {"y": torch.tanh(xs @ w / math.sqrt(8)) + 0.3 * torch.sin(2 * xs[:, 1])}
    start = float(cache["y"].abs().mean())

    def batches():
        while True:
            idx = torch.randint(0, 1024, (64,), generator=gen)
            cache["y"] *= 1.012
            yield xs[idx], cache["y"][idx]

    _train(ctx, model, opt, batches(), 300, F.mse_loss)
    ls = ctx.losses
    low = min(ls)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the labels' scale over 10x its start", float(cache["y"].abs().mean()) > 10 * start)
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check("the lowest loss comes in the first half", ls.index(low) < 150)
    ctx.check("climbing through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[150:170]))


HURLING_STEP = 100


@scenario(
    family="hurling_sliotar_strike_distance_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Hurling sliotar strike-distance regressor (ReLU MLP on swing and hurley features, MSE, "
    "plain SGD, clipping at 1). A leftover debug entry in the loss-weight table sets the weight "
    "to 1000 for step 100 only: one backward pass carries a gradient about 1000x the usual on an "
    "ordinary batch and an ordinary logged loss; clipping bounds the update and the run goes on.",
    onset=HURLING_STEP,
)
def h447_hurling_loss_weight_override(ctx) -> None:
    gen = seeded(4478)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = {HURLING_STEP: 1000.0}

    def weight(step, loss):
        return weights.get(step, 1.0) * loss

    _train(
        ctx, model, opt, _gauges(gen, 64, 10, seed=478), 200, F.mse_loss, weight=weight, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    before_l = _median(ls[HURLING_STEP - 30 : HURLING_STEP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "gradient at step 100 over 100x the median before",
        g[HURLING_STEP] > 100 * _median(g[HURLING_STEP - 30 : HURLING_STEP]),
    )
    ctx.check("the logged loss there is ordinary (under 2x)", ls[HURLING_STEP] < 2 * before_l)
    ctx.check("the run goes on: last 20 under 1.5x before", _mean(ls[-20:]) < 1.5 * before_l)


PUNTY_PEAK = 1.0  # typed for 0.1
PUNTY_WARMUP = 100
PUNTY_ONSET = 16


def _hessian_top(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="glassblower_punty_spin_rate_regressor",
    optimizer="SGD Nesterov",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Glassblower punty spin-rate regressor (tanh MLP on gather mass, glass temperature and "
    "pipe features, MSE, SGD with Nesterov momentum 0.9). The linear warm-up's peak lr is typed "
    "1.0 for 0.1: at step 16 lr x sharpness crosses Nesterov's stability limit 2(1+m)/(1+2m), "
    "the loss starts to oscillate around step 21 and blows up from step 24, during the warm-up.",
    onset=PUNTY_ONSET,
)
def h447_glassblower_warmup_peak(ctx) -> None:
    def run(peak, attach):
        torch.manual_seed(4479)
        model = _Net(10, 48, 1, act=nn.Tanh)
        opt = torch.optim.SGD(
            model.parameters(), lr=peak / PUNTY_WARMUP, momentum=0.9, nesterov=True
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s + 1, PUNTY_WARMUP) / 1.0)
        gen = torch.Generator().manual_seed(4479)
        batches = _gauges(gen, 64, 10, seed=479)
        probe = next(batches)
        sharp = {}

        def after(step):
            if step == PUNTY_ONSET:
                sharp["lam"] = _hessian_top(model, *probe)
                sharp["lr"] = opt.param_groups[0]["lr"]

        losses = _train(
            ctx if attach else None,
            model,
            opt,
            batches,
            160,
            F.mse_loss,
            sched=sched,
            after=after,
            attach=attach,
        )
        return losses, sharp

    ref, _ = run(0.1, False)
    ls, sh = run(PUNTY_PEAK, True)
    ok = [v for v in ls if math.isfinite(v)]
    low = min(ok)
    ctx.check(
        "the 0.1 run trains and stays finite",
        _finite(ref) and _mean(ref[-10:]) < 0.5 * _mean(ref[:10]),
    )
    ctx.check(
        "finite and falling before the onset",
        _finite(ls[:PUNTY_ONSET]) and min(ls[:PUNTY_ONSET]) < 0.7 * ls[0],
    )
    ctx.check(
        "lr x sharpness over the Nesterov limit 2(1+m)/(1+2m) at the onset",
        "lam" in sh and sh["lr"] * sh["lam"] > 2 * 1.9 / 2.8,
    )
    ctx.check("the loss blows up past 100x its lowest", (not _finite(ls)) or max(ls) > 100 * low)


BEE_LR = 0.8  # typed for 0.08


@scenario(
    family="beekeeper_frame_cap_grade_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Beekeeper frame capping-grade classifier (two-layer ReLU MLP on comb weight, capping "
    "and brood features, cross-entropy, SGD momentum 0.9). The lr is typed 0.8 for 0.08: the "
    "first large updates push most of the second hidden layer's ReLU units (fc2/act2) below "
    "zero on every input, those units never fire again and the loss stalls far above a run at 0.08, without blowing up.",
)
def h447_beekeeper_lr_typo_dead_units(ctx) -> None:
    def run(lr, attach):
        torch.manual_seed(4480)
        model = _Net(12, 64, 5)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        gen = torch.Generator().manual_seed(4480)
        batches = _kinds(gen, 64, 12, 5, seed=480, spread=1.5)
        probe = torch.cat([next(batches)[0] for _ in range(8)])
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            dead0 = (_dead_fraction(h1), _dead_fraction(model.act2(model.fc2(h1))))
        losses = _train(
            ctx if attach else None,
            model,
            opt,
            batches,
            200,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            dead1 = (_dead_fraction(h1), _dead_fraction(model.act2(model.fc2(h1))))
        return losses, dead0, dead1

    ref, _, ref_dead = run(0.08, False)
    ls, d0, d1 = run(BEE_LR, True)
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 20% of the hidden units dead at the start", max(d0) < 0.2)
    ctx.check("over 60% of the second layer's units (act2) dead at the end", d1[1] > 0.6)
    ctx.check("the 0.08 run keeps most units (under 30% dead)", max(ref_dead) < 0.3)
    ctx.check(
        "loss over the last 20 over 2x the 0.08 run's", _mean(ls[-20:]) > 2 * _mean(ref[-20:])
    )


# -- healthy controls ----------------------------------------------------------------------------


@scenario(
    family="calligraphy_brush_stroke_siamese_encoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Calligraphy brush-stroke siamese encoder (one shared ReLU MLP encoder applied to both "
    "strokes of a generated pair, contrastive margin loss: squared distance for same-brush pairs, "
    "squared hinge on margin 2 for different brushes; Adam under StepLR, clipping at 1). A "
    "healthy control.",
)
def h447_calligraphy_siamese_control(ctx) -> None:
    gen = seeded(4481)
    model = _Siamese()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    batches = _stroke_pairs(gen, 64, seed=481)
    _train(ctx, model, opt, batches, 200, _contrastive, clip=1.0, sched=sched)
    pair, y = next(batches)
    with torch.no_grad():
        za, zb = model(pair)
        d = (za - zb).norm(dim=-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over half", _mean(ls[-20:]) < 0.5 * _mean(ls[:10]))
    ctx.check(
        "same-brush pairs closer than different ones",
        float(d[y == 1].mean()) < 0.5 * float(d[y == 0].mean()),
    )


CLIMB_SWITCH = 100


@scenario(
    family="ice_climbing_route_grade_curriculum_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-climbing route-grade classifier (GELU MLP on ice thickness, angle and temperature "
    "features, cross-entropy with label smoothing 0.05, RAdam, clipping at 1) trained with a "
    "curriculum: easy, well-separated routes for 100 steps, then a fixed switch to hard, "
    "overlapping ones. The loss jumps at the switch and falls again. A healthy control.",
)
def h447_ice_climbing_curriculum_control(ctx) -> None:
    gen = seeded(4482)
    model = _Net(10, 64, 5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    easy = _kinds(gen, 64, 10, 5, seed=482, spread=0.5, sep=1.2)
    hard = _kinds(gen, 64, 10, 5, seed=482, spread=1.8, sep=1.2)

    def alter(step, x, y):
        return next(hard) if step >= CLIMB_SWITCH else (x, y)

    _train(
        ctx,
        model,
        opt,
        easy,
        240,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    pre = _mean(ls[CLIMB_SWITCH - 10 : CLIMB_SWITCH])
    jump = _mean(ls[CLIMB_SWITCH : CLIMB_SWITCH + 5])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the easy phase trained", pre < 0.5 * _mean(ls[:10]))
    ctx.check("the loss jumps at the switch (over 1.5x)", jump > 1.5 * pre)
    ctx.check("and falls again (last 20 under 0.8x the jump)", _mean(ls[-20:]) < 0.8 * jump)


@scenario(
    family="didgeridoo_overtone_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Didgeridoo overtone classifier (ReLU Conv1d on drone and overtone traces, 5 drone "
    "pitches, cross-entropy with label smoothing 0.1), fp16 autocast with a GradScaler, AdamW "
    "under OneCycleLR, accumulation over 2 micro-batches, clipping at 1. A healthy control.",
)
def h447_didgeridoo_fp16_control(ctx) -> None:
    gen = seeded(4483)
    model = _Drone()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _train(
        ctx,
        model,
        opt,
        _drones(gen, 32),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 40%", _mean(ls[-15:]) < 0.6 * _mean(ls[:10]))
    ctx.check("the scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales))
