"""Held-out set 510 (``h510_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: a khipu knot-sequence copy LSTM (peephole, layer norm inside the cell) whose recurrent
init gain is sqrt(hidden) (exploding gradients, SGD momentum); a keirin sprint-power regressor
fed power in milliwatts under fp16 autocast (amp overflow, AdamW + GradScaler); a dry-tooling
pick-torque regressor whose evaluation EMA swap is left in the loop (a one-off loss spike, Adam);
an uneven-bars release-move cosine classifier whose feature normalisation was dropped (softmax
collapse, NAdam); a belay-device catch classifier with weight_decay typed 0 (output logits grow,
RMSprop); a prusik-hitch slip BCE net whose bias init is -3 (dead ReLUs, SGD momentum); a
saltation sand-flux regressor whose trunk warm-up uses floor division (a frozen layer, Adagrad);
a marine-layer burn-off Gaussian NLL net with one batch of sentinel readings (Adam); a swimrun
paddle-split regressor with one step's loss weight in percent (SGD momentum, accumulation); a
fin-swimming monofin kick net whose range normaliser has no clamp (0/0, Adamax).

Controls: a mountaineer rope-team pace regressor with an auxiliary loss weight decaying from 1
to 0 (Adam); a rhythmic-gymnastics ribbon-toss classifier under fp16 autocast + GradScaler
(AdamW, warm-up + cosine, label smoothing, clipping); a platform-dive entry-splash tied-weight
autoencoder (SGD Nesterov, ReduceLROnPlateau, accumulation, clipping, Huber).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after, before):
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` (a multiplier
    of the backpropagated loss), ``after(step, loss)``; stops after a non-finite loss once
    ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
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


# -- 1. exploding gradients: khipu copy LSTM, recurrent gain sqrt(hidden) --------------------------


class _PeepholeLNCell(nn.Module):
    """An LSTM cell with peephole connections (i, f see c_{t-1}; o sees c_t) and layer norm
    on the cell state before the output tanh."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.w_x = nn.Linear(d_in, 4 * hidden)
        self.w_h = nn.Linear(hidden, 4 * hidden, bias=False)
        nn.init.orthogonal_(self.w_h.weight, gain=gain)
        self.peep_i = nn.Parameter(0.1 * torch.randn(hidden))
        self.peep_f = nn.Parameter(0.1 * torch.randn(hidden))
        self.peep_o = nn.Parameter(0.1 * torch.randn(hidden))
        self.ln_c = nn.LayerNorm(hidden)

    def forward(self, x, h, c):
        i, f, g, o = (self.w_x(x) + self.w_h(h)).chunk(4, -1)
        i = torch.sigmoid(i + self.peep_i * c)
        f = torch.sigmoid(f + self.peep_f * c)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.peep_o * c)
        return o * torch.tanh(self.ln_c(c)), c


class _CopyLSTM(nn.Module):
    def __init__(self, vocab=10, hidden=64, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, 16)
        self.cell = _PeepholeLNCell(16, hidden, gain)
        self.head = nn.Linear(hidden, vocab)
        self.states = []

    def forward(self, idx):
        b, t = idx.shape
        h = torch.zeros(b, self.hidden)
        c = torch.zeros(b, self.hidden)
        e = self.embed(idx)
        self.states, outs = [], []
        for s in range(t):
            h, c = self.cell(e[:, s], h, c)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            outs.append(h)
        return self.head(torch.stack(outs, 1))


def _khipu_batches(gen, batch=32, symbols=6, delay=30, vocab=10):
    """Copy task: 6 knot codes (2..9), a gap of blanks (0), a recall marker (1), then the codes
    again; the loss is on the recall positions only (target -100 elsewhere)."""
    while True:
        codes = torch.randint(2, vocab, (batch, symbols), generator=gen)
        blank = torch.zeros(batch, delay, dtype=torch.long)
        marker = torch.ones(batch, 1, dtype=torch.long)
        tail = torch.zeros(batch, symbols, dtype=torch.long)
        x = torch.cat([codes, blank, marker, tail[:, :-1]], 1)
        y = torch.full_like(x, -100)
        y[:, -symbols:] = codes
        yield x, y


