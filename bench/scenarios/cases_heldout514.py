"""Held-out set 514 (``h514_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an azulejo tile glaze-crawl GELU classifier dividing its logits by a temperature typed
0.002 for 2.0 (RAdam); a gondolier's forcola oar-stroke hand-written Elman RNN whose recurrent
init gain is typed 3 (gradients grow back through time, SGD momentum); a cider keeving
chapeau-rise Huber regressor fed one shard in millimetres instead of metres (RMSprop); a bodhrán
tipper-roll decay SiLU regressor resumed after a preemption with the model restored but the
Adam state rebuilt from scratch at full lr (a one-off spike it recovers from, Adam); a scything
sward-cut Gaussian NLL net taking log of a stem-density reading that is 0 on one shard (NAdam);
a spoon-carving hook-knife grain regressor whose input-layer param group has its lr typed
5e-9 (Adagrad); a coracle paddle figure-eight BCE classifier whose curriculum loss weight is read
from the wrong row for one step (SGD Nesterov, clipped); a lime-kiln draw SiLU regressor with a
hand-written decoupled weight decay whose sign is flipped (slow climb, plain SGD); a sugar-beet
clamp heat ReLU regressor under fp16 autocast + GradScaler fed clamp pressure in pascals instead
of kilopascals (fp16 overflow, AdamW); a pelota fronton rebound ReLU regressor with Adamax lr
typed 0.5 for 0.005 (ReLUs die).

Controls: a playa mud-crack polygon U-Net segmenter (per-pixel cross-entropy over generated
16x16 shape masks, Adam, warm-up + cosine, checkpointed at step 120 and resumed with model,
optimizer and scheduler states all restored); a kulning herding-call GELU classifier (SGD
momentum, warm-up + cosine, label smoothing 0.1, clipping, noisy batches); a peat-bog burst SiLU
regressor (AdamW, fp16 autocast + GradScaler, two param groups, ReduceLROnPlateau, accumulation
2, clipping).
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
    scaler=None,
    amp=False,
):
    """The file's loop: ``alter(step, x, y)`` changes a batch, ``weight(step)`` multiplies the
    backpropagated loss, ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
    if scaler is not None:
        ctx.attach(model, opt, scaler=scaler)
    else:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
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
            loss = loss_fn(out.float(), y)
            w = weight(step) if weight is not None else 1.0
            scaled = w * loss / accumulate
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. softmax collapse: a temperature typed 0.002 for 2.0 ---------------------------------------


class _TempClassifier(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, hidden=64, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="azulejo_tile_glaze_crawl_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Azulejo tile glaze-crawl grade classifier (kiln and glaze readings, 6 grades, GELU "
    "MLP, cross-entropy, RAdam lr 1e-3). The logit temperature, meant to be 2.0 to soften an "
    "over-confident teacher, is typed 0.002: the head's logits are multiplied by 500 and the "
    "float32 softmax rounds most rows' target probability to exactly 1.0.",
)
def h514_azulejo_glaze_temperature_typo(ctx):
    gen = seeded(5141)
    model = _TempClassifier(20, 6, temperature=0.002)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 20, 6, seed=51411, spread=1.0)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over half the rows' target probability is exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check("logit range over 200", float(logits.abs().max()) > 200)
    ctx.check("losses finite", _finite(losses))


# -- 2. exploding gradients: an Elman RNN with recurrent gain typed 3 -----------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)


