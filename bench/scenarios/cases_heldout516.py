"""Held-out set 516 (``h516_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a Tyrolean-traverse haul-call attention classifier trained with AdamW whose weight decay
is typed 0 and lr typed 10x, no QK-norm (attention logits grow); a qanat-shaft draught regressor
trained full-batch with a warm-up peak lr typed 10x (past 2/sharpness, SGD); a camel-race robot
jockey whip-force regressor whose resume path sums the loss instead of averaging it for one step
(SGD Nesterov); a maple-taffy snow-set regressor whose second layer's bias is filled with -3
(ReLUs die, NAdam); a lute gut-fret tie regressor whose first-layer param group has its lr typed
1e-9 (RMSprop); an ice-auger refreeze net taking log of a hole diameter that a frozen gauge
reports as 0 (log 0, Adam); a smokejumper let-down rope regressor under fp16 autocast fed rope
load in pascals instead of kilopascals (AdamW); a travertine rimstone pool-depth Huber regressor
fed one shard in millimetres (Adamax); a talking-drum tone register classifier dividing logits by
a temperature typed 0.002 (RAdam); a Tuvan sygyt whistle hand-written Elman RNN with a recurrent
gain typed 3 (SGD momentum).

Controls: an Aldis-lamp signal reversal seq2seq with Bahdanau additive attention (Adam, label
smoothing, clipping); a horse-logging skid-load classifier whose dropout is raised from 0.1 to
0.5 at step 100 (AdamW, cosine); a kite-fishing line-drop Huber regressor (Adagrad, two param
groups, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

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
    plateau=None,
    accumulate=1,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, out, y, loss)``
    gives the loss actually backpropagated, ``after(step, loss)`` after the optimizer step.
    Stops after a non-finite loss once ``ctx.step`` has seen it."""
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
            if classifier:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. attention logit growth: AdamW weight decay typed 0, lr typed 10x, no QK-norm --------------


