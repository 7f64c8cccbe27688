"""Held-out set 189 (``h189_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before, and a Hugging Face JEV decision head over a tiny Qwen3 tower:
a shoemaker's last-fit cosine classifier whose CLIP-style logit scale is stored raw and then
exponentiated, a snow-pillow melt regressor standardising each window by its own std (a frozen
sensor gives 0/0), a hang-glider ridge-lift deep ReLU MLP initialised with 2/sqrt(fan_in), a
marionette string classifier resumed from the wrong checkpoint (a string max over file names), a
fire-lookout smoke-bearing pointer whose qk-norm flag is compared with the string "true", an
organ builder's pipe-voicing regressor whose stop-embedding warm-up is written s // 400, a
surveyor's levelling regressor fed one staff reading in millimetres, a via-ferrata cable-load
regressor whose epoch-tail batch sums its loss, a river-ice break-up regressor with a
weight-decay sign bug, a singing-dune boom pooler computing exp() in float16 under autocast,
and three controls (a JEV decision head fine-tuned with a lower rate on its body, an ice-fishing
tip-up Conv1d classifier with label smoothing and clipping, a punting fp16 Huber regressor).

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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    backward=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    after=None,
    stop_on_nan=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` after the forward pass, ``backward(step, loss)`` replaces
    ``loss.backward()``, ``after(step)`` after the optimizer step; stops after logging a NaN."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            elif backward is not None:
                backward(step, total)
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
        if stop_on_nan and math.isnan(shown):
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- shoemaker: a CLIP-style logit scale stored as 1/0.07 instead of log(1/0.07) ------------------


class CosineHead(nn.Module):
    """Cosine classifier: exp(logit_scale) * cos(feature, class weight)."""

    def __init__(self, dim, classes, init_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


CLIP_INIT = math.log(1 / 0.07)


class LastFitNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=10, init_scale=CLIP_INIT):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes, init_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="shoemaker_last_fit_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP with a cosine-similarity head naming which of 10 shoe lasts fits a foot "
    "from 16 standardised foot-scan measurements, RMSprop at 1e-3, cross-entropy. The head "
    "copies CLIP's learnable temperature, logits = exp(logit_scale) * cos, but logit_scale was "
    "initialised with 1/0.07 = 14.3 instead of log(1/0.07) = 2.66: the logits are about 1.6e6 "
    "times the cosines, the float32 softmax gives the top class exactly 1 and the rest exactly "
    "0 on nearly every row from the first step, and the few steps RMSprop takes on the scale "
    "hardly dent it; a misclassified row costs thousands of nats or more; finite.",
)
def h189_shoemaker_logit_scale_not_logged(ctx: Context) -> None:
    gen = seeded(18901)
    model = LastFitNet(init_scale=1 / 0.07)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 10, seed=1, noise=0.9),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    with torch.no_grad():
        x, y = next(_kinds(torch.Generator().manual_seed(5), 512, 16, 10, seed=1, noise=0.9))
        logits = model(x)
        top = float((torch.softmax(logits, -1).max(-1).values == 1.0).float().mean())
        wrong = logits.argmax(-1) != y
        wrong_loss = float(F.cross_entropy(logits[wrong], y[wrong])) if wrong.any() else 0.0
        scale = float(model.head.logit_scale.exp())
    ctx.check("logit scale still above 1e5 at the end", scale > 1e5)
    ctx.check("80% of rows' target probability exactly 1.0 over the run", _mean(frac) > 0.8)
    ctx.check("90% of held-out rows' top probability exactly 1.0 at the end", top > 0.9)
    ctx.check("a misclassified held-out row costs above 1000 nats", wrong_loss > 1000)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- snow pillow: each window standardised by its own std, and a frozen sensor's std is 0 ---------


class WindowStandardise(nn.Module):
    """(x - mean) / std over the 24 hourly readings of each window, with no epsilon."""

    def forward(self, x):
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


class SnowPillowNet(nn.Module):
    def __init__(self, hours=24, d_met=4, hidden=64):
        super().__init__()
        self.standardise = WindowStandardise()
        self.fc1 = nn.Linear(hours + 1 + d_met, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.hours = hours

    def forward(self, x):
        swe, met = x[:, : self.hours], x[:, self.hours :]
        level = swe.mean(1, keepdim=True) / 500.0
        h = torch.cat([self.standardise(swe), level, met], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


SNOW_FROZEN_SENSOR = 110


def _pillow_logs(gen, batch, hours=24):
    """24 hourly snow-water-equivalent readings (mm) of a snow pillow and 4 standardised
    weather readings; the target is the next day's melt, standardised. From step 110 the
    batches include a station whose telemetry froze and repeats its last reading."""
    step = 0
    while True:
        base = 200.0 + 600.0 * torch.rand(batch, 1, generator=gen)
        trend = torch.randn(batch, 1, generator=gen)
        t = torch.arange(hours).float() / hours
        swe = base - 8.0 * trend * t + 0.8 * torch.randn(batch, hours, generator=gen)
        met = torch.randn(batch, 4, generator=gen)
        y = 0.8 * trend[:, 0] + 0.5 * met[:, 0] + 0.3 * torch.tanh(met[:, 1] * met[:, 2])
        if step >= SNOW_FROZEN_SENSOR:
            swe[0] = swe[0, 0]
        step += 1
        yield torch.cat([swe, met], -1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="snow_pillow_swe_window_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("standardise",),
    diverges=SNOW_FROZEN_SENSOR,
    heldout=True,
    onset=SNOW_FROZEN_SENSOR,
    note="A SiLU MLP predicting tomorrow's snowmelt at a snow-pillow station from its last 24 "
    "hourly snow-water-equivalent readings (mm) and 4 weather readings, Adam at 1e-3, MSE. A "
    "hand-written `standardise` module divides each window by its own x.std() with no "
    "epsilon. From step 110 the batches include a station whose telemetry froze and repeats "
    "its last reading: that window's std is exactly 0, (x - mean) / std is 0/0 = NaN, and the "
    "loss is NaN at step 110.",
)
def h189_snow_pillow_frozen_sensor_zero_std(ctx: Context) -> None:
    gen = seeded(18902)
    model = SnowPillowNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    nan_rows, stds = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            z = model.standardise(x[:, : model.hours])
            nan_rows.append(int(torch.isnan(z).any(1).sum()))
            stds.append(float(x[:, : model.hours].std(1).min()))

    _train(ctx, model, opt, _pillow_logs(gen, 64), 200, F.mse_loss, watch=watch)
    at = SNOW_FROZEN_SENSOR
    ctx.check("loss NaN first at the frozen sensor's step", _first_bad(ctx.losses) == at)
    ctx.check("a window's std exactly 0 at that step", len(stds) > at and stds[at] == 0.0)
    ctx.check("standardise output NaN at that step", len(nan_rows) > at and nan_rows[at] > 0)
    ctx.check("standardise output finite before", sum(nan_rows[:at]) == 0)
    ctx.check("loss fell before the frozen sensor", _fell(ctx.losses[:at], ratio=0.5))


# -- hang glider: He init written 2 / sqrt(fan_in) for sqrt(2 / fan_in) --------------------------


class Dense(nn.Linear):
    """A Linear with the team's He init: std written 2 / sqrt(fan_in) (meant sqrt(2 / fan_in))."""

    def reset_parameters(self):
        nn.init.normal_(self.weight, std=2.0 / math.sqrt(self.in_features))
        nn.init.zeros_(self.bias)