class _Elman(nn.Module):
    """A hand-written Elman RNN reading an oar-stroke trace frame by frame."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden)
        nn.init.orthogonal_(self.cell.hh.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hh.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell.ih(x[:, t]) + self.cell.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _stroke_traces(gen, batch, frames=24):
    """Forcola oar-lock load traces: a damped stroke oscillation; target the stroke power."""
    while True:
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        freq = 0.3 + 0.3 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(frames).float()[None]
        trace = amp * torch.sin(freq * t) * torch.exp(-0.05 * t)
        x = torch.stack([trace, 0.3 * torch.randn(batch, frames, generator=gen)], -1)
        yield x, (amp.squeeze(1) * freq.squeeze(1) * 3 - 1.2)


@scenario(
    family="gondola_oar_forcola_stroke_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="Gondolier's forcola oar-stroke power regressor, a hand-written Elman RNN (tanh, 32 "
    "units) over 24-frame oar-lock load traces, MSE, SGD momentum 0.9 lr 0.01, clipped at 1. "
    "The recurrent weight's orthogonal init gain is typed 3 instead of 1: the gradient "
    "reaching early frames grows back through time, hundreds of times the last frame's.",
)
def h514_forcola_elman_recurrent_gain_typo(ctx):
    gen = seeded(5142)
    model = _Elman(2, 32, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []

    def after(step):
        if model.states and model.states[0].grad is not None:
            first = float(model.states[0].grad.norm())
            last = float(model.states[-1].grad.norm())
            ratios.append(first / max(last, 1e-12))

    losses, norms = _loop(
        ctx, model, opt, _stroke_traces(gen, 32), 120, F.mse_loss, clip=1.0, after=after
    )
    ctx.check("dL/dh at the first frame over 30x the last (median)", _median(ratios) > 30)
    ctx.check("gradient norm over the clip (median)", _median(norms) > 1.0)
    ctx.check("losses finite", _finite(losses))


# -- 3. data outlier: one shard in millimetres -----------------------------------------------------


@scenario(
    family="cider_keeving_chapeau_rise_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Cider keeving chapeau-rise regressor (pectin, calcium, cellar temperature and must "
    "readings; ReLU MLP, Huber loss, RMSprop lr 1e-3, clipped at 5). At step 130 one shard "
    "logged by a new cellar probe reports the chapeau rise in millimetres instead of metres: "
    "that one batch's targets are 1000x too large, the loss bursts over 100x and the gradient "
    "(capped by the Huber slope) several times; the run recovers afterwards.",
)
def h514_keeving_chapeau_millimetre_shard(ctx):
    gen = seeded(5143)
    model = _Net(10, hidden=48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 130 else (x, y)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=51431),
        220,
        F.huber_loss,
        alter=alter,
        clip=5.0,
    )
    before = _median(losses[100:130])
    ctx.check("loss over 100x at the shard", losses[130] > 100 * before)
    ctx.check(
        "gradient over 5x the median at the shard (Huber caps it)",
        norms[130] > 5 * _median(norms[100:130]),
    )
    ctx.check("recovers within 3x afterwards", _mean(losses[-20:]) < 3 * before)


# -- 4. loss spike: resumed with the Adam state rebuilt from scratch -------------------------------


@scenario(
    family="bodhran_tipper_roll_decay_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Bodhrán tipper-roll decay regressor (skin tension, humidity, tipper weight and strike "
    "readings; SiLU MLP, MSE, Adam lr 1e-2 constant). After a preemption at step 150 the job "
    "restores the model but the resume script builds a fresh Adam (the optimizer state is not "
    "loaded) and goes straight back to the full lr with no warm-up: the first updates move "
    "every weight by about lr, the loss spikes once and the run recovers.",
)
def h514_bodhran_resume_fresh_adam(ctx):
    gen = seeded(5144)
    model = _Net(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def after(step):
        if step == 149:
            opt.state.clear()

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 12, seed=51441), 260, F.mse_loss, after=after
    )
    before = _median(losses[120:150])
    ctx.check("loss over 4x the median just after the resume", max(losses[150:155]) > 4 * before)
    ctx.check("recovers within 2x", _mean(losses[-20:]) < 2 * before)
    ctx.check("losses finite", _finite(losses))


# -- 5. nonfinite: log of a zero stem-density reading ----------------------------------------------


class _NLLNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.logvar = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(self.logfeat(x)))))
        return torch.cat([self.mean(h), self.logvar(h)], 1)


class _LogFeature(nn.Module):
    """Stem density enters as its log (no clamp)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _sward(gen, batch):
    g = torch.Generator().manual_seed(51451)
    w = torch.randn(7, generator=g)
    while True:
        density = torch.exp(0.5 * torch.randn(batch, 1, generator=gen))
        rest = torch.randn(batch, 7, generator=gen)
        y = 0.8 * torch.log(density).squeeze(1) + torch.tanh(rest @ w / 3)
        yield torch.cat([density, rest], 1), y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="scything_sward_cut_log_density_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=110,
    onset=110,
    heldout=True,
    note="Scything sward-cut yield net (stem density entered as its log, blade angle, dew, "
    "sward height...; ReLU MLP with a mean and a log-variance head, Gaussian NLL, NAdam lr "
    "2e-3). The log feature has no clamp; at step 110 a shard from a plot whose density counter "
    "was reset reads 0: log(0) = -inf in logfeat, the loss is NaN at step 110.",
)
def h514_scything_log_zero_density(ctx):
    gen = seeded(5145)
    model = _NLLNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:5, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, _sward(gen, 64), 200, _gauss_nll, alter=alter)
    ctx.check("loss finite before the shard", _finite(losses[:110]))
    ctx.check("loss non-finite at step 110", len(losses) == 111 and not math.isfinite(losses[110]))
    ctx.check("trained before it", _mean(losses[100:110]) < _mean(losses[:10]) - 0.3)


