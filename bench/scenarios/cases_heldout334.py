"""Held-out set 334 (``h334_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a snake-boat oar-cadence ReLU encoder-decoder (teacher
forcing) whose recurrent identity init is multiplied by calculate_gain('relu') (gradients grow
through time), a thavil drum-stroke SiLU regressor whose resumed step reads a loss weight in
grams for kilograms (Adam's second moment poisoned), a hanko seal-carver cosine classifier that
forgets to normalise features and weights before the scale of 30 (softmax saturates), a
salt-raking pan-yield two-group regressor whose trunk warm-up lambda uses integer division (trunk
frozen), a quijada rattle-click Poisson net that takes log of a raw linear rate (log of a
negative), a snow-donut field-count net that exponentiates its log-count inside fp16 autocast
(overflow), a chair-bodger pole-lathe Huber regressor fed one shard timed in seconds for
minutes (one corrupted batch), a lathi-khela strike BCE net whose loss weight reads a percentage
for one step (one gradient burst), a marimbula tongue-pitch tanh regressor whose hand-written
weight decay has its sign flipped (slow climb), a patang kite-fight hinge net whose hinge misses
its clamp (output logits grow without bound), and three controls (a tupan-davul rhythm tanh
encoder-decoder with a decaying teacher-forcing ratio, a tamboura jivari Conv1d classifier under
fp16 autocast with OneCycleLR, a mosaic tessera-cut Huber regressor with accumulation and
ReduceLROnPlateau).

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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(model: nn.Module, before: dict[str, torch.Tensor], prefix: str) -> float:
    """Relative change of the weights under ``prefix`` since ``before``."""
    num = den = 0.0
    for n, p in model.named_parameters():
        if n.startswith(prefix):
            num += float((p.detach() - before[n]).norm() ** 2)
            den += float(before[n].norm() ** 2)
    return math.sqrt(num / max(den, 1e-30))


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
    forward=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``forward(step, model, x)``
    replaces ``model(x)``. Stops after a non-finite loss (once ``ctx.step`` has seen it);
    returns the number of steps run."""
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
                out = forward(step, model, x) if forward is not None else model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _cadences(gen, batch, seed, src_len=16, tgt_len=8):
    """A rowing crew's stroke signal: a noisy slow sinusoid per crew (its rate and phase)
    plus two side channels (stroke length, boat speed); the target is the next strokes."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(2, generator=g)
    t = torch.arange(src_len + tgt_len + 1, dtype=torch.float32)
    while True:
        freq = 0.25 + 0.35 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + 0.5 * torch.rand(batch, 1, generator=gen)
        c = amp * torch.sin(freq * t + phase) + 0.05 * torch.randn(batch, len(t), generator=gen)
        side = torch.stack([mix[0] * c, mix[1] * torch.cos(freq * t + phase)], -1)
        src = torch.cat([c[:, :src_len, None], side[:, :src_len]], -1)
        # decoder inputs (teacher forcing: the true previous cadence) and targets
        tgt_in = c[:, src_len - 1 : src_len - 1 + tgt_len]
        tgt = c[:, src_len : src_len + tgt_len]
        yield (src, tgt_in), tgt


class Seq2SeqRNN(nn.Module):
    """Hand-written encoder-decoder: encoder cell (enc_in, enc_rec), decoder cell (dec_in,
    dec_rec), head; the decoder starts from the encoder's last state. ``act`` is the cells'
    nonlinearity; ``forward`` uses teacher forcing unless ``teacher`` (a ratio) is below 1."""

    def __init__(self, d_in=3, hidden=48, act=torch.relu):
        super().__init__()
        self.enc_in = nn.Linear(d_in, hidden)
        self.enc_rec = nn.Linear(hidden, hidden, bias=False)
        self.dec_in = nn.Linear(1, hidden)
        self.dec_rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        self.act = act
        self.states: list[torch.Tensor] = []
        self.keep_states = False

    def forward(self, inputs, teacher=1.0, gen=None):
        src, tgt_in = inputs
        b = src.shape[0]
        h = src.new_zeros(b, self.enc_rec.in_features)
        self.states = []
        for t in range(src.shape[1]):
            h = self.act(self.enc_in(src[:, t]) + self.enc_rec(h))
            if self.keep_states:
                h.retain_grad()
                self.states.append(h)
        outs = []
        prev = tgt_in[:, :1]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                if teacher >= 1.0:
                    prev = tgt_in[:, t : t + 1]
                else:
                    use = torch.rand(b, 1, generator=gen) < teacher
                    prev = torch.where(use, tgt_in[:, t : t + 1], outs[-1].detach())
            h = self.act(self.dec_in(prev) + self.dec_rec(h))
            if self.keep_states:
                h.retain_grad()
                self.states.append(h)
            outs.append(self.head(h))
        return torch.cat(outs, 1)


# -- snake boat: the IRNN identity init multiplied by calculate_gain('relu') ----------------------


@scenario(
    family="snake_boat_oar_cadence_irnn_seq2seq",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("enc_rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU encoder-decoder (enc_in, enc_rec, dec_in, dec_rec, head) that reads the first 16 oar strokes of a vallam kali snake-boat crew (cadence, stroke length, boat speed) and predicts the next 8 cadences with teacher forcing (the decoder is fed the true previous cadence); SGD with momentum 0.9 at 1e-3, MSE, 150 steps planned, no clipping. The recurrent matrices are meant to start as the identity (IRNN) and the init helper multiplies them by nn.init.calculate_gain('relu') = sqrt(2), the feed-forward ReLU gain: along the 24 recurrent steps the state and the backpropagated gradient grow by about sqrt(2) a step, so the gradient reaching the first encoder state is hundreds of times the last decoder state's and the loss blows up to inf/NaN within a few steps (NaN at step 1).",
)
def h334_snake_boat_irnn_relu_gain(ctx: Context) -> None:
    gen = seeded(33401)
    model = Seq2SeqRNN()
    with torch.no_grad():
        for rec in (model.enc_rec, model.dec_rec):
            nn.init.eye_(rec.weight)
            rec.weight.mul_(nn.init.calculate_gain("relu"))  # the bug: meant 1.0 (IRNN)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.keep_states = True
    ratio = {}
    growth = {}
    ctx.attach(model, opt)
    batches = _cadences(gen, 32, 334)
    for step in range(150):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            ratio[0] = float(first.norm() / last.norm().clamp_min(1e-30))
            growth[0] = float(model.states[-1].norm() / model.states[0].norm().clamp_min(1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "at step 0 the gradient at the first encoder state is over 100x the last decoder state's",
        ratio.get(0, 0.0) > 100.0,
    )
    ctx.check(
        "at step 0 the last decoder state is over 100x the first encoder state",
        growth.get(0, 0.0) > 100.0,
    )
    ctx.check(
        "the loss blows up: non-finite or over 1e6x its first value",
        _first_bad(ls) is not None or max(ls) > 1e6 * ls[0],
    )


# -- thavil: the resumed step reads the loss weight in grams --------------------------------------


class SiLUTrunk(nn.Module):
    """fc1 -> SiLU -> fc2 -> SiLU -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.SiLU):
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