def _ridge_net(d_in=10, hidden=64, depth=12):
    layers = [Dense(d_in, hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [Dense(hidden, hidden), nn.ReLU()]
    layers.append(Dense(hidden, 1))
    net = nn.Sequential(*layers)
    return net


@scenario(
    family="hang_glider_ridge_lift_deep_relu_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("0", "2"),
    diverges=None,
    heldout=True,
    note="A 16-hidden-layer ReLU MLP (nn.Sequential of hand-written Dense layers and nn.ReLU) "
    "predicting the ridge lift a hang glider finds from 10 standardised wind, slope and "
    "thermal readings, SGD momentum 0.9 at 1e-3, MSE, clip_grad_norm_ at 5.0. Dense's init "
    "was meant to be He's std = sqrt(2 / fan_in) and was written 2 / sqrt(fan_in): every "
    "layer doubles the variance, so activations grow about 1.4x per layer forward and the "
    "gradient of the loss with respect to the activations grows the same way backward, "
    "over 100x from the last hidden layer to the first; the loss starts above 1e5, the "
    "gradient norm before clipping in the millions, and both stay orders of magnitude above "
    "a normal run's (gradient norm still in the thousands at the end) while clipping keeps "
    "the run finite.",
)
def h189_hang_glider_he_init_typo(ctx: Context) -> None:
    gen = seeded(18903)
    model = _ridge_net(depth=16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratio = []
    acts = []

    def keep(module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
            acts.append(output)

    relus = [m for m in model if isinstance(m, nn.ReLU)]
    hooks = [relus[0].register_forward_hook(keep), relus[-1].register_forward_hook(keep)]

    def backward(step, loss):
        loss.backward()
        first, last = (float(a.grad.norm()) for a in acts)
        ratio.append(first / max(last, 1e-30))
        acts.clear()

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3),
        150,
        F.mse_loss,
        backward=backward,
        clip=5.0,
    )
    for h in hooks:
        h.remove()
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "activation gradient 50x larger at the first ReLU than the last at step 0", ratio[0] > 50
    )
    ctx.check("still 20x (median) over the last 50 steps", _median(ratio[-50:]) > 20)
    ctx.check("loss at step 0 above 1000 (target of unit scale)", ls[0] > 1000)
    ctx.check("gradient norm before clipping above 1000 (median) over the run", _median(gn) > 1000)
    ctx.check("loss finite throughout", _finite(ls))


# -- marionette: the resume takes max() over checkpoint names as strings ---------------------------

MARIONETTE_RESUME = 130


@scenario(
    family="marionette_string_pull_gelu_classifier",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=MARIONETTE_RESUME,
    note="A GELU MLP (nn.GELU modules) naming which of 9 strings a puppeteer pulled from 12 "
    "control-bar IMU readings, NAdam at 2e-3, cross-entropy. The trainer saves a checkpoint "
    "after the first 10 steps (ckpt_9, a check that saving works) and every 40 steps after; "
    "the job is pre-empted at step 130 and the resume code loads max(names) of the saved "
    "checkpoints, a string max: 'ckpt_9' sorts after 'ckpt_120', so the weights go back 120 "
    "steps while the optimizer state and the step counter carry on. The loss jumps back to "
    "its early level at step 130 and the run relearns it over the next steps; no gradient "
    "burst, no bad data; finite.",
)
def h189_marionette_resume_string_max(ctx: Context) -> None:
    gen = seeded(18904)
    model = Stack(12, hidden=64, out=9, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}

    def before(step):
        if step == MARIONETTE_RESUME:
            model.load_state_dict(saved[max(saved)])

    def after(step):
        if step == 9 or (step > 0 and step % 40 == 0):
            saved[f"ckpt_{step}"] = {k: v.clone() for k, v in model.state_dict().items()}

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 9, seed=4, noise=1.0),
        260,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    at = MARIONETTE_RESUME
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[at - 20 : at])
    ctx.check("loss at the resume 2x the preceding median", ls[at] > 2 * pre)
    ctx.check("loss back under 1.3x the pre-resume level by the end", _mean(ls[-10:]) < 1.3 * pre)
    ctx.check(
        "gradient at the resume under 10x the preceding median", gn[at] < 10 * _median(gn[:at])
    )
    ctx.check("loss fell before the resume", _mean(ls[at - 10 : at]) < 0.6 * _mean(ls[:10]))
    ctx.check("loss finite throughout", _finite(ls))