def _seq_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)


@scenario(
    family="khipu_knot_sequence_copy_peephole_ln_lstm",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.w_h", "cell"),
    diverges=None,
    heldout=True,
    note="Khipu knot-sequence copy model: a hand-written LSTM with peephole connections and layer "
    "norm on the cell state, over a generated copy task (6 knot codes, a 30-step gap, a recall "
    "marker, the codes back), cross-entropy on the recall positions, SGD momentum 0.9. The init "
    "helper passes gain=sqrt(hidden)=8 to the orthogonal init of the recurrent matrix (it meant "
    "1): the backward pass through time multiplies the gradient at each step, dL/dh at the first "
    "step is hundreds of times dL/dh at the last, gradient norms are erratic and huge and the "
    "copy is never learnt beyond chance.",
)
def h510_khipu_copy_recurrent_gain(ctx) -> None:
    gen = seeded(5101)
    model = _CopyLSTM(gain=math.sqrt(64))  # meant gain=1.0
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    ratios = []

    def after(step, loss):
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))

    losses, norms = _train(ctx, model, opt, _khipu_batches(gen), 120, _seq_ce, after=after)
    healthy = _CopyLSTM(gain=1.0)
    x, y = next(_khipu_batches(torch.Generator().manual_seed(1)))
    _seq_ce(healthy(x), y).backward()
    ref = grad_norm(healthy)
    ctx.check("dL/dh at the first step over 100x the last at step 0", ratios[0] > 100)
    ctx.check("the first gradient over 20x a gain-1 model's", norms[0] > 20 * ref)
    ctx.check(
        "the copy never learnt (last 10 over 0.8x chance log 8)",
        _mean(losses[-10:]) > 0.8 * math.log(8),
    )


# -- 2. amp overflow: sprint power in milliwatts under fp16 autocast ------------------------------

KEIRIN_ONSET = 110