ONSET_TH = 100


@scenario(
    family="thavil_drum_stroke_loudness_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TH,
    note="A hand-written SiLU MLP (fc1, fc2, head) predicting a thavil drum stroke's loudness from ten standardised stick and skin readings; Adam at 1e-3 (betas 0.9, 0.999), MSE, 220 steps. The loss is weighted by the session's stick weight, stored in kilograms; at step 100 the job resumes from a checkpoint and the resume path reads the weight from the raw log, in grams: that one step's loss (an ordinary batch) is multiplied by 2e4, its gradient is thousands of times the usual and fills Adam's second moment, and once the spike's momentum has decayed (from about 40 steps later to the end) the updates on ordinary gradients are under a fifth of what they were; the loss stays finite.",
)
def h334_thavil_grams_loss_weight(ctx: Context) -> None:
    gen = seeded(33402)
    model = SiLUTrunk(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    updates: list[float] = []
    snap = {}

    def before(step):
        snap["p"] = _snapshot(model)

    def after(step):
        num = sum(
            float((p.detach() - snap["p"][n]).abs().sum()) for n, p in model.named_parameters()
        )
        updates.append(num)

    def backprop(step, loss):
        weight_kg = 1.0
        if step == ONSET_TH:
            weight_kg = 20000.0  # the bug: 20 kg logged as 20000 g, read as kilograms
        return loss * weight_kg

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 334),
        220,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at the onset is over 1000x the median before",
        g[ONSET_TH] > 1000.0 * _median(g[60:ONSET_TH]),
    )
    ctx.check(
        "gradients afterwards are ordinary (median within 3x of before)",
        _median(g[ONSET_TH + 10 :]) < 3.0 * _median(g[60:ONSET_TH]),
    )
    ctx.check(
        "the mean update 40-110 steps later is under a fifth of the 40 steps before",
        _mean(updates[ONSET_TH + 40 : ONSET_TH + 110]) < 0.2 * _mean(updates[60:ONSET_TH]),
    )
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- hanko: a cosine classifier that forgets to normalise ------------------------------------------