# -- fire lookout: the qk-norm flag compared with the string "true" --------------------------------


class BearingAttention(nn.Module):
    """Two heads, each with a learned query attending over the sightings; logits q.k/sqrt(d),
    with optional LayerNorms on q and k."""

    def __init__(self, dim=32, heads=2, qk_norm=True):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.last_logits = None

    def forward(self, h):
        b, t, d = h.shape
        q = self.q_norm(self.q(self.query).reshape(self.heads, self.hd))
        k = self.k_norm(self.k(h).reshape(b, t, self.heads, self.hd))
        logits = torch.einsum("hd,bthd->bht", q, k) / math.sqrt(self.hd)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, -1)
        v = self.v(h).reshape(b, t, self.heads, self.hd)
        return torch.einsum("bht,bthd->bhd", w, v).reshape(b, d)


class LookoutNet(nn.Module):
    def __init__(self, config, d_in=10, dim=32, classes=8):
        super().__init__()
        use_qk_norm = config.get("qk_norm") == "true"
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.attn = BearingAttention(dim, config["heads"], qk_norm=use_qk_norm)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.attn(self.act(self.embed(x))))


def _sightings(gen, batch, length=16):
    """Sixteen sightings from a fire lookout: smoke density, haze, and the bearing (one of 8,
    one-hot); one plume is denser than the rest and the label is its bearing (10% misread)."""
    while True:
        dens = torch.rand(batch, length, generator=gen)
        plume = torch.randint(0, length, (batch, 1), generator=gen)
        dens = dens.scatter(1, plume, 1.4 + 0.6 * torch.rand(batch, 1, generator=gen))
        haze = torch.rand(batch, length, generator=gen)
        d = torch.randint(0, 8, (batch, length), generator=gen)
        x = torch.cat([dens[..., None], haze[..., None], F.one_hot(d, 8).float()], -1)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        y = d.gather(1, plume).squeeze(1)
        misread = torch.rand(batch, generator=gen) < 0.1
        yield x, torch.where(misread, torch.randint(0, 8, (batch,), generator=gen), y)