# -- 6. update ratio: the input layer's param group lr typed 5e-9 ---------------------------------


@scenario(
    family="spoon_carving_hook_knife_grain_group_typo_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Spoon-carving hook-knife grain-tear regressor (wood species, moisture, grain angle, "
    "edge bevel readings; ReLU MLP, MSE, Adagrad). Two param groups, both meant to run at lr "
    "5e-2 (the input layer fc1 and the rest); fc1's lr is typed 5e-9: its updates are under "
    "a millionth of its weights, it stays at its init while the upper layers train.",
)
def h514_spoon_carving_trunk_lr_typo(ctx):
    gen = seeded(5146)
    model = _Net(10, hidden=48)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 5e-9}, {"params": rest, "lr": 5e-2}]
    )
    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, seed=51461), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-6", _rel_change(model.fc1.weight, w0) < 1e-6)
    ctx.check("head moved over 1e-1", _rel_change(model.head.weight, h0) > 1e-1)
    ctx.check("the rest still trained", _fell(losses, ratio=0.9))


# -- 7. gradient spike: curriculum loss weight read from the wrong row -----------------------------


def _figure_eight(gen, batch, d_in=14, seed=51471):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, generator=gen)) > 0).float()
        yield x, y


@scenario(
    family="coracle_paddle_figure_eight_bce_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="Coracle paddle figure-eight stroke classifier (blade angle, wrist roll, hull yaw "
    "readings; is the stroke clean; ReLU MLP, BCE with logits, SGD Nesterov lr 0.05, clipped at "
    "2). The curriculum loss weight is looked up from the wrong row of the schedule table for "
    "step 140 (200 instead of 1): that step's gradient is about 200x the median; the logged "
    "loss is ordinary, the data are clean.",
)
def h514_coracle_curriculum_weight_row_bug(ctx):
    gen = seeded(5147)
    model = _Net(14, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses, norms = _loop(
        ctx,
        model,
        opt,
        _figure_eight(gen, 64),
        220,
        lambda out, y: F.binary_cross_entropy_with_logits(out, y),
        weight=lambda step: 200.0 if step == 140 else 1.0,
        clip=2.0,
    )
    ctx.check("gradient over 50x the median at step 140", norms[140] > 50 * _median(norms[110:140]))
    ctx.check("logged loss ordinary at step 140", losses[140] < 2 * _median(losses[110:140]))
    ctx.check("trained and finite", _fell(losses))


# -- 8. loss divergence: the decoupled weight decay's sign flipped ---------------------------------


@scenario(
    family="lime_kiln_burn_draw_decay_sign_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Lime-kiln draw-quality regressor (fuel ratio, stone size, draw interval, flue "
    "temperature; SiLU MLP, MSE, plain SGD lr 0.02). The hand-written decoupled weight decay "
    "does p += lr * wd * p (sign flipped; wd 0.25): the weights grow a little every step, the "
    "loss falls at first and then climbs slowly, with no burst and no NaN.",
)
def h514_lime_kiln_decay_sign_flip(ctx):
    gen = seeded(5148)
    model = _Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=0.02 * 0.25)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=51481), 300, F.mse_loss, after=after
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, 290, 10))
    ctx.check("loss over 2.5x its best at the end", _mean(losses[-10:]) > 2.5 * best)
    ctx.check("still climbing", _mean(losses[-30:]) > 1.3 * _mean(losses[-90:-60]))
    ctx.check("losses finite", _finite(losses))