class _HaulAttention(nn.Module):
    """Single-head dot-product self-attention; keeps its last logits q.k/sqrt(d)."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.logits = None

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.logits = logits.detach()
        return self.out(torch.softmax(logits, -1) @ v)


class _HaulCallNet(nn.Module):
    def __init__(self, vocab=12, dim=32, length=12, classes=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = _HaulAttention(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = x + self.attn(x)
        return self.head(self.norm(x).mean(1))


def _haul_calls(gen, batch, length=12, classes=8):
    """Rope-team call sequences: tokens 2.. are call words, token 1 marks the haul command and
    the label is the word right after it."""
    while True:
        x = torch.randint(2, 2 + classes, (batch, length), generator=gen)
        pos = torch.randint(0, length - 1, (batch,), generator=gen)
        x[torch.arange(batch), pos] = 1
        y = x[torch.arange(batch), pos + 1] - 2
        yield x, y


@scenario(
    family="tyrolean_traverse_haul_qk_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Tyrolean-traverse haul-call classifier (token + position embeddings, one hand-written "
    "dot-product self-attention layer, mean pool, 8 call words, cross-entropy). The config has "
    "AdamW weight_decay typed 0.0 for 0.1 and lr typed 1e-2 for 1e-3, and the layer has no "
    "QK-norm: to pin the word after the haul marker the q and k projections keep growing and "
    "the attention logits q.k/sqrt(d) grow many times over.",
)
def h516_tyrolean_haul_attention_logits(ctx):
    gen = seeded(5161)
    model = _HaulCallNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(_haul_calls(torch.Generator().manual_seed(7), 256))[0]
    with torch.no_grad():
        model(probe)
    first = float(model.attn.logits.abs().max())
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            model(probe)
        peaks.append(float(model.attn.logits.abs().max()))

    losses, _ = _train(
        ctx, model, opt, _haul_calls(gen, 64), 250, F.cross_entropy, classifier=True, after=after
    )
    ctx.check("attention logits grew over 20x", peaks[-1] > 20 * first)
    ctx.check("max attention logit over 30", peaks[-1] > 30)
    ctx.check("still growing over the last 100 steps", peaks[-1] > 1.2 * peaks[150])
    ctx.check("finite", _finite(losses))


# -- 2. sharpness above limit: full-batch warm-up peak typed 10x ---------------------------------

QANAT_PEAK = 0.8
QANAT_WARM = 40


@scenario(
    family="qanat_shaft_draught_full_batch_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=12,
    note="Qanat-shaft draught regressor (tanh MLP on shaft depth, spacing, tunnel slope, "
    "outside temperature, wind and humidity; full-batch plain SGD on 256 surveyed shafts, MSE). "
    "The linear warm-up over 40 steps ends at a peak lr typed 0.8 for 0.08: around step 12 the "
    "lr passes 2/sharpness (the top Hessian eigenvalue, measured by power iteration) and the "
    "loss blows up.",
)
def h516_qanat_draught_warmup_peak_typo(ctx):
    gen = seeded(5162)
    model = _Net(6, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = next(_readings(gen, 256, 6, 51620))
    params = list(model.parameters())
    ratios = {}

    def sharpness():
        loss = F.mse_loss(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(15):
            nv = math.sqrt(sum(float((t * t).sum()) for t in v))
            v = [t / nv for t in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [t.detach() for t in hv]
        return lam

    def before(step):
        lr = QANAT_PEAK * min(1.0, (step + 1) / QANAT_WARM)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 4 == 0 and step <= 40:
            ratios[step] = lr * sharpness()

    def batches():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 120, F.mse_loss, before=before)
    crossed = [s for s, r in sorted(ratios.items()) if r > 2]
    best = min(v for v in losses if math.isfinite(v))
    ctx.check("lr * sharpness passed 2", bool(crossed))
    ctx.check("crossed near the onset", bool(crossed) and 8 <= crossed[0] <= 16)
    ctx.check("trained before the crossing", losses[8] < losses[0])
    ctx.check(
        "loss blew up over 10x its best",
        (not _finite(losses)) or max(losses[12:]) > 10 * best,
    )


# -- 3. gradient spike: the resume path sums the loss instead of averaging for one step --------

CAMEL_ONSET = 130


@scenario(
    family="camel_race_robot_jockey_whip_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CAMEL_ONSET,
    note="Camel-race robot-jockey whip-force regressor (ReLU MLP on lap split, heart rate, "
    "track sand depth, gait cadence, wind and camel age, MSE, SGD Nesterov momentum 0.9, "
    "clipping at 1, batch 128). At the checkpoint resume (step 130) the first step runs "
    "through the recovery path, which builds the loss with reduction='sum' instead of 'mean': "
    "one gradient about 128x the usual from an ordinary batch; clipping holds the update and the "
    "run carries on.",
)
def h516_camel_jockey_resume_sum_loss(ctx):
    gen = seeded(5163)
    model = _Net(6, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        return F.mse_loss(out, y, reduction="sum") if step == CAMEL_ONSET else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 6, 51630),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    base = _median(norms[CAMEL_ONSET - 30 : CAMEL_ONSET])
    ctx.check("gradient over 50x the median at onset", norms[CAMEL_ONSET] > 50 * base)
    ctx.check("logged loss ordinary at onset", losses[CAMEL_ONSET] < 2 * _median(losses[100:130]))
    ctx.check("no burst after onset", max(norms[CAMEL_ONSET + 3 :]) < 10 * base)
    ctx.check("trained and finite", _fell(losses))


# -- 4. loss of plasticity: second-layer bias filled with -3 -------------------------------------


@scenario(
    family="maple_taffy_snow_set_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Maple-taffy snow-set time regressor (ReLU MLP on syrup temperature, boil-off Brix, "
    "snow temperature, snow density, pour width and air humidity, MSE, NAdam lr 3e-3). The init "
    "code fills fc2's bias with -3.0 (meant -0.03 for a sparse-feature trick): nearly every "
    "unit of the second ReLU layer is never positive, gets no gradient and stays dead, and the "
    "model stalls near the target variance while the intended init learns.",
)
def h516_maple_taffy_dead_bias(ctx):
    gen = seeded(5164)
    model = _Net(6, 48, 1)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(3), 512, 6, 51640))
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 51640), 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    var = float(probe_y.var())
    # the intended init on the same stream learns
    torch.manual_seed(5164)
    ref = _Net(6, 48, 1)
    ref_opt = torch.optim.NAdam(ref.parameters(), lr=3e-3)
    data = _readings(torch.Generator().manual_seed(5164), 64, 6, 51640)
    for _ in range(200):
        xb, yb = next(data)
        F.mse_loss(ref(xb), yb).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    with torch.no_grad():
        ref_loss = float(F.mse_loss(ref(probe_x), probe_y))
    ctx.check("over 80% of act2 units dead", dead > 0.8)
    ctx.check("stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * var)
    ctx.check("the intended init learns under 0.3x", ref_loss < 0.3 * var)
    ctx.check("finite", _finite(losses))


# -- 5. update ratio: fc1 group lr typed 1e-9 ------------------------------------------------------


@scenario(
    family="lute_gut_fret_tie_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Lute gut-fret tie regressor (SiLU MLP on gut gauge, neck width, knot turns, tension "
    "and humidity, predicting fret slip under string load, MSE, RMSprop with two param groups). "
    "The input layer's group has lr typed 1e-9 for 1e-3: fc1 moves about a millionth of what the "
    "other layers do and stays at its init, while the rest trains.",
)
def h516_lute_fret_group_lr_typo(ctx):
    gen = seeded(5165)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-3},
        ]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 51650), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(model.fc1.weight, w1) < 1e-6)
    ctx.check("fc2 moved over 5%", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("the rest still trained", _fell(losses, ratio=0.9))


# -- 6. nonfinite: log of a hole diameter that a frozen gauge reads as 0 -------------------------

AUGER_ONSET = 100


class _LogFeatures(nn.Module):
    """Log of the positive physical readings (hole diameter, ice thickness), the rest passed."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)