def _keirin_batches(gen, batch=64, d_in=8, seed=5102):
    """Per-lap power-meter readings (kW, about 0.3..1.8) and a normalised sprint-speed target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = 0.3 + 1.5 * torch.rand(batch, d_in, generator=gen)
        yield x, torch.tanh((x - 1.05) @ w / math.sqrt(d_in))


@scenario(
    family="keirin_derny_sprint_power_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=KEIRIN_ONSET,
    heldout=True,
    onset=KEIRIN_ONSET,
    note="Keirin sprint-speed regressor (GELU MLP on per-lap power-meter readings in kW, MSE, "
    "AdamW, fp16 autocast + GradScaler). From step 110 a new export of the power meter writes "
    "milliwatts (1e6x): fc1's fp16 outputs overflow 65504 to inf under autocast, the loss is "
    "non-finite at step 110 (the same batch in float32 is finite).",
)
def h510_keirin_milliwatts_fp16(ctx) -> None:
    gen = seeded(5102)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _keirin_batches(gen)
    losses, seen = [], {}
    for step in range(200):
        x, y = next(batches)
        if step >= KEIRIN_ONSET:
            x = x * 1e6  # the new export: milliwatts
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model(x)
        if step == KEIRIN_ONSET:
            seen["fp16_inf"] = bool(torch.isinf(h1).any())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(F.mse_loss(model(x), y)))
        loss = F.mse_loss(out.float(), y)
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained before (under 0.6x the start)", _mean(losses[100:110]) < 0.6 * losses[0])
    ctx.check(f"the loss is non-finite at step {KEIRIN_ONSET}", first_bad == KEIRIN_ONSET)
    ctx.check("fc1's fp16 output holds inf", seen.get("fp16_inf", False))
    ctx.check("the same batch in float32 is finite", seen.get("fp32_finite", False))


# -- 3. loss spike: the evaluation EMA swap left in the training loop ------------------------------

DRYTOOL_ONSET = 140


@scenario(
    family="drytool_pick_hook_torque_ema_swap_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=DRYTOOL_ONSET,
    note="Dry-tooling pick-hook torque regressor (SiLU MLP on pick angle, rock-edge depth, shaft "
    "lean and crampon load features, MSE, Adam). At step 140 an evaluation helper swaps the EMA "
    "weights into the model and never swaps back; the EMA (decay 0.999, updated from step 0) "
    "still sits near the initial weights: the loss jumps once and the run recovers. No gradient "
    "burst, no bad data.",
)
def h510_drytool_ema_swap(ctx) -> None:
    gen = seeded(5103)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = copy.deepcopy(model)

    def before(step):
        if step == DRYTOOL_ONSET:
            model.load_state_dict(ema.state_dict())  # the swap-back line is missing

    def after(step, loss):
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.999).add_(pm, alpha=0.001)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5103), 260, F.mse_loss, before=before, after=after
    )
    k = DRYTOOL_ONSET
    pre = _mean(losses[k - 20 : k])
    others = norms[k - 40 : k] + norms[k + 30 :]
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at the swap over 3x the 20 steps before", losses[k] > 3 * pre)
    ctx.check("recovered (last 20 under 1.5x pre)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("no gradient burst (under 10x the median)", norms[k] < 10 * _median(others))
    ctx.check("finite", _finite(losses))


# -- 4. softmax collapse: a cosine head without its normalisation ----------------------------------


class _CosineHeadNet(nn.Module):
    def __init__(self, d_in, hidden, classes, scale):
        super().__init__()
        self.body = _Net(d_in, hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        f = self.body(x)  # meant: F.normalize(f, dim=-1), and the head's rows normalised too
        return self.scale * self.head(f)


@scenario(
    family="uneven_bars_release_move_unnormalised_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Uneven-bars release-move classifier (ReLU MLP body, a cosine-similarity head with "
    "scale 64 on 14 swing, grip and flight features, 6 release moves, cross-entropy, NAdam). A "
    "refactor dropped the F.normalize calls on the features and the head rows but kept the "
    "scale 64: the logits are 30x raw dot products and the softmax saturates, most rows' target "
    "probability rounds to exactly 1.0 in float32.",
)
def h510_uneven_bars_cosine_scale(ctx) -> None:
    gen = seeded(5104)
    model = _CosineHeadNet(14, 48, 6, scale=64.0)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    batches = _grades(gen, 64, 14, 6, 5104, spread=0.8)
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    ctx.check("over half the rows' target probability is 1.0", collapsed_fraction(logits, y) > 0.5)
    spread = float((logits.max(1).values - logits.min(1).values).median())
    ctx.check("median logit spread over 30", spread > 30)
    ctx.check("finite", _finite(losses))


# -- 5. output logit divergence: weight_decay typed 0 ----------------------------------------------


@scenario(
    family="belay_device_catch_class_no_decay_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Belay-device catch classifier (ReLU MLP on rope speed, device friction, climber mass "
    "and fall-factor features, 4 catch classes that separate cleanly, cross-entropy, RMSprop at "
    "3e-3). The config's weight_decay is typed 0 for 5e-4: nothing holds the head, its logits "
    "keep growing to push the already-right probabilities to 1, over 20x their start.",
)
def h510_belay_no_decay(ctx) -> None:
    gen = seeded(5105)
    model = _Net(12, 48, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3, weight_decay=0.0)  # typed for 5e-4
    batches = _grades(gen, 64, 12, 4, 5105, spread=0.5)
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(probe[0]).abs().max()))

    probe = next(batches)
    with torch.no_grad():
        peak0 = float(model(probe[0]).abs().max())
    losses, _ = _train(ctx, model, opt, batches, 240, F.cross_entropy, classifier=True, after=after)
    ctx.check("the head's logits grew over 20x", peaks[-1] > 20 * peak0)
    ctx.check("still growing (last over 1.3x step 120)", peaks[-1] > 1.3 * peaks[120])
    ctx.check("the loss fell (under 0.1x)", _fell(losses, ratio=0.1))
    ctx.check("finite", _finite(losses))


# -- 6. loss of plasticity: the hidden biases initialised at -3 -------------------------------------


@scenario(
    family="prusik_hitch_slip_dead_relu_bce_net",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Prusik-hitch slip net (ReLU MLP on wraps, cord diameter ratio, load and sheath "
    "glaze features, slip or hold, BCE, SGD momentum). The init copies a gating recipe: fc2's "
    "biases are set to -3, most of its ReLUs never fire on any input, get no gradient and stay "
    "dead; the net learns far less than it should.",
)
def h510_prusik_dead_bias(ctx) -> None:
    gen = seeded(5106)
    model = _Net(10, 48, 1)
    nn.init.constant_(model.fc2.bias, -3.0)  # copied from a gate-bias recipe
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9)
    g = torch.Generator().manual_seed(5106)
    w = torch.randn(10, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, (torch.sin(x @ w / 2) + 0.3 * x[:, 0] > 0).float()

    feed = batches()
    losses, _ = _train(ctx, model, opt, feed, 200, F.binary_cross_entropy_with_logits)
    x, _ = next(feed)
    with torch.no_grad():
        h = model.fc2(model.act1(model.fc1(x)))
    dead = float((h <= 0).all(0).float().mean())
    ctx.check("over 80% of fc2's units dead at the end", dead > 0.8)
    ctx.check("the loss stayed above 0.35 (last 20)", _mean(losses[-20:]) > 0.35)
    ctx.check("finite", _finite(losses))


# -- 7. update ratio out of range: the trunk's warm-up uses floor division -------------------------


@scenario(
    family="saltation_sand_flux_floor_div_warmup_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Aeolian saltation sand-flux regressor (tanh MLP on friction velocity, grain size, "
    "surface moisture and crust features, MSE, Adagrad with two param groups: fc1 (the trunk, "
    "with a 500-step warm-up) and the rest). The LambdaLR warm-up for fc1 reads min(1, s // 500) "
    "instead of min(1, s / 500): its factor is 0 for the whole 220-step run, fc1 never moves "
    "while the rest trains; the loss still falls.",
)
def h510_saltation_floor_div_warmup(ctx) -> None:
    gen = seeded(5107)
    model = _Net(10, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 5e-2}, {"params": rest, "lr": 5e-2}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, s // 500), lambda s: 1.0],  # meant s / 500
    )
    fc10 = model.fc1.weight.detach().clone()
    head0 = model.head.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5107), 220, F.mse_loss, sched=sched)
    ctx.check("fc1 moved under 1e-6 (relative)", _rel_change(model.fc1.weight, fc10) < 1e-6)
    ctx.check("the head moved over 10%", _rel_change(model.head.weight, head0) > 0.1)
    ctx.check("the loss still fell (under 0.8x)", _fell(losses, ratio=0.8))
    ctx.check("finite", _finite(losses))


# -- 8. data outlier: one batch of sentinel readings -----------------------------------------------

MARINE_ONSET = 120


class _GaussNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="marine_layer_burnoff_hour_gaussian_nll_net",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=MARINE_ONSET,
    note="Marine-layer burn-off forecaster (SiLU MLP with a mean and a log-variance head on "
    "inversion height, sea-surface temperature, onshore wind and humidity features, Gaussian "
    "NLL, Adam, clipping at 1). One batch at step 120 comes from a buoy whose dead sensors write "
    "the sentinel -999 into the features: the loss and the gradient burst once, the run "
    "recovers.",
)
def h510_marine_layer_sentinel(ctx) -> None:
    gen = seeded(5108)
    model = _GaussNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == MARINE_ONSET:
            x = x.clone()
            x[:, 2:5] = -999.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 5108, noise=0.1),
        240,
        _gauss_nll,
        alter=alter,
        clip=1.0,
    )
    k = MARINE_ONSET
    pre = _mean(losses[k - 20 : k])
    ctx.check("trained before (pre under the start - 0.5)", pre < _mean(losses[:10]) - 0.5)
    ctx.check("the loss at the bad batch over pre + 50", losses[k] > pre + 50)
    ctx.check("the gradient there over 20x the median", norms[k] > 20 * _median(norms[k - 40 : k]))
    ctx.check("recovered (last 20 under pre + 0.3)", _mean(losses[-20:]) < pre + 0.3)
    ctx.check("finite", _finite(losses))


# -- 9. gradient spike: one step's loss weight in percent ------------------------------------------

SWIMRUN_ONSET = 130


@scenario(
    family="swimrun_paddle_split_accum_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SWIMRUN_ONSET,
    note="Swimrun split-time regressor (ReLU MLP on stroke rate, pull-buoy use, shoe drag and "
    "water temperature features, Huber, SGD momentum 0.9, accumulation 2, clipping at 2). At the "
    "curriculum boundary (step 130) the loss weight is read from a table in percent: 100 instead "
    "of 1.0 for that one step. The gradient is 100x for one step while the logged loss is "
    "ordinary; clipping holds the update and the run goes on.",
)
def h510_swimrun_percent_weight(ctx) -> None:
    gen = seeded(5109)
    model = _Net(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def weight(step):
        return 100.0 if step == SWIMRUN_ONSET else 1.0

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 5109),
        240,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        weight=weight,
        clip=2.0,
        accumulate=2,
    )
    k = SWIMRUN_ONSET
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    pre = _mean(losses[k - 20 : k])
    ctx.check("the gradient at the boundary over 30x the median", norms[k] > 30 * _median(others))
    ctx.check("the logged loss there is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("no divergence (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 10. nonfinite: a range normaliser with no clamp -----------------------------------------------

FINSWIM_NAN = 95


class _RangeNorm(nn.Module):
    def forward(self, x):
        lo = x.min(1, keepdim=True).values
        hi = x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)  # meant: / (hi - lo).clamp_min(1e-6)


class _KickNet(nn.Module):
    def __init__(self, t=16, hidden=32):
        super().__init__()
        self.norm = _RangeNorm()
        self.fc1 = nn.Linear(t, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.norm(x)))).squeeze(-1)


def _kick_batches(gen, batch=64, t=16):
    """Windows of monofin depth-gauge readings (a kick oscillation) and the kick efficiency."""
    phase = torch.linspace(0, 2 * math.pi, t)
    while True:
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        freq = 1.0 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(freq * phase) + 0.05 * torch.randn(batch, t, generator=gen) + 3.0
        yield x, (freq.squeeze(1) - 1.5) * 2


@scenario(
    family="fin_swim_monofin_kick_range_norm_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("norm",),
    diverges=FINSWIM_NAN,
    heldout=True,
    onset=FINSWIM_NAN,
    note="Fin-swimming monofin kick-efficiency net (ReLU MLP on 16-sample depth-gauge windows, "
    "each window range-normalised, MSE, Adamax). The normaliser divides by max - min with no "
    "clamp: at step 95 one window comes from a gauge that froze (a constant reading), "
    "0/0 = NaN, and the loss is NaN at step 95.",
)
def h510_fin_swim_range_zero(ctx) -> None:
    gen = seeded(5110)
    model = _KickNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == FINSWIM_NAN:
            x = x.clone()
            x[11] = 3.2  # the frozen gauge
        return x, y

    losses, _ = _train(ctx, model, opt, _kick_batches(gen), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    with torch.no_grad():
        probe = model.norm(torch.full((1, 4), 2.0))
    ctx.check(f"the loss is NaN at step {FINSWIM_NAN}", first_bad == FINSWIM_NAN)
    ctx.check("a constant window normalises to NaN", bool(torch.isnan(probe).all()))
    ctx.check("trained before (under 0.7x the start)", _mean(losses[85:95]) < 0.7 * losses[0])


# -- controls -------------------------------------------------------------------------------------


class _AuxNet(nn.Module):
    """A pace head and an auxiliary reconstruction head on a shared trunk."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.trunk = _Net(d_in, hidden, hidden)
        self.pace = nn.Linear(hidden, 1)
        self.recon = nn.Linear(hidden, d_in)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.pace(h).squeeze(-1), self.recon(h)


