"""Held-out set 409 (``h409_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a kendo strike-order attention classifier whose query/key param group lr is typed 1e-1
for 1e-3 (attention logits grow), a sheepdog-trial whistle-command Elman cell whose recurrent
weight is initialised with gain 3.0 for 1.0 (gradients grow through time), a glassblowing
gather-temperature regressor whose auxiliary loss weight is 1e4 for one step (Adam's second moment
poisoned), a hurdy-gurdy buzz Conv1d classifier fed one shard of raw ADC counts (one corrupted
batch), a fumarole gas-puff Poisson net whose rate clamp was dropped (log 0), a maple sap-flow
fp16 regressor fed a time feature in seconds (fp16 overflow), a falconry stoop-speed regressor
whose trunk group lr is typed 1e-9 (a frozen layer), a skittles cheese-throw ReLU regressor on
RAdam with lr typed 3e-1 (ReLUs die), a bell-foundry grade classifier with its temperature read
in percent (softmax saturates) and a dragon-boat stroke-rate regressor with one step's loss
summed instead of averaged (a gradient burst).

Controls: a kilim weaving-motif FractalNet (mean joins, local drop-path, SGD Nesterov, warm-up
and cosine decay), a pole-vault pole-bend Gaussian-NLL tanh net (RMSprop, warm-up then StepLR,
clipping) and a canal lock-keeper tied-weight autoencoder classifier (Adam under OneCycleLR, fp16
autocast with a GradScaler, label smoothing, accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, digit_batches, grad_norm, scenario, seeded


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


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _leaks(gen, batch, d_in, seed, flip=0.1):
    """Binary leak outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.sin(2 * x[:, 0]) > 0.1).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _rhythms(gen, batch, classes, seed, length=48, channels=2):
    """Drum traces: each class a pulse train at its own period, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.relu(torch.sin(freqs[y][:, :, None] * t + phase)) ** 3
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
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


# -- faults ----------------------------------------------------------------------------------------


def _strikes(gen, batch, length, vocab, seed):
    """Kendo bout sequences: the label is whether a 'men' (token 1) strike comes after the first
    'kote' (token 2); the order of the two marks decides it."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        a = torch.randint(0, length, (batch,), generator=gen)
        b = (a + torch.randint(1, length, (batch,), generator=gen)) % length
        rows = torch.arange(batch)
        x[rows, a] = 1
        x[rows, b] = 2
        yield x, (a > b).long()


class _StrikeAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.last_logit = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logit = float(scores.detach().abs().max())
        return self.out(torch.softmax(scores, -1) @ v)


class _StrikeNet(nn.Module):
    def __init__(self, vocab=24, length=16, dim=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = _StrikeAttention(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


@scenario(
    family="kendo_men_kote_order_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Kendo bout strike-order classifier (embeddings, one hand-written self-attention, "
    "LayerNorm, mean pool) on AdamW with the query/key param group's lr typed 1e-1 for 1e-3 and "
    "no weight decay on it. q and k grow step after step and the pre-softmax logits "
    "q.k/sqrt(d) grow many times over.",
)
def h409_kendo_qk_group_lr_typo(ctx) -> None:
    gen = seeded(4091)
    model = _StrikeNet()
    qk = [p for n, p in model.named_parameters() if n.startswith(("attn.q.", "attn.k."))]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 1e-1, "weight_decay": 0.0}, {"params": rest}],
        lr=1e-3,
        weight_decay=1e-2,
    )
    data = _strikes(gen, 64, 16, 24, seed=91)
    sizes = []
    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.cross_entropy,
        classifier=True,
        inspect=lambda s: sizes.append(model.attn.last_logit),
    )
    ctx.check("max |q.k/sqrt(d)| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing over the last 100 steps", sizes[-1] > 1.5 * sizes[-100])
    ctx.check("finite", _finite(ctx.losses))
    print("logit", sizes[0], sizes[100], sizes[-1])