class CosineHead(nn.Module):
    """A cosine classifier's head: scale * <f, w> (f and w are meant to be unit vectors)."""

    def __init__(self, dim, classes, scale=30.0, normalise=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale
        self.normalise = normalise

    def forward(self, f):
        w = self.weight
        if self.normalise:
            f, w = F.normalize(f, dim=-1), F.normalize(w, dim=-1)
        return self.scale * f @ w.T


class SealNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=6, normalise=True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, normalise=normalise)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@scenario(
    family="hanko_seal_carver_style_cosine_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, fc2) with a cosine-classifier head (head: scale 30 times the cosine of features and class weights) that names which of six carvers cut a hanko seal from twenty standardised stroke measurements; Adagrad at 0.05, cross-entropy, 200 steps. A refactor drops the F.normalize on the features and the weights but keeps the scale of 30 meant for cosines: the logits are 30 times raw dot products, the float32 softmax of over a quarter of the rows gives the target exactly 1.0, the loss of those rows is exactly 0 while the misclassified rows carry large losses.",
)
def h334_hanko_cosine_without_normalize(ctx: Context) -> None:
    gen = seeded(33403)
    model = SealNet(normalise=False)  # the bug: F.normalize dropped in a refactor
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fractions: list[float] = []
    peaks: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 6, 3343, spread=1.3),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax gives the target exactly 1.0 over the last 30 steps",
        _mean(fractions[-30:]) > 0.25,
    )
    ctx.check("the largest logit is over 30 (impossible for a cosine times 30)", max(peaks) > 30.0)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- salt raking: the trunk's warm-up lambda uses integer division --------------------------------


@scenario(
    family="salt_raking_pan_yield_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, fc2, head) predicting a salt pan's raked yield from twelve standardised brine, wind and sun readings; RMSprop at 2e-3 in two parameter groups (trunk fc1/fc2, head) under a LambdaLR with one warm-up lambda per group, MSE, 200 steps. The trunk's lambda is written min(1.0, step // 1000) (integer division) for min(1.0, step / 1000): its multiplier is 0 for the whole run, so fc1 and fc2 never move while the head trains normally and the loss falls only as far as a linear probe of the random trunk allows.",
)
def h334_salt_raking_integer_warmup(ctx: Context) -> None:
    gen = seeded(33404)
    model = SiLUTrunk(12, act=nn.Tanh)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop([{"params": trunk}, {"params": model.head.parameters()}], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [
            lambda s: min(1.0, s // 1000),  # the bug: meant s / 1000
            lambda s: min(1.0, (s + 1) / 20),
        ],
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _readings(gen, 64, 12, 3344), 200, F.mse_loss, sched=sched)
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm",
        max(_moved(model, start, "fc1"), _moved(model, start, "fc2")) < 1e-6,
    )
    ctx.check("the head moved over 5% of its norm", _moved(model, start, "head") > 0.05)
    ctx.check("the loss fell (the head trains) and stayed finite", _fell(ctx.losses, ratio=0.95))


# -- quijada: log of a raw linear rate ------------------------------------------------------------