@scenario(
    family="mountaineer_rope_team_pace_aux_decay_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mountaineering rope-team pace regressor (ReLU trunk, a pace head with MSE and an "
    "auxiliary head reconstructing the altimeter, heart-rate and slope inputs, Adam). The "
    "auxiliary weight decays linearly from 1 to 0 over the run, so the logged total loss falls "
    "partly because the weight does. Control.",
)
def h510_mountaineer_aux_decay(ctx) -> None:
    gen = seeded(5111)
    model = _AuxNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 5111, noise=0.1)
    steps, totals, mains = 220, [], []
    for step in range(steps):
        x, y = next(batches)
        w = 1.0 - step / (steps - 1)
        pace, recon = model(x)
        main = F.mse_loss(pace, y)
        total = main + w * F.mse_loss(recon, x)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        totals.append(float(total.detach()))
        mains.append(float(main.detach()))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("the total loss fell (under 0.3x)", _fell(totals, ratio=0.3))
    ctx.check("the main loss fell too (under 0.6x)", _fell(mains, ratio=0.6))
    ctx.check("finite", _finite(totals))


class _RibbonConv(nn.Module):
    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


def _ribbon_batches(gen, batch=48, t=32, classes=5):
    """Wrist IMU traces of a ribbon toss: each class a different spiral frequency, noisy."""
    s = torch.linspace(0, 1, t)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (1.0 + y.float())[:, None] * 2 * math.pi
        base = torch.stack([torch.sin(f * s), torch.cos(f * s), torch.sin(0.5 * f * s)], 1)
        yield base + 0.8 * torch.randn(batch, 3, t, generator=gen), y