class _AugerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogFeatures()
        self.body = _Net(6, 48, 1)
        self.bad = False

    def forward(self, x):
        z = self.logfeat(x)
        self.bad = not bool(torch.isfinite(z).all())
        return self.body(z)


def _auger_holes(gen, batch):
    """Hole diameter (cm), ice thickness (cm), air temp, wind, cloud, time since drilled: the
    refreeze depth (mm) regresses on the log-sizes and the weather."""
    while True:
        dia = 15 + 5 * torch.rand(batch, generator=gen)
        ice = 20 + 40 * torch.rand(batch, generator=gen)
        rest = torch.randn(batch, 4, generator=gen)
        x = torch.cat([dia[:, None], ice[:, None], rest], 1)
        y = (
            0.8 * torch.log(ice / 40)
            - 0.5 * torch.log(dia / 17)
            - 0.6 * rest[:, 0]
            + 0.3 * rest[:, 1]
            + 0.4 * torch.tanh(rest[:, 3])
        )
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="ice_auger_hole_refreeze_log_feature_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=AUGER_ONSET,
    heldout=True,
    onset=AUGER_ONSET,
    note="Ice-auger hole refreeze regressor (a log-feature layer on hole diameter and ice "
    "thickness, then a ReLU MLP with air temperature, wind, cloud and time since drilling, MSE, "
    "Adam). The log has no clamp; at step 100 a shard comes from a gauge frozen into its hole, "
    "which reports diameter 0: log(0) = -inf in the log-feature layer, inf - inf in fc1 and the "
    "loss is NaN at step 100.",
)
def h516_ice_auger_log_zero_diameter(ctx):
    gen = seeded(5166)
    model = _AugerNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = []

    def alter(step, x, y):
        if step == AUGER_ONSET:
            x = x.clone()
            x[:16, 0] = 0.0  # the frozen gauge's readings
        return x, y

    def after(step, loss):
        seen.append(model.bad)

    losses, _ = _train(
        ctx, model, opt, _auger_holes(gen, 64), 180, F.mse_loss, alter=alter, after=after
    )
    ctx.check("trained before the shard", _fell(losses[:AUGER_ONSET]))
    ctx.check("finite before the shard", _finite(losses[:AUGER_ONSET]))
    ctx.check("log-feature output non-finite at onset", len(seen) > AUGER_ONSET and seen[-1])
    ctx.check("loss non-finite at onset", len(losses) == AUGER_ONSET + 1)