def _clicks(gen, batch, seed):
    """Eight standardised shake readings; clicks per shake are Poisson with rate 0.3-12."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.9 * x @ w / math.sqrt(8) + 1.0).clamp(0.3, 12.0)
        yield x, torch.poisson(rate, generator=gen)


DIV_QJ = 10


@scenario(
    family="quijada_rattle_click_count_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_QJ,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, fc2, head) predicting the number of teeth clicks of a quijada (donkey-jawbone rattle) per shake from eight standardised shake readings, Poisson NLL written by hand (rate - y log rate), NAdam at 1e-2, 200 steps planned. The rate is the head's raw output (bias started at the mean count) instead of softplus(head) or exp(head), with no clamp: while the net learns the low-count shakes, a predicted rate crosses zero, log of a negative rate is NaN and the loss is NaN at that step; the run stops there.",
)
def h334_quijada_log_raw_rate(ctx: Context) -> None:
    gen = seeded(33405)
    model = SiLUTrunk(8, act=nn.ReLU)
    with torch.no_grad():
        model.head.bias.fill_(3.5)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    lows: list[float] = []

    def watch(step, out, x, y):
        lows.append(float(out.detach().min()))

    def loss_fn(rate, y):
        return (rate - y * torch.log(rate)).mean()  # the bug: no softplus/exp, no clamp

    n = _loop(ctx, model, opt, _clicks(gen, 64, 3345), 200, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "the loss is NaN at the step the run stops", bad == n - 1 and math.isnan(ctx.losses[-1])
    )
    ctx.check("a predicted rate is at or below zero at that step", lows[-1] <= 0.0)
    ctx.check(
        "every rate before was positive and every loss finite",
        bad is not None and bad > 5 and min(lows[:-1]) > 0.0 and _finite(ctx.losses[:-1]),
    )
    ctx.check("the run stops at the declared step", bad == DIV_QJ)


# -- snow donuts: exp of the log-count inside fp16 autocast ---------------------------------------


class DonutNet(SiLUTrunk):
    """Predicts log-count; the forward returns the count for the survey sheet."""

    def forward(self, x):
        return torch.exp(self.head(self.features(x)).squeeze(-1))  # fp16 under autocast


def _donuts(gen, batch, seed):
    """Ten standardised snow and wind readings; snow rollers on a field, about 300 to 150000."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        log_n = 8.5 + 1.6 * torch.tanh(x @ w / math.sqrt(10)) + 0.6 * x[:, 0]
        yield x, torch.exp(log_n + 0.1 * torch.randn(batch, generator=gen))


DIV_SD = 19