@scenario(
    family="rhythmic_gym_ribbon_toss_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rhythmic-gymnastics ribbon-toss classifier (Conv1d on wrist IMU traces, 5 toss "
    "types, noisy batches, fp16 autocast + GradScaler, AdamW, linear warm-up then cosine decay, "
    "label smoothing 0.1, clipping at 1). Control.",
)
def h510_ribbon_fp16_warmup_cosine(ctx) -> None:
    gen = seeded(5112)
    model = _RibbonConv()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _ribbon_batches(gen)
    losses = []
    for _step in range(steps):
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
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell (under 0.5x)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _splash_batches(gen, batch=32, d_in=16, seed=5113):
    """Splash-profile readings on a low-dimensional manifold plus noise; target: the input."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = torch.tanh(z) @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="platform_dive_entry_splash_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Platform-dive entry-splash autoencoder (the decoder reuses the encoder's weight, "
    "transposed: tied weights; Huber loss on 16 splash-profile readings, SGD Nesterov, "
    "ReduceLROnPlateau, accumulation 2, clipping at 1). Control.",
)
def h510_platform_dive_tied_ae(ctx) -> None:
    gen = seeded(5113)
    model = _TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _splash_batches(gen),
        240,
        lambda o, y: F.huber_loss(o, y, delta=0.2),
        after=after,
        clip=1.0,
        accumulate=2,
    )
    ctx.check("the loss fell (under 0.5x)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