class _WhistleRNN(nn.Module):
    """A hand-written Elman cell unrolled over the whistle trace; keeps each step's state."""

    def __init__(self, d_in, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
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


def _whistles(gen, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, torch.tanh(x[:, -6:] @ w).mean(1)


def _time_ratio(model):
    return float(model.states[0].grad.norm() / model.states[-1].grad.norm().clamp_min(1e-12))


@scenario(
    family="sheepdog_trial_whistle_command_elman_cell",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Sheepdog-trial whistle-command regressor, a hand-written Elman cell unrolled over 30 "
    "steps whose recurrent weight is initialised orthogonal with gain 3.0 typed for 1.0. The "
    "backward pass grows through time: dL/dh at the first step is many times dL/dh at the last. "
    "Clipping keeps the run finite.",
)
def h409_sheepdog_whistle_recurrent_gain(ctx) -> None:
    gen = seeded(4092)
    model = _WhistleRNN(3, gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    data = _whistles(gen, 32, 30, seed=92)
    ratios = []
    _loop(
        ctx,
        model,
        opt,
        data,
        120,
        F.mse_loss,
        clip=1.0,
        inspect=lambda s: ratios.append(_time_ratio(model)),
    )
    seeded(4092)
    ref = _WhistleRNN(3, gain=1.0)
    x, y = next(_whistles(torch.Generator().manual_seed(4), 32, 30, seed=92))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/dh_0 over 10x dL/dh_29 at the start", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", _time_ratio(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))
    print("ratio0", ratios[0], "median", _median(ratios), "ref", _time_ratio(ref))


@scenario(
    family="glassblowing_gather_temperature_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="Glassblowing gather-temperature GELU regressor on Adam; an auxiliary "
    "thermocouple-consistency loss is switched on for one calibration step at step 90 with its "
    "weight typed 1e4 for 1e-4. That step's gradient is over 1000x the usual, Adam's second "
    "moment fills and the per-weight updates stall afterwards while the gradients are not "
    "smaller.",
)
def h409_glassblowing_aux_weight_ramp(ctx) -> None:
    gen = seeded(4093)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 10, seed=93)
    moves, prev = [], [_flat(model)]

    def backprop(step, loss):
        w = 1e4 if step == 90 else 0.0
        out = model.last_out
        return loss + w * ((out - out.mean()) ** 2).mean()

    def hook(m, i, o):
        m.last_out = o

    model.register_forward_hook(hook)

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(ctx, model, opt, data, 220, F.mse_loss, backprop=backprop, after=after)
    g = ctx.grad_norms
    ctx.check("gradient over 1000x at step 90", g[90] > 1000 * _median(g[70:90]))
    ctx.check("updates stall after", _median(moves[110:220]) < 0.1 * _median(moves[50:90]))
    ctx.check("gradients not smaller", _median(g[110:220]) > 0.5 * _median(g[50:90]))
    ctx.check("finite", _finite(ctx.losses))
    print("moves", _median(moves[50:90]), _median(moves[110:220]))


def _chants(gen, batch, classes, seed, length=40):
    """Hurdy-gurdy drone traces: each class a buzz at its own rate, normalised to unit scale."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.8 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sign(torch.sin(freqs[y][:, None] * t + phase))
        yield (x + 0.4 * torch.randn(batch, length, generator=gen))[:, None], y


class _BuzzNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 24, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = self.act2(self.conv2(F.max_pool1d(self.act1(self.conv1(x)), 2)))
        return self.head(h.mean(-1))


@scenario(
    family="hurdy_gurdy_trompette_buzz_conv1d_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Hurdy-gurdy trompette-buzz classifier (ReLU Conv1d, 5 buzz kinds) on plain SGD with "
    "clipping; at step 120 one recording session's shard arrives as raw 12-bit ADC counts "
    "(x2048) because its normalisation step was skipped. That one batch's loss and gradient jump; "
    "the run recovers.",
)
def h409_hurdy_gurdy_raw_adc_shard(ctx) -> None:
    gen = seeded(4094)
    model = _BuzzNet(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    data = _chants(gen, 64, 5, seed=94)

    def alter(step, x, y):
        return (x * 2048.0, y) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 220, F.cross_entropy, classifier=True, alter=alter, clip=1.0)
    pre = _median(ctx.losses[100:120])
    ctx.check("loss over 20x at step 120", ctx.losses[120] > 20 * pre)
    ctx.check(
        "gradient over 20x at step 120", ctx.grad_norms[120] > 20 * _median(ctx.grad_norms[100:120])
    )
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ctx.losses))
    print("pre", pre, "at", ctx.losses[120])


class _CountNet(nn.Module):
    """Poisson rate of fumarole vents; the rate head's clamp(min=1e-6) was dropped."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.ReLU()
        self.rate = nn.Linear(32, 1)
        nn.init.constant_(self.rate.bias, 1.5)
        self.last_rate = None

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        mu = F.relu(self.rate(h)).squeeze(-1)  # was .clamp(min=1e-6)
        self.last_rate = mu.detach()
        return mu


def _poisson_nll(mu, y):
    return (mu - y * torch.log(mu)).mean()


def _vents(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, torch.poisson(torch.exp(1.5 * x @ w - 1.0), generator=gen)


@scenario(
    family="fumarole_vent_gas_puff_count_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=76,
    heldout=True,
    note="Fumarole gas-puff count regressor with a Poisson NLL mu - y log mu; the rate head was "
    "relu(linear(h)).clamp(min=1e-6) and the clamp was dropped. As the fit pushes quiet vents' "
    "rates down a row's rate reaches exactly 0 and log(0) makes the loss non-finite.",
)
def h409_fumarole_poisson_missing_clamp(ctx) -> None:
    gen = seeded(4095)
    model = _CountNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    data = _vents(gen, 64, 8, seed=95)
    _loop(ctx, model, opt, data, 300, _poisson_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before the NaN", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("a rate exactly 0 at the NaN step", bool((model.last_rate == 0).any()))
    print("first non-finite step", bad)


def _sap_runs(gen, batch, seed, start_hour=0.0):
    """Maple sap-flow readings: five standardised weather features and a sixth, the time since
    tapping, that the pipeline should have scaled to days; the target is the flow."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g) / math.sqrt(5)
    step = 0
    while True:
        x = torch.randn(batch, 5, generator=gen)
        hours = start_hour + 500.0 * (step + torch.rand(batch, 1, generator=gen))
        y = torch.tanh(x @ w) + 0.05 * torch.randn(batch, generator=gen)
        step += 1
        yield torch.cat([x, hours], 1), y


class _SapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.norm1 = nn.LayerNorm(48)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, 1)
        self.peak = 0.0

    def forward(self, x):
        z = self.fc1(x)
        self.peak = float(z.detach().float().abs().max())
        return self.head(self.act2(self.fc2(self.act1(self.norm1(z))))).squeeze(-1)


@scenario(
    family="maple_sap_flow_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=131,
    heldout=True,
    note="Maple sap-flow regressor trained under fp16 autocast with a GradScaler; the 'time since "
    "tapping' feature is fed in seconds where the pipeline should have scaled it to days. fc1 is "
    "followed by a LayerNorm, so the loss stays ordinary, but the feature grows with the run and "
    "fc1's fp16 output passes 65504: the forward overflows to inf and "
    "the loss is non-finite; the same forward in float32 is finite.",
)
def h409_maple_sap_seconds_fp16(ctx) -> None:
    gen = seeded(4096)
    model = _SapNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    data = _sap_runs(gen, 64, seed=96)
    peaks = []
    last = {}

    def alter(step, x, y):
        last["x"] = x
        return x, y

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        alter=alter,
        inspect=lambda s: peaks.append(model.peak),
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        ref = model(last["x"])
    ctx.check("loss non-finite under fp16", bad is not None)
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("fc1 output past the fp16 max at the break", not math.isfinite(peaks[-1]))
    ctx.check("the same batch in float32 is finite", bool(torch.isfinite(ref).all()))
    print("first non-finite", bad, "peaks", peaks[:: max(1, len(peaks) // 8)])


@scenario(
    family="falconry_lure_swing_stoop_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Falconry lure-swing stoop-speed regressor (SiLU MLP, Huber) on Adagrad with two param "
    "groups; the trunk group's lr is typed 1e-9 for 1e-2. fc1 receives gradients but barely "
    "moves; the head group trains at 1e-2.",
)
def h409_falconry_trunk_group_lr_typo(ctx) -> None:
    gen = seeded(4097)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    trunk = list(model.fc1.parameters())
    rest = list(model.fc2.parameters()) + list(model.head.parameters())
    opt = torch.optim.Adagrad([{"params": trunk, "lr": 1e-9}, {"params": rest, "lr": 1e-2}])
    data = _readings(gen, 64, 10, seed=97)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    gs = []

    def inspect(step):
        gs.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, data, 200, F.huber_loss, inspect=inspect)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(w0, model.fc1.weight) < 1e-5)
    ctx.check("fc1 receives gradients", _median(gs) > 1e-4)
    ctx.check("head moved over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


def _dead_over(acts):
    return float((torch.cat(acts) <= 0).all(0).float().mean())


def _bowling_run(lr, steps, ctx=None):
    gen = seeded(4098)
    model = _MLP(10, 64, 1, act=nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    data = _readings(gen, 64, 10, seed=98)
    acts = []
    model.act2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    if ctx is not None:
        _loop(ctx, model, opt, data, steps, F.mse_loss)
    else:
        for _ in range(steps):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _dead_over(acts[-50:]), _dead_over(acts[:5])


@scenario(
    family="skittles_alley_cheese_throw_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Skittles-alley cheese-throw pin-count ReLU regressor on RAdam with lr typed 3e-1 for "
    "3e-3. Once RAdam's rectified warm-up lets the large steps through, most of act2's units are "
    "pushed negative on every input; they receive no gradient again.",
)
def h409_skittles_radam_lr_typo(ctx) -> None:
    dead, dead0 = _bowling_run(3e-1, 200, ctx)
    intended, _ = _bowling_run(3e-3, 200)
    ctx.check("over 50% of act2 dead over the last 50 steps", dead > 0.5)
    ctx.check("under 20% dead at the start", dead0 < 0.2)
    ctx.check("under 20% dead at the intended 3e-3", intended < 0.2)
    print("dead", dead, "start", dead0, "intended", intended)


class _TempNet(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.GELU()
        self.head = nn.Linear(48, classes)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="bell_foundry_tuning_partial_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bell-foundry tuning-partial grade classifier (GELU MLP, 6 grades) on Adamax; the "
    "softmax temperature is read from a config in percent (0.01 written for 1.0 as '1%'). The "
    "logits are divided by 0.01, and the softmax saturates: most rows' target probability rounds "
    "to exactly 1.0 in float32.",
)
def h409_bell_foundry_temperature_percent(ctx) -> None:
    gen = seeded(4099)
    model = _TempNet(12, 6)
    model.temperature = 0.01
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _grades(gen, 64, 12, 6, seed=99)
    fr, fr_ok = [], []
    probe = next(_grades(torch.Generator().manual_seed(5), 256, 12, 6, seed=99))

    def after(step):
        with torch.no_grad():
            raw = model.head(model.act1(model.fc1(probe[0])))
        fr.append(collapsed_fraction(raw / 0.01, probe[1]))
        fr_ok.append(collapsed_fraction(raw, probe[1]))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("over half the rows exactly 1.0 over the last 30 steps", _mean(fr[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(fr_ok[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))
    print("collapsed", _mean(fr[-30:]), "at 1.0", _mean(fr_ok[-30:]))


@scenario(
    family="dragon_boat_drum_stroke_rate_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Dragon-boat drum stroke-rate regressor (ReLU MLP) on SGD with momentum, accumulation "
    "over 2 micro-batches and clipping; at step 140 (the checkpoint step) the loss is built with "
    "reduction='sum' from the evaluation helper instead of 'mean' for one step. The gradient "
    "bursts ~64x on a clean batch while the logged (mean) loss is ordinary.",
)
def h409_dragon_boat_sum_reduction_step(ctx) -> None:
    gen = seeded(4100)
    model = _MLP(10, 48, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    data = _readings(gen, 64, 10, seed=100)

    def backprop(step, loss):
        return loss * 64.0 if step == 140 else loss

    _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
        accumulate=2,
    )
    g = ctx.grad_norms
    ctx.check("gradient over 30x at step 140", g[140] > 30 * _median(g[120:140]))
    ctx.check(
        "logged loss ordinary at step 140", ctx.losses[140] < 2 * _median(ctx.losses[120:140])
    )
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.3 * _mean(ctx.losses[120:140]))
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


class _FractalBlock(nn.Module):
    """A fractal block of ``depth`` columns: f_1 = conv, f_{c+1} = join(conv, f_c o f_c); the
    join is the elementwise mean of the surviving branches; local drop-path drops each branch
    of a join with probability p in training (keeping at least one)."""

    def __init__(self, c_in, c_out, depth, drop=0.15):
        super().__init__()
        self.depth = depth
        self.drop = drop
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
        )
        if depth > 1:
            self.first = _FractalBlock(c_in, c_out, depth - 1, drop)
            self.second = _FractalBlock(c_out, c_out, depth - 1, drop)

    def forward(self, x):
        short = self.conv(x)
        if self.depth == 1:
            return short
        branches = [short, self.second(self.first(x))]
        if self.training:
            keep = [b for b in branches if torch.rand(()) >= self.drop]
            branches = keep or [branches[int(torch.randint(0, 2, ()))]]
        return torch.stack(branches).mean(0)


class _FractalNet(nn.Module):
    def __init__(self, classes=10, width=12):
        super().__init__()
        self.block1 = _FractalBlock(1, width, 3)
        self.block2 = _FractalBlock(width, 2 * width, 2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.max_pool2d(self.block1(x.reshape(-1, 1, 8, 8)), 2)
        x = self.block2(x)
        return self.head(x.mean((2, 3)))


@scenario(
    family="kilim_weaving_motif_fractalnet",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Kilim weaving-motif classifier on 8x8 motif tiles (the digits set): a hand-written "
    "FractalNet (fractal blocks whose columns join by an elementwise mean, local drop-path 0.15 "
    "in training) on SGD with Nesterov momentum and weight decay, linear warm-up then cosine "
    "decay, clipping. Control.",
)
def h409_kilim_fractalnet_control(ctx) -> None:
    gen = seeded(4101)
    model = _FractalNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps, warm = 150, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    data = digit_batches(gen, 64)
    _loop(ctx, model, opt, data, steps, F.cross_entropy, classifier=True, clip=2.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, k=15, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


class _StemNet(nn.Module):
    """Mean and softplus std heads over a tanh trunk (the Gaussian NLL done right)."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(32, 1)
        self.std = nn.Linear(32, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.std(h)) + 1e-3], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1] ** 2)