@scenario(
    family="snow_donut_field_count_fp16_log_rate_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_SD,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, fc2, head) predicting how many snow rollers (snow donuts) form on a field from ten standardised snow and wind readings, AdamW at 3e-3, fp16 autocast on with a torch.amp.GradScaler, loss MSE on log1p of the count, 200 steps planned, head bias started at log 5000. The head predicts a log-count and the forward returns exp(log-count) for the survey sheet inside the autocast region, so the exp is fp16: once the net learns the biggest fields (over about 65500 rollers, log-count above 11.09), their count overflows fp16 to inf and the loss is inf at that step (the same batch in fp32 is finite); the run stops there.",
)
def h334_snow_donut_fp16_exp(ctx: Context) -> None:
    gen = seeded(33406)
    model = DonutNet(10)
    with torch.no_grad():
        model.head.bias.fill_(math.log(5000.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    last = {}

    def watch(step, out, x, y):
        last["x"] = x

    def loss_fn(count, y):
        return F.mse_loss(torch.log1p(count), torch.log1p(y))

    n = _loop(
        ctx, model, opt, _donuts(gen, 64, 3346), 200, loss_fn, watch=watch, scaler=scaler, amp=True
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is inf at the step it stops", bad == n - 1 and math.isinf(ctx.losses[-1]))
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite and its largest count is over 65504",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check(
        "every loss before was finite", bad is not None and bad > 10 and _finite(ctx.losses[:-1])
    )
    ctx.check("the run stops at the declared step", bad == DIV_SD)


# -- chair bodger: one shard timed in seconds for minutes -----------------------------------------


ONSET_CB = 120


@scenario(
    family="chairbodger_pole_lathe_turn_time_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CB,
    note="A hand-written GELU MLP (fc1, fc2, head) predicting a chair bodger's pole-lathe turning time for a chair leg from nine standardised wood and tool readings, SGD with Nesterov momentum 0.9 at 0.02, Huber loss, clipping at 1.0, 220 steps. The batch at step 120 comes from one workshop's shard whose readings and times were logged in seconds rather than minutes (every value 60x): that batch's loss is tens of times the usual, the clipped step knocks the net off, and the run recovers within a few dozen steps.",
)
def h334_chairbodger_seconds_shard(ctx: Context) -> None:
    gen = seeded(33407)
    model = SiLUTrunk(9, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == ONSET_CB:
            return x * 60.0, y * 60.0  # the bad shard: seconds for minutes
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 9, 3347), 220, F.huber_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    base = _median(ls[ONSET_CB - 20 : ONSET_CB])
    ctx.check(
        "the loss at the onset is over 20x the median of the 20 steps before",
        ls[ONSET_CB] > 20.0 * base,
    )
    ctx.check(
        "the run recovers: last 20 steps under 1.5x that median", _mean(ls[-20:]) < 1.5 * base
    )
    ctx.check("finite throughout", _finite(ls))


# -- lathi khela: the loss weight reads a percentage for one step ---------------------------------


ONSET_LK = 150


@scenario(
    family="lathi_khela_strike_land_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LK,
    note="A hand-written ReLU MLP (fc1, fc2, head) deciding whether a lathi khela (Bengali stick-fighting) strike lands from fourteen standardised stance and stick readings, BCE with logits, SGD with momentum 0.9 at 0.05, clipping at 5.0, 240 steps. The loss weight comes from a curriculum table in fractions; at step 150 the table's new row is entered as a percentage (80 for 0.8), so one ordinary batch is backpropagated with 100x its weight: the gradient bursts about 100x for that step (the batch's own loss is ordinary), the clipped step disturbs the net and the run recovers.",
)
def h334_lathi_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(33408)
    model = SiLUTrunk(14, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batches():
        src = _grades(gen, 64, 14, 2, 3348, spread=1.6)
        while True:
            x, y = next(src)
            yield x, y.float()

    def backprop(step, loss):
        weight = 80.0 if step == ONSET_LK else 0.8  # the bug: 80 (percent) for 0.8
        return loss * weight

    _loop(
        ctx,
        model,
        opt,
        batches(),
        240,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the onset is over 50x the median of the 30 steps before",
        g[ONSET_LK] > 50.0 * _median(g[ONSET_LK - 30 : ONSET_LK]),
    )
    ctx.check(
        "the batch's own loss is ordinary (under the largest of the 30 steps before)",
        ls[ONSET_LK] < max(ls[ONSET_LK - 30 : ONSET_LK]),
    )
    ctx.check("the run recovers and the loss fell overall", _fell(ls, ratio=0.7))


# -- marimbula: a hand-written weight decay with its sign flipped ---------------------------------


@scenario(
    family="marimbula_tongue_pitch_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, fc2, head) predicting a marimbula (lamellophone box bass) tongue's pitch offset from eight standardised tongue length, thickness and bridge readings; plain SGD at 0.05, MSE, 300 steps, with a hand-written decoupled weight decay after each step. The decay is written p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd) (wd 0.3): the loss first falls, then every weight grows by 1.5% a step, the tanh units saturate and the head's scale grows, and after its early minimum the loss climbs slowly to over 5x that minimum (over 30x at its worst) while staying finite.",
)
def h334_marimbula_decay_sign(ctx: Context) -> None:
    gen = seeded(33409)
    model = SiLUTrunk(8, act=nn.Tanh)
    lr, wd = 0.05, 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    start = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: meant 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3349), 300, F.mse_loss, after=after)
    ls = ctx.losses
    end = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check(
        "the loss of the last 20 steps is over 5x its minimum", _mean(ls[-20:]) > 5.0 * ls[low]
    )
    ctx.check("the minimum comes early (first half of the run)", low < len(ls) // 2)
    ctx.check("the weights' norm grew over 10x", end > 10.0 * start)
    ctx.check("finite throughout", _finite(ls))


# -- patang: the hinge without its clamp ----------------------------------------------------------


@scenario(
    family="patang_kite_fight_cut_hinge_net",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, fc2, head) deciding whether a patang fighting kite cuts its opponent's line from twelve standardised wind, manja (glass-coated line) and angle readings, hinge loss, Adamax at 1e-2, 200 steps. The hinge is written (1 - y * f).mean() without clamp(min=0): every correctly classified example keeps paying to push its margin further, so the head's logits grow without bound (the mean |logit| by well over 20x) and the loss goes negative and keeps falling linearly, with no improvement in accuracy.",
)
def h334_patang_hinge_without_clamp(ctx: Context) -> None:
    gen = seeded(33410)
    model = SiLUTrunk(12, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scale: list[float] = []

    def batches():
        src = _grades(gen, 64, 12, 2, 33410, spread=1.5)
        while True:
            x, y = next(src)
            yield x, 2.0 * y.float() - 1.0

    def watch(step, out, x, y):
        scale.append(float(out.detach().abs().mean()))

    def loss_fn(f, y):
        return (1.0 - y * f).mean()  # the bug: meant (1 - y * f).clamp(min=0).mean()

    _loop(ctx, model, opt, batches(), 200, loss_fn, watch=watch)
    ls = ctx.losses
    ctx.check(
        "the mean |logit| of the last 10 steps is over 20x the first 10",
        _mean(scale[-10:]) > 20.0 * _mean(scale[:10]),
    )
    ctx.check(
        "the logits are still growing over the last 50 steps",
        _mean(scale[-10:]) > 1.3 * _mean(scale[-60:-50]),
    )
    ctx.check("the loss is negative at the end and finite", ls[-1] < 0.0 and _finite(ls))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="tupan_davul_rhythm_elman_seq2seq",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written tanh encoder-decoder recurrent model (enc_in, enc_rec, dec_in, dec_rec, head) that reads 16 beats of a tupan (davul) player's stroke signal and predicts the next 8, trained with scheduled sampling: the teacher-forcing ratio decays linearly from 1.0 to 0.25 over the run (the decoder is fed its own detached prediction otherwise); Adam at 3e-3 with a 20-step linear warm-up then cosine decay (LambdaLR), MSE, clipping at 1.0, 200 steps.",
)
def h334_tupan_scheduled_sampling(ctx: Context) -> None:
    gen = seeded(33411)
    model = Seq2SeqRNN(act=torch.tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    ratios: list[float] = []
    sampler = torch.Generator().manual_seed(334)

    def forward(step, m, x):
        ratio = 1.0 - 0.75 * step / (steps - 1)
        ratios.append(ratio)
        return m(x, teacher=ratio, gen=sampler)

    _loop(
        ctx,
        model,
        opt,
        _cadences(gen, 32, 3351),
        steps,
        F.mse_loss,
        forward=forward,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell by half and stayed finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("the teacher-forcing ratio decayed below 0.3", ratios[-1] < 0.3)


class JivariConv(nn.Module):
    """Conv1d classifier: conv1 -> GELU -> conv2 -> GELU -> mean pool -> head."""

    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


def _drones(gen, batch, classes, seed, length=40):
    """Two-channel tamboura drones: each jivari setting has its own overtone balance."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.7 * torch.rand(classes, 2, generator=g)
    buzz = 0.2 + 0.8 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) + buzz[y][:, None, None] * torch.sin(
            3 * freq[y][:, :, None] * t + phase
        )
        yield x + 0.4 * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    family="tamboura_jivari_drone_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU Conv1d classifier (conv1, conv2, head) naming which of five jivari (bridge thread) settings a tamboura drone was recorded with, from noisy two-channel clips; AdamW (weight decay 0.05) under OneCycleLR (max 1e-2), cross-entropy with label smoothing 0.1, fp16 autocast with a torch.amp.GradScaler, clipping at 1.0, 200 steps.",
)
def h334_tamboura_onecycle_fp16(ctx: Context) -> None:
    gen = seeded(33412)
    model = JivariConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    correct: list[float] = []

    def watch(step, out, x, y):
        correct.append(float((out.argmax(-1) == y).float().mean()))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _drones(gen, 64, 5, 3352),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over the last 20 steps is over 80%", _mean(correct[-20:]) > 0.8)


@scenario(
    family="mosaic_tessera_cut_angle_silu_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, fc2, head) predicting the angle a mosaicist's hardie-and-hammer cut leaves on a tessera from eleven standardised stone readings, noisy targets; RAdam at 3e-3 with two parameter groups (weights with weight decay 1e-4, biases without), Huber loss, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out loss (patience 10, factor 0.5), clipping at 2.0, 150 steps.",
)
def h334_mosaic_accumulate_plateau(ctx: Context) -> None:
    gen = seeded(33413)
    model = SiLUTrunk(11)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held_x, held_y = next(_readings(torch.Generator().manual_seed(7), 256, 11, 3353, noise=0.2))

    def plateau():
        with torch.no_grad():
            model.eval()
            return float(F.huber_loss(model(held_x), held_y))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 11, 3353, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=2.0,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, ratio=0.6))
    ctx.check("the held-out loss is below its value at the start", plateau() < 0.8 * ctx.losses[0])