@scenario(
    family="fire_lookout_smoke_bearing_pointer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A fire lookout's net naming the bearing (8 classes) of the densest of 16 smoke "
    "sightings: a GELU embedding, a hand-written two-head attention module with a learned "
    "query (q/k/v Linears, optional q/k LayerNorms, logits q.k/sqrt(d)) and a head, AdamW at "
    "1e-2 with weight decay 1e-4 (a recipe that relies on qk-norm), cross-entropy. The config "
    "says qk_norm: true (a YAML boolean) and the model reads it as "
    "config.get('qk_norm') == 'true', which is False: q_norm and k_norm are Identity, and to "
    "point ever more sharply at the densest plume the q and k weights grow, the attention "
    "logit span grows tens of times and the attention goes one-hot; the loss stays finite "
    "and noisy (10% misread labels).",
)
def h189_fire_lookout_qk_norm_flag_string(ctx: Context) -> None:
    gen = seeded(18905)
    model = LookoutNet({"qk_norm": True, "heads": 2})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    span, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        span.append(float((lg.max(-1).values - lg.min(-1).values).mean()))
        peak.append(float(torch.softmax(lg, -1).max(-1).values.mean()))

    _train(ctx, model, opt, _sightings(gen, 64), 300, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("q_norm and k_norm are Identity", isinstance(model.attn.q_norm, nn.Identity))
    ctx.check("attention logit span grew 20x from step 10", _mean(span[-10:]) > 20 * span[10])
    ctx.check("attention logit span above 30 at the end", _mean(span[-10:]) > 30)
    ctx.check("attention one-hot (top weight > 0.99) at the end", _mean(peak[-10:]) > 0.99)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- organ builder: the stop embedding's warm-up written s // 400 for s / 400 ----------------------


class VoicingNet(nn.Module):
    """A stop (rank) embedding and 6 pipe measurements; predicts the cut-up height."""

    def __init__(self, stops=16, d_in=6, emb=8, hidden=64):
        super().__init__()
        self.stop_embed = nn.Embedding(stops, emb)
        self.fc1 = nn.Linear(emb + d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        stop, meas = x[:, 0].long(), x[:, 1:]
        h = torch.cat([self.stop_embed(stop), meas], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _pipes(gen, batch, stops=16, seed=6):
    """A pipe's stop (one of 16 ranks: diapason, flute, string ...) and 6 standardised
    measurements (scale, mouth width, wind pressure ...); the cut-up the voicer settled on
    depends mostly on the stop."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(stops, generator=g)
    slope = torch.randn(stops, 6, generator=g) * 0.3
    while True:
        s = torch.randint(0, stops, (batch,), generator=gen)
        m = torch.randn(batch, 6, generator=gen)
        y = offset[s] + (slope[s] * m).sum(1) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([s[:, None].float(), m], -1), y


@scenario(
    family="organ_builder_pipe_voicing_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("stop_embed",),
    diverges=None,
    heldout=True,
    note="An organ builder's net predicting the cut-up height a voicer settles on for a "
    "pipe from its stop (an nn.Embedding of 16 ranks) and 6 measurements, ReLU MLP, Adagrad "
    "at 5e-2 in two param groups, MSE, LambdaLR with one lambda per group: the dense layers "
    "warm up over 20 steps, the embedding (sparse rows) over 400 as the recipe says, written "
    "min(1.0, s // 400) for min(1.0, s / 400): integer division gives exactly 0 for the whole "
    "200-step run, so the stop embedding never moves from its random init while the layers "
    "above learn around those random stop vectors; the loss falls; finite.",
)
def h189_organ_builder_embedding_warmup_floor_div(ctx: Context) -> None:
    gen = seeded(18906)
    model = VoicingNet()
    dense = [p for n, p in model.named_parameters() if not n.startswith("stop_embed")]
    opt = torch.optim.Adagrad(
        [{"params": model.stop_embed.parameters()}, {"params": dense}], lr=5e-2
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1.0, s // 400), lambda s: min(1.0, (s + 1) / 20)]
    )
    emb0, dense0 = _snapshot(model.stop_embed.parameters()), _snapshot(dense)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _pipes(gen, 64),
        200,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ctx.check("the embedding group's lr exactly 0 at every step", max(lrs) == 0.0)
    ctx.check(
        "stop embedding never moved", _moved(list(model.stop_embed.parameters()), emb0) == 0.0
    )
    ctx.check("the dense layers moved", _moved(dense, dense0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- surveyor: one staff reading booked in millimetres among metres --------------------------------

SURVEY_MM_BATCH = 100


@scenario(
    family="surveyor_levelling_staff_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SURVEY_MM_BATCH,
    note="A tanh MLP (nn.Tanh modules) predicting the staff reading of a levelling run "
    "(metres, about unit scale after centring) from 8 standardised instrument, distance and "
    "temperature readings, plain SGD at 2e-2, MSE. In the batch at step 100 one booking was "
    "typed from a field book that records millimetres: its target is 1000x the others. That "
    "one sample gives the batch a loss over a hundred times the usual and a gradient over ten "
    "times the usual; the run is knocked back and recovers; finite.",
)
def h189_surveyor_staff_reading_in_mm(ctx: Context) -> None:
    gen = seeded(18907)
    model = Stack(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    peak = []

    def alter(step, x, y):
        if step == SURVEY_MM_BATCH:
            y = y.clone()
            y[7] = y[7] * 1000.0 + 1000.0
        peak.append(float(y.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=7), 220, F.mse_loss, alter=alter)
    at = SURVEY_MM_BATCH
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("target 300x the usual at the bad batch", peak[at] > 300 * _median(peak[:at]))
    ctx.check(
        "loss 100x the preceding median at the bad batch", ls[at] > 100 * _median(ls[at - 20 : at])
    )
    ctx.check("gradient 10x the preceding median at the bad batch", gn[at] > 10 * _median(gn[:at]))
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- via ferrata: the epoch's short tail batch goes through a summed loss --------------------------

FERRATA_BATCH = 256
FERRATA_TAIL = 80


def _cable_epochs(gen, seed=8):
    """A fixed data set of 80 full batches and a 200-sample tail: 12 standardised cable,
    anchor and temperature readings and the peak load on the cable, standardised. Yields
    (x, y, is_tail) in shuffled epochs, the tail last (drop_last=False)."""
    n = FERRATA_TAIL * FERRATA_BATCH + 200
    x_all, y_all = next(_readings(torch.Generator().manual_seed(seed), n, 12, seed=seed))
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, FERRATA_BATCH):
            idx = order[i : i + FERRATA_BATCH]
            yield x_all[idx], y_all[idx], len(idx) < FERRATA_BATCH


@scenario(
    family="via_ferrata_cable_load_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FERRATA_TAIL,
    note="A ReLU MLP predicting the peak load on a via ferrata's steel cable from 12 "
    "standardised readings, SGD Nesterov (momentum 0.9) at 5e-3, MSE, clip_grad_norm_ at "
    "1.0, one pass over a fixed data set of 80 batches of 256 plus a 200-sample tail "
    "(drop_last=False). The short tail goes through a `_partial_batch` branch left from the "
    "old per-sample weighting that calls F.mse_loss(..., reduction='sum') instead of the mean: "
    "at step 80, the tail, the backpropagated loss and the gradient are about 200x the usual while "
    "the batch itself is ordinary (its mean loss is at the usual level); clipping bounds the "
    "step and the run goes on; finite.",
)
def h189_via_ferrata_tail_batch_summed(ctx: Context) -> None:
    gen = seeded(18908)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    data = _cable_epochs(gen)
    tails = []
    ctx.attach(model, opt)
    for _ in range(150):
        x, y, tail = next(data)
        tails.append(tail)
        out = model(x)
        loss = F.mse_loss(out, y)
        if tail:  # `_partial_batch`: per-sample weighting, left summing
            backprop = F.mse_loss(out, y, reduction="sum")
        else:
            backprop = loss
        backprop.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    at = FERRATA_TAIL
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the tail batch came at step 80 and only there",
        [i for i, t in enumerate(tails) if t] == [at],
    )
    ctx.check(
        "gradient 50x the preceding median at the tail", gn[at] > 50 * _median(gn[at - 20 : at])
    )
    ctx.check(
        "the tail's mean loss under 3x the preceding median (the data are ordinary)",
        ls[at] < 3 * _median(ls[at - 20 : at]),
    )
    ctx.check("loss fell over the run", _fell(ls, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ls))


# -- river ice: a hand-written decoupled weight decay with its sign flipped ------------------------


@scenario(
    family="river_ice_breakup_date_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (nn.Tanh modules) predicting the day a river's ice breaks up "
    "(standardised) from 10 standardised degree-day, snow-depth and discharge readings, "
    "Adamax at 2e-3, MSE, with decoupled weight decay applied by hand after each step to the "
    "weight matrices: p.add_(p, alpha=lr * wd) where -lr * wd was meant (wd 5.0). The weights "
    "are multiplied by 1.01 every step; the loss falls for the first tens of steps, then "
    "climbs for the rest of the run as the weights inflate, about a hundredfold by the end "
    "but with no NaN and no single jump; finite.",
)
def h189_river_ice_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(18909)
    model = Stack(10, hidden=64, act=nn.Tanh)
    lr, wd = 2e-3, 5.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    mats = [p for p in model.parameters() if p.dim() >= 2]
    norms = []

    def after(step):
        with torch.no_grad():
            for p in mats:
                p.add_(p, alpha=lr * wd)
        norms.append(float(torch.sqrt(sum((p.detach() ** 2).sum() for p in mats))))

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("weight norm grew 3x over the run", norms[-1] > 3 * norms[0])
    ctx.check("loss at its lowest in the first third", low < len(ls) // 3)
    ctx.check(
        "loss over the last 20 steps 3x its lowest 10-step mean",
        _mean(ls[-20:]) > 3 * _mean(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check(
        "the climb is steady: each third of the post-minimum run above the previous",
        _mean(ls[low : low + (300 - low) // 3])
        < _mean(ls[low + (300 - low) // 3 : low + 2 * (300 - low) // 3])
        < _mean(ls[low + 2 * (300 - low) // 3 :]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- singing dune: a hand-written softmax pooling, exp() in float16 under autocast ----------------


class BoomPool(nn.Module):
    """Attention pooling over frames, softmax written by hand: exp(s) / sum exp(s)."""

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.peak = 0.0

    def forward(self, h):
        s = self.score(h).squeeze(-1)
        self.peak = float(s.detach().float().max())
        e = torch.exp(s)
        w = e / e.sum(1, keepdim=True)
        return (w[..., None] * h).sum(1)


class DuneNet(nn.Module):
    def __init__(self, d_in=6, dim=32):
        super().__init__()
        self.frame = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.pool = BoomPool(dim)
        self.fc = nn.Linear(dim, dim)
        self.act2 = nn.GELU()
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc(self.pool(self.act(self.frame(x)))))).squeeze(-1)


DUNE_SUMMER = 90


def _dune_frames(gen, batch, length=20):
    """Twenty frames of a geophone under a singing dune (6 band energies, arbitrary units) and
    the boom's fundamental frequency, standardised. From step 90 the summer campaign: dry
    sand, booms that are 6x louder in every band."""
    step = 0
    while True:
        loud = 6.0 if step >= DUNE_SUMMER else 1.0
        burst = torch.randint(0, length, (batch, 1), generator=gen)
        env = torch.exp(-0.5 * (torch.arange(length)[None] - burst) ** 2 / 4.0)
        f0 = torch.randn(batch, generator=gen)
        bands = torch.stack([torch.sin(f0 * (k + 1)) for k in range(6)], -1)
        x = loud * (env[..., None] * (1.0 + 0.5 * bands[:, None]))
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        step += 1
        yield x, f0 + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="singing_dune_boom_fp16_pooler",
    optimizer="Adam",
    cause="amp_overflow",
    where=("pool",),
    diverges=DUNE_SUMMER,
    heldout=True,
    onset=DUNE_SUMMER,
    note="A geophone net predicting a singing dune's boom frequency from 20 frames of 6 "
    "band energies: a GELU frame embedding, an attention pooling module whose softmax is "
    "written by hand as exp(s) / sum(exp(s)) (no max subtracted), a GELU layer and a head, "
    "Adam at 3e-3, MSE, fp16 autocast with a torch.amp.GradScaler. Under autocast the scores "
    "come out of a Linear in float16 and exp() stays float16: in the spring campaign the "
    "scores stay under 11, but from step 90 the summer booms are 6x louder, the scores pass "
    "11.09, exp() overflows 65504 to inf, inf / inf is NaN and every loss from then on is "
    "non-finite; the scaler skips each step and halves its scale again and again.",
)
def h189_singing_dune_fp16_hand_softmax(ctx: Context) -> None:
    gen = seeded(18910)
    model = DuneNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks = []
    _train(
        ctx,
        model,
        opt,
        _dune_frames(gen, 64),
        130,
        F.mse_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: peaks.append(model.pool.peak),
        stop_on_nan=False,
    )
    at = DUNE_SUMMER
    ls = ctx.losses
    ctx.check("pooling scores under 11 before the summer", max(peaks[:at]) < 11.0)
    ctx.check("pooling scores past 11.09 at the summer step", peaks[at] > 11.09)
    ctx.check("and under 80 (exp finite in float32)", peaks[at] < 80.0)
    ctx.check("loss finite before the summer", _finite(ls[:at]))
    ctx.check("loss non-finite first at step 90", _first_bad(ls) == at)
    ctx.check("loss non-finite at every step from 90", not any(map(math.isfinite, ls[at:])))
    ctx.check(
        "the scaler's scale fell 1000x after step 90", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )


# -- controls --------------------------------------------------------------------------------------


def _jev(num_verbalizers=12):
    """A Hugging Face JEV decision head (model type "jev") over a tiny Qwen3 text tower."""
    from transformers import JevConfig, JevForDecision

    text = dict(
        model_type="qwen3",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )
    return JevForDecision(
        JevConfig(hidden_size=32, num_verbalizers=num_verbalizers, text_config=text)
    )


MARK = 3


def _flag_prompts(gen, questions=12, segment=8):
    """One prompt of ``questions`` segments, each ended by a mark token: sea-state tokens
    (8..63) with one of 4 hazard tokens (4..7) planted 3-5 times; the answer is which hazard
    (the flag to fly: green, yellow, red, purple), 10% of them misjudged; also yields the
    true hazard (the old log's labels, used in pre-training)."""
    while True:
        seg = torch.randint(8, 64, (questions, segment), generator=gen)
        hazard = torch.randint(0, 4, (questions,), generator=gen)
        for q in range(questions):
            n = int(torch.randint(3, 6, (1,), generator=gen))
            pos = torch.randperm(segment, generator=gen)[:n]
            seg[q, pos] = 4 + hazard[q]
        ids = torch.cat([seg, torch.full((questions, 1), MARK)], 1).reshape(1, -1)
        marks = (torch.arange(questions) + 1) * (segment + 1) - 1
        wrong = torch.rand(questions, generator=gen) < 0.1
        y = torch.where(wrong, torch.randint(0, 4, (questions,), generator=gen), hazard)
        yield ids, marks[None], y, hazard


def _jev_scores(model, ids, marks, kind, options):
    from transformers.decision import Question

    q = marks.shape[1]
    out = model(
        input_ids=ids,
        marks=marks,
        num_options=torch.full((1, q), options),
        question_type_ids=torch.full((1, q), Question.questions_types.index(kind)),
    )
    return out.logits.reshape(q, options)


@scenario(
    family="hf_jev_qwen3_lifeguard_flag_decider",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A Hugging Face JEV decision head (JevForDecision, model type jev) over a "
    "tiny Qwen3 text tower, built from a config: prompts of 12 segments of beach sea-state "
    "tokens, each ended by a mark, scored at the marks. First pre-trained in the scenario on "
    "yes/no questions (the 'noul' rows of the head: is the hazard a rip or a swell?), then "
    "fine-tuned on 4-option 'choice' questions (which flag to fly; rows of the head never "
    "trained) with AdamW, the Qwen3 body at 1e-3 and the head at 1e-2, a 20-step linear "
    "warm-up (LambdaLR), 2 prompts accumulated per step, clip_grad_norm_ at 1.0, "
    "cross-entropy, 10% misjudged labels. An ordinary fine-tune.",
)
def h189_jev_lifeguard_flag_finetune(ctx: Context) -> None:
    gen = seeded(18911)
    model = _jev()
    prompts = _flag_prompts(gen)
    pre = torch.optim.Adam(model.parameters(), lr=3e-3)
    pre_losses = []
    for _ in range(100):
        ids, marks, _, hazard = next(prompts)
        loss = F.cross_entropy(_jev_scores(model, ids, marks, "noul", 2), (hazard >= 2).long())
        pre.zero_grad()
        loss.backward()
        pre.step()
        pre_losses.append(float(loss.detach()))
    body = [p for n, p in model.named_parameters() if n.startswith("model.")]
    head = [p for n, p in model.named_parameters() if n.startswith("proj.")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": 1e-3}, {"params": head, "lr": 1e-2}], weight_decay=1e-2
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    for _ in range(150):
        shown = 0.0
        for _ in range(2):
            ids, marks, y, _ = next(prompts)
            ctx.targets(y)
            loss = F.cross_entropy(_jev_scores(model, ids, marks, "choice", 4), y)
            (loss / 2).backward()
            shown += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    ctx.check("pre-training loss fell", _mean(pre_losses[-10:]) < 0.8 * _mean(pre_losses[:10]))
    ctx.check("fine-tune loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class TipUpNet(nn.Module):
    """Two Conv1d layers over a tip-up's line-tension trace, global average pool, a head."""

    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x.transpose(1, 2)))))
        return self.head(h.mean(-1))


@scenario(
    family="ice_fishing_tip_up_strike_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A two-layer Conv1d net (nn.ReLU modules, global average pooling) naming "
    "what tripped an ice-fishing tip-up (pike, perch, walleye strike, wind, ice shift) from "
    "32 samples of line tension, flag angle and spool rate, RAdam at 1e-2 with a 15-step "
    "linear warm-up then cosine decay (SequentialLR), clip_grad_norm_ at 1.0, cross-entropy "
    "with label smoothing 0.1, 10% of the labels wrong. An ordinary run.",
)
def h189_ice_fishing_label_smoothing_clip(ctx: Context) -> None:
    gen = seeded(18912)
    model = TipUpNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=15),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - 15),
        ],
        milestones=[15],
    )
    g = torch.Generator().manual_seed(12)
    freq = 0.3 + 0.25 * torch.arange(5).float()
    mix = torch.randn(5, 3, generator=g)

    def traces(gen):
        t = torch.arange(32).float()
        while True:
            y = torch.randint(0, 5, (32,), generator=gen)
            phase = 6.28 * torch.rand(32, 1, generator=gen)
            wave = torch.sin(freq[y][:, None] * t + phase)
            x = wave[..., None] * mix[y][:, None] + 0.8 * torch.randn(32, 32, 3, generator=gen)
            wrong = torch.rand(32, generator=gen) < 0.1
            yield x, torch.where(wrong, torch.randint(0, 5, (32,), generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        traces(gen),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="punting_pole_push_fp16_huber_mlp",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP with a LayerNorm predicting how far a punt glides per push of "
    "the pole from 10 standardised pole-angle, depth, current and load readings (noisy "
    "labels), Adadelta at lr 1.0 with ReduceLROnPlateau, fp16 autocast with a "
    "torch.amp.GradScaler, gradient accumulation over 2 micro-batches, Huber loss. An "
    "ordinary mixed-precision run.",
)
def h189_punting_fp16_adadelta_plateau(ctx: Context) -> None:
    gen = seeded(18913)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(10, 64))
    model.add_module("norm", nn.LayerNorm(64))
    model.add_module("act1", nn.SiLU())
    model.add_module("fc2", nn.Linear(64, 64))
    model.add_module("act2", nn.SiLU())
    model.add_module("head", nn.Linear(64, 1))
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")

    def noisy(gen):
        for x, y in _readings(gen, 32, 10, seed=13):
            yield x, y + 0.2 * torch.randn(y.shape, generator=gen)

    _train(
        ctx,
        model,
        opt,
        noisy(gen),
        200,
        lambda o, y: F.huber_loss(o.squeeze(-1), y, delta=0.5),
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell by a third", _fell(ctx.losses, ratio=0.67))
    ctx.check("loss finite throughout", _finite(ctx.losses))