@scenario(
    family="pole_vault_pole_bend_gaussian_nll_tanh_net",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Pole-vault pole-bend regressor with a Gaussian NLL (softplus std + 1e-3) on RMSprop, "
    "linear warm-up then StepLR halving, clipping at 1.0, noisy readings. Control.",
)
def h409_pole_vault_bend_control(ctx) -> None:
    gen = seeded(4102)
    model = _StemNet(8)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=20)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, step_lr], milestones=[20])
    data = _readings(gen, 64, 8, seed=102, noise=0.1)
    _loop(ctx, model, opt, data, 200, _gauss_nll, clip=1.0, sched=sched)
    ctx.check("loss fell by over 0.5 nats", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:20]) - 0.5)
    ctx.check("finite", _finite(ctx.losses))


class _TiedRowCoder(nn.Module):
    """A tied-weight autoencoder-classifier: the decoder reuses the encoder's weight."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.act(self.enc(x))
        self.recon = F.linear(h, self.enc.weight.t(), self.dec_bias)
        return self.head(h)


@scenario(
    family="canal_lock_keeper_paddle_tied_autoencoder_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Canal lock-keeper paddle-state classifier: a tied-weight autoencoder (decoder = "
    "encoder weight transposed) with a classifier head, cross-entropy with label smoothing 0.1 "
    "plus 0.1 x reconstruction MSE, Adam under OneCycleLR, fp16 autocast with a GradScaler, "
    "accumulation over 2. Control.",
)
def h409_canal_lock_tied_control(ctx) -> None:
    gen = seeded(4103)
    model = _TiedRowCoder(12, 32, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    data = _grades(gen, 32, 12, 5, seed=103, spread=1.2)
    held = {}

    def alter(step, x, y):
        held["x"] = x
        return x, y

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    def backprop(step, loss):
        return loss + 0.1 * F.mse_loss(model.recon.float(), held["x"])

    _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        loss_fn,
        classifier=True,
        alter=alter,
        backprop=backprop,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, k=15, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