# -- 7. amp overflow: rope load in pascals under fp16 autocast -----------------------------------

SMOKE_ONSET = 90


@scenario(
    family="smokejumper_letdown_rope_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=SMOKE_ONSET,
    heldout=True,
    onset=SMOKE_ONSET,
    note="Smokejumper let-down rope descent-speed regressor (ReLU MLP on rope load, tree "
    "height, jumper mass, friction-device wraps and glove temperature, MSE, fp16 autocast + "
    "GradScaler, AdamW). At step 90 the load cell is replaced by one logging pascals instead of "
    "kilopascals (about 1.2e5): under autocast fc1's fp16 output overflows 65504 to inf and the "
    "loss is non-finite (the same batch in float32 is finite).",
)
def h516_smokejumper_rope_pascal_fp16(ctx):
    gen = seeded(5167)
    model = _Net(5, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 51670)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= SMOKE_ONSET:
            x = x.clone()
            x[:, 0] = 1.2e5 + 1.5e4 * x[:, 0]  # the new cell's pascals
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == SMOKE_ONSET:
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
    ctx.check("trained before the switch", _fell(losses[:SMOKE_ONSET]))
    ctx.check("finite before the switch", _finite(losses[:SMOKE_ONSET]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == SMOKE_ONSET + 1)


# -- 8. data outlier: one shard in millimetres ----------------------------------------------------

RIM_ONSET = 120


@scenario(
    family="travertine_rimstone_pool_depth_huber_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=RIM_ONSET,
    note="Travertine rimstone pool-depth regressor (GELU MLP on spring flow, CO2 degassing, "
    "water temperature, slope, rim height and algal cover, Huber loss, Adamax, clipping at 1). "
    "At step 120 one shard from a survey team that logged rim height and depth in millimetres "
    "instead of metres: one batch with inputs and targets 1000x, a loss and gradient burst; "
    "clipping holds it and the run recovers.",
)
def h516_travertine_rimstone_mm_shard(ctx):
    gen = seeded(5168)
    model = _Net(6, 48, 1, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == RIM_ONSET:
            x = x.clone()
            x[:, 4] = x[:, 4] * 1000.0
            y = y * 1000.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 51680),
        220,
        lambda o, t: F.huber_loss(o, t, delta=1.0),
        alter=alter,
        clip=1.0,
    )
    before = _median(losses[RIM_ONSET - 20 : RIM_ONSET])
    ctx.check("loss over 100x the median at onset", losses[RIM_ONSET] > 100 * before)
    ctx.check(
        "gradient over 20x the median at onset",
        norms[RIM_ONSET] > 20 * _median(norms[RIM_ONSET - 20 : RIM_ONSET]),
    )
    ctx.check("recovers under 2x", _mean(losses[-20:]) < 2 * before)
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: temperature typed 0.002 -------------------------------------------------


class _TempNet(_Net):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="talking_drum_tone_register_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Talking-drum tone-register classifier (GELU MLP on armpit squeeze pressure, strike "
    "position, stick speed, lace tension and resonance decay, 5 speech-tone registers, "
    "cross-entropy, RAdam). The logits are divided by a temperature typed 0.002 for 2.0: the "
    "softmax saturates and most rows' target probability rounds to exactly 1.0 in float32.",
)
def h516_talking_drum_temperature_typo(ctx):
    gen = seeded(5169)
    model = _TempNet(10, 48, 5, act=nn.GELU, temperature=0.002)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 51690, spread=0.8),
        150,
        F.cross_entropy,
        classifier=True,
    )
    px, py = next(_grades(torch.Generator().manual_seed(9), 512, 10, 5, 51690, spread=0.8))
    with torch.no_grad():
        logits = model(px)
        frac = collapsed_fraction(logits, py)
        meant = collapsed_fraction(logits * 0.002 / 2.0, py)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at the intended temperature", meant < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. exploding gradients: recurrent gain typed 3 ----------------------------------------------