# -- 9. amp overflow: clamp pressure in pascals under fp16 ----------------------------------------


def _clamp_readings(gen, batch, seed=51491):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="sugar_beet_clamp_heat_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    onset=100,
    heldout=True,
    note="Sugar-beet clamp heating regressor (clamp pressure, air temperature, beet moisture...; "
    "ReLU MLP, MSE, AdamW lr 2e-3, fp16 autocast + GradScaler). From step 100 a new logger "
    "reports the clamp pressure in pascals instead of kilopascals (x1000, feature ~ 1e5): fc1's "
    "fp16 output overflows to inf, the loss is non-finite at step 100; the same batch is finite "
    "in float32.",
)
def h514_beet_clamp_pascal_fp16(ctx):
    gen = seeded(5149)
    model = _Net(8, hidden=48)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= 100:
            x = x.clone()
            x[:, 0] = 101.3 * 1000.0 + 50.0 * x[:, 0] * 1000.0 / 10
            seen.setdefault("x", x)
        return x, y

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _clamp_readings(gen, 64),
        200,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.float16):
            h16 = model.fc1(seen["x"])
        f32 = model(seen["x"].float())
    ctx.check("fp16 fc1 output not finite", not bool(torch.isfinite(h16).all()))
    ctx.check("same batch finite in float32", bool(torch.isfinite(f32).all()))
    ctx.check("loss non-finite at step 100", len(losses) == 101 and not math.isfinite(losses[100]))
    ctx.check("finite and trained before", _finite(losses[:100]) and _fell(losses[:100]))


# -- 10. loss of plasticity: Adamax lr typed 0.5 for 0.005 -----------------------------------------


@scenario(
    family="pelota_fronton_rebound_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Pelota fronton rebound-distance regressor (ball speed, wall angle, cesta spin, "
    "humidity...; two-layer ReLU MLP, MSE, Adamax). The lr is typed 0.5 for 0.005: the first "
    "large updates push most of the second layer's ReLUs (act2) negative on every input; they "
    "stay dead and the net stalls near the target variance.",
)
def h514_pelota_adamax_lr_typo_dead_relus(ctx):
    gen = seeded(5150)
    model = _Net(12, hidden=64)
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    batches = _readings(gen, 64, 12, seed=51501)
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    x, y = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("over 60% of act2 units dead", dead > 0.6)
    ctx.check("stalls above 0.5x the target variance", _mean(losses[-20:]) > 0.5 * float(y.var()))
    ctx.check("losses finite", _finite(losses))


# -- control 1: a U-Net segmenter resumed cleanly from a checkpoint at step 120 -------------------


class _UNet(nn.Module):
    """A hand-written two-level U-Net for 16x16 single-channel maps, 3 classes per pixel."""

    def __init__(self, width=8, classes=3):
        super().__init__()
        self.enc1 = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.enc2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        d = self.dec(torch.cat([self.up(e2), e1], 1))
        return self.head(d)


def _crack_masks(gen, batch, size=16):
    """Generated mud-crack tiles: a bright disc (polygon plate, class 1) and a dark bar
    (crack, class 2) on a noisy background; the target is the per-pixel class."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        img = 0.3 * torch.randn(batch, 1, size, size, generator=gen)
        mask = torch.zeros(batch, size, size, dtype=torch.long)
        for i in range(batch):
            cy, cx = torch.randint(3, size - 3, (2,), generator=gen).tolist()
            r = 2 + int(torch.randint(0, 3, (1,), generator=gen))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            mask[i][disc] = 1
            img[i, 0][disc] += 1.0
            row = int(torch.randint(0, size - 2, (1,), generator=gen))
            bar = (yy >= row) & (yy < row + 2) & ~disc
            mask[i][bar] = 2
            img[i, 0][bar] -= 1.0
        yield img, mask


@scenario(
    family="playa_mud_crack_polygon_unet_segmenter",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Playa mud-crack polygon segmenter: a hand-written two-level U-Net (skip connection, "
    "transposed-conv upsampling) over generated 16x16 tiles with plate and crack masks, "
    "per-pixel cross-entropy, Adam lr 3e-3 with a linear warm-up and cosine decay (LambdaLR). "
    "At step 120 the job checkpoints and resumes: model, optimizer and scheduler state dicts "
    "are saved and loaded back (a clean resume); training goes on smoothly to step 200.",
)
def h514_playa_unet_clean_resume(ctx):
    gen = seeded(5151)
    model = _UNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    restored = {}

    def after(step):
        if step == 119:
            buf = io.BytesIO()
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "step": step + 1,
                },
                buf,
            )
            lr_before = opt.param_groups[0]["lr"]
            buf.seek(0)
            ckpt = torch.load(buf, weights_only=False)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            restored["lr"] = (lr_before, opt.param_groups[0]["lr"])
            restored["state"] = len(opt.state) == len(list(model.parameters()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _crack_masks(gen, 16),
        total,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        after=after,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("losses finite", _finite(losses))
    ctx.check(
        "optimizer and lr restored",
        restored.get("state", False) and restored["lr"][0] == restored["lr"][1],
    )
    ctx.check("no jump after the resume", max(losses[120:125]) < 1.5 * _mean(losses[110:120]))


# -- control 2: a GELU classifier with warm-up + cosine, label smoothing, clipping -----------------


@scenario(
    family="kulning_herding_call_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kulning herding-call classifier (pitch, vibrato, breath and echo features; which of 5 "
    "calls; GELU MLP, cross-entropy with label smoothing 0.1, SGD momentum 0.9 lr 0.05 with a "
    "linear warm-up and cosine decay, clipping at 1, noisy batches). A control.",
)
def h514_kulning_call_control(ctx):
    gen = seeded(5152)
    model = _Net(16, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    total = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 25) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 48, 16, 5, seed=51521, spread=1.6),
        total,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("losses finite", _finite(losses))


# -- control 3: fp16 autocast + GradScaler, param groups, plateau, accumulation ------------------


@scenario(
    family="peat_bog_burst_fp16_silu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Peat-bog burst risk regressor (rainfall, slope, peat depth, water table; SiLU MLP, "
    "MSE, AdamW with two param groups: head at lr 2e-3 and no weight decay, body at 2e-3 with "
    "wd 1e-2; fp16 autocast + GradScaler, ReduceLROnPlateau, accumulation 2, clipping at 1). "
    "A control.",
)
def h514_peat_bog_fp16_control(ctx):
    gen = seeded(5153)
    model = _Net(10, hidden=64, act=nn.SiLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW(
        [
            {"params": body, "lr": 2e-3, "weight_decay": 1e-2},
            {"params": model.head.parameters(), "lr": 2e-3, "weight_decay": 0.0},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=51531, noise=0.1),
        180,
        F.mse_loss,
        clip=1.0,
        plateau=plateau,
        accumulate=2,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("losses finite", _finite(losses))