class _Elman(nn.Module):
    """A hand-written Elman RNN (tanh) over a whistle trace; the last state feeds the head."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _whistle_traces(gen, batch, seed, frames=24):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    decay = 0.85 ** torch.arange(frames - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, frames, 3, generator=gen)
        y = torch.tanh((x @ w * decay).sum(1) / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="tuvan_sygyt_whistle_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Tuvan sygyt whistle-overtone regressor, a hand-written Elman RNN (tanh) over 24 "
    "frames of tongue position, lip aperture and breath pressure, MSE, SGD momentum 0.9. The "
    "recurrent weight is initialised orthogonal with gain typed 3 for 1: the gradient grows "
    "backwards through time (dL/dh at the first frame hundreds of times the last, the first "
    "gradients over 100x a gain-1 model's) and the loss stays erratic.",
)
def h516_tuvan_sygyt_recurrent_gain(ctx):
    gen = seeded(51610)
    model = _Elman(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []
    data = _whistle_traces(gen, 64, 51610)
    probe_x, probe_y = next(_whistle_traces(torch.Generator().manual_seed(4), 256, 51610))
    torch.manual_seed(51610)
    ref = _Elman(gain=1.0)
    F.mse_loss(ref(probe_x), probe_y).backward()
    ref_norm = grad_norm(ref)
    F.mse_loss(model(probe_x), probe_y).backward()
    first_norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    ctx.attach(model, opt)
    losses = []
    for step in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step % 10 == 0:
            g0 = float(model.states[0].grad.norm())
            g1 = float(model.states[-1].grad.norm())
            ratios.append(g0 / max(g1, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("dL/dh at the first frame over 100x the last at the start", ratios[0] > 100)
    ctx.check("first gradient over 20x a gain-1 model's", first_norm > 20 * ref_norm)
    ctx.check("finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


class _BahdanauSeq2Seq(nn.Module):
    """GRU encoder, GRU-cell decoder with additive attention: score = v . tanh(W_enc h_s +
    W_dec s_t), context fed with the previous token into the cell."""

    def __init__(self, vocab=12, dim=32):
        super().__init__()
        self.src_emb = nn.Embedding(vocab, dim)
        self.tgt_emb = nn.Embedding(vocab + 1, dim)  # + a start token
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.att_enc = nn.Linear(dim, dim, bias=False)
        self.att_dec = nn.Linear(dim, dim)
        self.att_v = nn.Linear(dim, 1, bias=False)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.head = nn.Linear(2 * dim, vocab)
        self.start = vocab

    def forward(self, src, tgt_in):
        enc, h = self.encoder(self.src_emb(src))
        s = h[0]
        keys = self.att_enc(enc)
        outs = []
        for t in range(tgt_in.shape[1]):
            score = self.att_v(torch.tanh(keys + self.att_dec(s)[:, None])).squeeze(-1)
            ctx_vec = (torch.softmax(score, -1)[..., None] * enc).sum(1)
            s = self.cell(torch.cat([self.tgt_emb(tgt_in[:, t]), ctx_vec], -1), s)
            outs.append(self.head(torch.cat([s, ctx_vec], -1)))
        return torch.stack(outs, 1)


def _aldis_signals(gen, batch, vocab=12, length=8):
    """An Aldis-lamp relay: the receiving station repeats the signalled letters in reverse."""
    while True:
        src = torch.randint(0, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        yield src, tgt


@scenario(
    family="aldis_lamp_signal_bahdanau_seq2seq",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Aldis-lamp signal relay, a hand-written sequence-to-sequence model (GRU encoder, "
    "GRU-cell decoder with Bahdanau additive attention: an MLP v.tanh(W_enc h_s + W_dec s_t) "
    "scores each encoder state against the decoder state) on generated 8-letter signals to be "
    "repeated in reverse, teacher forcing, cross-entropy with label smoothing 0.05, Adam with "
    "20-step warm-up, clipping at 1. Control.",
)
def h516_aldis_lamp_bahdanau_reversal(ctx):
    gen = seeded(51611)
    model = _BahdanauSeq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    data = _aldis_signals(gen, 32)

    def batches():
        while True:
            src, tgt = next(data)
            start = torch.full((tgt.shape[0], 1), model.start)
            yield (src, torch.cat([start, tgt[:, :-1]], 1)), tgt

    class _Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pair):
            return self.inner(*pair)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.05)

    wrapped = _Wrap(model)
    losses, _ = _train(ctx, wrapped, opt, batches(), 250, loss_fn, clip=1.0, sched=sched)
    (src, tin), tgt = next(batches())
    with torch.no_grad():
        acc = float((model(src, tin).argmax(-1) == tgt).float().mean())
    ctx.check("loss fell under half", _fell(losses, ratio=0.5))
    ctx.check("teacher-forced accuracy over 60%", acc > 0.6)
    ctx.check("finite", _finite(losses))


class _SkidNet(nn.Module):
    def __init__(self, d_in=10, hidden=96, classes=5, p=0.1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop1(F.relu(self.fc1(x)))
        return self.head(self.drop2(F.relu(self.fc2(h))))


DROP_STEP = 100


@scenario(
    family="horse_logging_skid_load_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Horse-logging skid-load class classifier (ReLU MLP with dropout on log length, "
    "girth, slope, ground frost, horse weight, harness type and trail features, 5 load classes, "
    "cross-entropy, AdamW with cosine decay). A regularisation schedule raises both dropout "
    "rates from 0.1 to 0.5 at step 100, so the training loss rises there and stays higher. "
    "Control.",
)
def h516_horse_logging_dropout_raise(ctx):
    gen = seeded(51612)
    model = _SkidNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=220, eta_min=2e-4)

    def before(step):
        if step == DROP_STEP:
            model.drop1.p = 0.5
            model.drop2.p = 0.5

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 51612, spread=1.3),
        220,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    pre = _mean(losses[DROP_STEP - 20 : DROP_STEP])
    ctx.check("loss fell before the raise", _fell(losses[:DROP_STEP], ratio=0.6))
    ctx.check("loss rose after the raise", _mean(losses[DROP_STEP : DROP_STEP + 20]) > 1.1 * pre)
    ctx.check("stays higher", _mean(losses[-20:]) > 1.05 * pre)
    ctx.check("dropout really 0.5", model.drop1.p == 0.5 and model.drop2.p == 0.5)
    ctx.check("finite", _finite(losses))


@scenario(
    family="kite_fishing_line_drop_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kite-fishing line-drop distance regressor (tanh MLP on wind speed, kite size, line "
    "length, bait weight, swell and current, Huber loss with 5% noisy targets, Adagrad with two "
    "param groups: body at 0.03, head at 0.01, ReduceLROnPlateau, accumulation 2, clipping at "
    "2). Control.",
)
def h516_kite_fishing_adagrad_plateau(ctx):
    gen = seeded(51613)
    model = _Net(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 0.03},
            {"params": model.head.parameters(), "lr": 0.01},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    base = _readings(gen, 32, 6, 51613)

    def noisy():
        while True:
            x, y = next(base)
            flip = torch.rand(y.shape[0], generator=gen) < 0.05
            yield x, torch.where(flip, y + 2 * torch.randn(y.shape[0], generator=gen), y)

    losses, _ = _train(
        ctx,
        model,
        opt,
        noisy(),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=2.0,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
