"""Held-out set 349 (``h349_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a coffee-cupping flavour-note classifier whose softmax
temperature is divided by 1000 twice (softmax saturates), a fishing-lure wobble-rate Huber
regressor whose epoch-tail batch goes through a padded path that sums the loss instead of
averaging it (one gradient burst), a beekeeper's swarm-trap site REINFORCE policy that uses the raw
logit of the chosen site for its log-probability (the head's logits grow without bound), a
rush-light burn-time regressor whose EMA evaluation never swaps the live weights back (one loss
spike it recovers from), a foehn gust-count Poisson net whose log-intensity is log(relu(z)) with no
floor (log 0), a ploughman's furrow-depth IRNN whose identity recurrent init is scaled by a gain of
1.12 from another layer's config field (gradients grow through time), a wool dye-vat shade classifier whose
activation sparsity weight is typed 1.0 for 1e-3 (ReLU units die), a fly-rod builder's
blank-action regressor whose embedding group's lr key is misspelt (embedding frozen), a
stand-up paddle-board split-time regressor fed one GPS shard with -9999 for missing values (one
corrupted batch), a dew-pond seepage tanh regressor whose OneCycleLR max_lr is typed 0.8 for
0.08 (lr past 2/sharpness), and three controls (a crofter's sheep-gathering grid REINFORCE policy
with a running-mean reward baseline and an entropy bonus; a wet-plate collodion exposure GELU
regressor under fp16 autocast with a GradScaler, AdamW, OneCycleLR and accumulation; a
nyckelharpa key-tone Conv1d classifier with SGD Nesterov, ReduceLROnPlateau, label smoothing and
clipping).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, out, y)``
    returns the loss actually backpropagated, ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a
    non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, out, y) if backprop is not None else loss
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


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
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


def _sharpness(model, loss_fn, x, y, iters=15) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- coffee cupping: the softmax temperature is divided by 1000 twice -----------------------------


class CuppingNet(Trunk):
    """A ReLU trunk over twelve cupping-sheet readings naming one of six flavour notes, logits
    divided by a softmax temperature."""

    def __init__(self, temperature):
        super().__init__(12, 64, out=6)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="coffee_cupping_flavour_note_temperature_relu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming one of six flavour notes from twelve cupping-sheet readings (aroma, acidity, body, roast), Adam at 1e-3, cross-entropy on logits divided by a softmax temperature, 200 steps. The config stores the temperature in thousandths (700 for 0.7); the config loader already divides by 1000 and the model's constructor divides by 1000 again, so the logits are divided by 7e-4: every logit is multiplied by about 1400, and as the classes separate the softmax of most rows rounds the target probability to exactly 1.0 in float32.",
)
def h349_coffee_cupping_temperature_divided_twice(ctx: Context) -> None:
    gen = seeded(34901)
    cfg_temperature = 700 / 1000  # the loader's conversion
    model = CuppingNet(cfg_temperature / 1000)  # the constructor converts again
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 349, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("the logits are divided by a temperature under 1e-3", model.temperature < 1e-3)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check(
        "the collapsed share grew: last 20 steps over twice the first 5",
        _mean(collapsed[-20:]) > 2.0 * _mean(collapsed[:5]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fishing lure: the epoch-tail batch sums its loss -------------------------------------------

LURE_ONSET = 150


@scenario(
    family="fishing_lure_wobble_rate_silu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LURE_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a crankbait lure's wobble rate in the tank (standardised) from ten readings of lip angle, body shape and retrieve speed, SGD with Nesterov momentum 0.9 at 1e-2, Huber loss, clipping at norm 20, 220 steps, batches of 128. The loader's epoch is 150 full batches and a tail; the tail batch (step 150) goes through a padding-aware code path that was written with reduction='sum' where the main path averages, so that one ordinary batch's gradient is about 128x the others. The data are clean and the logged per-sample loss does not move; the burst is clipped and the run carries on.",
)
def h349_fishing_lure_tail_batch_sum(ctx: Context) -> None:
    gen = seeded(34902)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss, out, y):
        if step == LURE_ONSET:  # the tail batch's padded path
            return F.huber_loss(out, y, reduction="sum")
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 3490),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=20.0,
    )
    g = ctx.grad_norms
    others = g[LURE_ONSET - 30 : LURE_ONSET] + g[LURE_ONSET + 1 : LURE_ONSET + 31]
    ctx.check(
        "the gradient at the tail batch is over 50x the median of its neighbours",
        g[LURE_ONSET] > 50.0 * _median(others),
    )
    ls = ctx.losses
    ctx.check(
        "the tail batch is clean: its logged loss is under 2x the 10 steps before",
        ls[LURE_ONSET] < 2.0 * _mean(ls[LURE_ONSET - 10 : LURE_ONSET]),
    )
    ctx.check("the loss fell and stayed finite", _fell(ls))


# -- beekeeper's swarm traps: REINFORCE with raw logits for log-probabilities --------------------


class TrapPolicy(nn.Module):
    """Six readings of the day (temperature, wind, colony strength) -> a site among eight."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 32)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x)))


def _swarm_days(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 8, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        yield x, torch.sigmoid(x @ w - 0.5)  # each site's chance of taking a swarm today


@scenario(
    family="beekeeper_swarm_trap_site_raw_logit_reinforce_policy",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written REINFORCE learner (fc1, act1, head: eight logits) choosing which of eight bait-hive sites a beekeeper sets a swarm trap at from six readings of the day, on a generated contextual bandit whose reward is 1 when the site takes a swarm (a Bernoulli of a site- and day-dependent chance), plain SGD at 5e-2, 240 updates of 64 days. The policy loss was written -(logits.gather(1, a) * r).mean(): the raw logit of the chosen site stands in for its log-probability (the log_softmax was left out). Rewards are never negative and nothing normalises the logits, so every rewarded choice pushes its logit up by a constant: the head's logits climb without bound (the peak |logit| grows by well over 20x), while the surrogate loss falls without limit.",
)
def h349_swarm_trap_raw_logit_policy(ctx: Context) -> None:
    gen = seeded(34903)
    model = TrapPolicy()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    ctx.attach(model, opt)
    days = _swarm_days(gen, 64, 3491)
    peaks, rewards = [], []
    for _ in range(240):
        x, chance = next(days)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        probs = torch.softmax(logits.detach().float(), -1)
        if not torch.isfinite(probs).all():
            probs = torch.full_like(probs, 1 / 8)
        a = torch.multinomial(probs, 1, generator=gen)
        r = torch.bernoulli(chance.gather(1, a), generator=gen)
        loss = -(logits.gather(1, a) * r).mean()  # meant: logits.log_softmax(-1).gather(1, a)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        rewards.append(float(r.mean()))
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "the peak |logit| over the last 20 updates is over 20x that of the first 5",
        _mean(peaks[-20:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check(
        "the peak |logit| rises through the run (last quarter over twice the third)",
        _mean(peaks[-60:]) > 2.0 * _mean(peaks[-120:-60]),
    )
    ctx.check("the surrogate loss falls without limit (last under -10)", ctx.losses[-1] < -10.0)


# -- rush light: the EMA evaluation never swaps the live weights back ----------------------------

RUSH_ONSET = 120


@scenario(
    family="rush_light_pith_burn_time_ema_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RUSH_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how long a tallow-dipped rush light burns (standardised) from ten readings of pith diameter, peel width, dip count and tallow temperature, AdamW at 3e-3, MSE, 260 steps. An exponential moving average of the weights is kept for evaluation with its decay typed 0.9999 for 0.99, so after 120 steps it is still close to the initial weights. At step 120 the evaluation swaps the EMA weights in and its early return skips the swap back: training resumes from near-initial weights, the loss jumps at once from about 0.03 back to near its starting level (over 4x) and the run relearns, back to its previous level within about 120 steps. No gradient burst causes it and the data are clean.",
)
def h349_rush_light_ema_swap_back_skipped(ctx: Context) -> None:
    gen = seeded(34904)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    decay = 0.9999  # meant 0.99

    def after(step):
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(decay).add_(v, alpha=1 - decay)

    def before(step):
        if step == RUSH_ONSET:  # evaluate with the EMA weights; the restore is never reached
            model.load_state_dict(ema)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3492),
        260,
        F.mse_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    pre = _mean(ls[RUSH_ONSET - 10 : RUSH_ONSET])
    ctx.check("the loss at the swap is over 4x the 10 steps before", ls[RUSH_ONSET] > 4.0 * pre)
    ctx.check(
        "the loss before the swap had fallen under a fifth of its start",
        pre < 0.2 * _mean(ls[:5]),
    )
    ctx.check(
        "the run recovers: the last 20 steps average under 1.5x the loss before the swap",
        _mean(ls[-20:]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- foehn gusts: log-intensity is log(relu(z)) with no floor -----------------------------------


class LogRelu(nn.Module):
    """The log-intensity of the gust count, meant log(softplus(z)) or a clamped relu."""

    def __init__(self):
        super().__init__()
        self.saw_inf = False

    def forward(self, z):
        out = torch.log(F.relu(z))
        self.saw_inf = bool(torch.isinf(out).any())
        return out


class FoehnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(48, 1)
        self.intensity = LogRelu()
        nn.init.constant_(self.head.bias, 2.0)  # started at the mean hourly count
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, x):
        return self.intensity(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _gusts(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(1.2 * x @ w / math.sqrt(8) - 0.3)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


FOEHN_BREAK = 100


@scenario(
    family="fohn_wind_gust_count_log_relu_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("intensity",),
    diverges=FOEHN_BREAK,
    heldout=True,
    note="A hand-written tanh net (fc1, act1, fc2, act2, head, intensity) predicting the hourly count of foehn gusts over 25 m/s at a valley station from eight readings (cross-Alpine pressure difference, crest wind, humidity), Poisson NLL exp(s) - y*s on the log-intensity s, Adagrad at 2e-3, 200 steps planned. The intensity module computes s = log(relu(z)) (meant log(softplus(z)) or a floor at 1e-6); the head's bias starts at 2 so every z is positive at first, but calm hours with zero gusts pull the intensity of their readings towards 0, and once a row's z crosses 0 the relu gives exactly 0 and log(0) = -inf: the loss is non-finite at that step, where the run stops.",
)
def h349_foehn_log_relu_no_floor(ctx: Context) -> None:
    gen = seeded(34905)
    model = FoehnNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-3)
    infs = []

    def watch(step, out, x, y):
        infs.append(model.intensity.saw_inf)

    ran = _loop(ctx, model, opt, _gusts(gen, 64, 3493), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {FOEHN_BREAK}", bad == FOEHN_BREAK)
    ctx.check(
        "the intensity module produced -inf at that step and never before",
        infs[-1] and not any(infs[:-1]),
    )
    ctx.check("the run stopped there", ran == FOEHN_BREAK + 1)


# -- ploughman's furrow: the IRNN identity init is scaled by 1.12 ------------------------------


class FurrowIRNN(nn.Module):
    """A hand-written ReLU RNN over 48 draught readings along a furrow (inp, rec, act, head);
    keeps the hidden states of its last pass."""

    def __init__(self, gain, hidden=32):
        super().__init__()
        self.inp = nn.Linear(3, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.inp.weight, std=0.02)
        nn.init.zeros_(self.inp.bias)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))  # IRNN: meant the identity
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _furrows(gen, batch, seed, length=48):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = 0.3 * torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh((x @ w)[:, -10:].mean(1) * 3.0)
        yield x, y


@scenario(
    family="ploughman_furrow_depth_irnn_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU IRNN (inp, rec, act, head) reading 48 draught-force and tilt readings taken along a furrow behind a horse plough and predicting the furrow's final depth (standardised), SGD with momentum 0.9 at 1e-3, MSE, clipping at norm 1, 150 steps. The identity init of the recurrent matrix (IRNN) was scaled by a gain of 1.12 carried over from a config field meant for another layer, instead of 1.0: each step through time multiplies the backward signal by about 1.12, so at the start the gradient reaching the first reading's hidden state is over 100x that at the last and the recurrent weight's gradient is hundreds of times the clipping threshold; clipping keeps the run from blowing up while the gradient still grows through time over the first fifty steps.",
)
def h349_ploughman_irnn_gain(ctx: Context) -> None:
    gen = seeded(34906)
    model = FurrowIRNN(gain=1.12)  # meant 1.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios, rec_grads = [], []

    def inspect_states():
        first = model.states[0].grad
        last = model.states[-1].grad
        if first is not None and last is not None:
            ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    ctx.attach(model, opt)
    batches = _furrows(gen, 32, 3494)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        inspect_states()
        rec_grads.append(float(model.rec.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check(
        "at the start the gradient at the first reading is over 100x that at the last",
        bool(ratios) and ratios[0] > 100.0,
    )
    ctx.check(
        "the gradient still grows through time over the first 50 steps (mean ratio over 20x)",
        _mean(ratios[:50]) > 20.0,
    )
    ctx.check(
        "the recurrent weight's gradient over the first 10 steps is over 100x the clip norm",
        _mean(rec_grads[:10]) > 100.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- wool dye vat: the activation sparsity weight is typed 1.0 for 1e-3 ---------------------------

DYE_PROBE_SEED = 3495


@scenario(
    family="wool_dye_vat_shade_sparse_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming which of eight shades a skein comes out of a wool dye vat from ten readings (dye load, vat temperature, mordant, time), RAdam at 1e-2, cross-entropy plus an L1 penalty on act2's activations (the per-skein L1 norm, averaged over the batch) meant to keep the features sparse, 240 steps. The penalty weight was typed 1.0 for 1e-3: the penalty drives fc2's pre-activations below zero, and a unit that is never positive gets no gradient from the task or the penalty again, so most of act2's units die within the first hundred steps (about nine in ten by the end) and stay dead; the classification loss stays at chance (ln 8) throughout.",
)
def h349_wool_dye_sparsity_weight_typo(ctx: Context) -> None:
    gen = seeded(34907)
    model = Trunk(10, 64, out=8)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    probe_gen = torch.Generator().manual_seed(DYE_PROBE_SEED)
    px, _ = next(_grades(probe_gen, 512, 10, 8, 349, spread=0.9))
    l1 = 1.0  # meant 1e-3
    acts = {}
    model.act2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    dead = []

    def backprop(step, loss, out, y):
        return loss + l1 * acts["a"].abs().sum(1).mean()

    def after(step):
        with torch.no_grad():
            a = model.act2(model.fc2(model.act1(model.fc1(px))))
        dead.append((a <= 0).all(0))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 8, 349, spread=0.9),
        240,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        after=after,
    )
    frac = [float(d.float().mean()) for d in dead]
    ctx.check("under 10% of act2's units are dead after the first step", frac[0] < 0.1)
    ctx.check("over 60% of act2's units are dead at the end", frac[-1] > 0.6)
    ctx.check("the loss stays near chance: last 20 steps over 1.9", _mean(ctx.losses[-20:]) > 1.9)
    ctx.check(
        "the units dead at step 120 are still dead at the end",
        bool(dead[120].any()) and bool((dead[-1] | ~dead[120]).all()),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fly-rod builder: the embedding group's lr key is misspelt -----------------------------------


class RodActionNet(nn.Module):
    """A blank's material/taper code (embedding) and six measured readings -> tip deflection."""

    def __init__(self, blanks=16, dim=8):
        super().__init__()
        self.embed = nn.Embedding(blanks, dim)
        self.fc1 = nn.Linear(dim + 6, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        code, readings = x
        h = torch.cat([self.embed(code), readings], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _blanks(gen, batch, seed, blanks=16):
    g = torch.Generator().manual_seed(seed)
    stiff = 1.5 * torch.randn(blanks, generator=g)
    w = torch.randn(6, generator=g)
    while True:
        code = torch.randint(0, blanks, (batch,), generator=gen)
        r = torch.randn(batch, 6, generator=gen)
        yield (
            (code, r),
            stiff[code] + 0.4 * torch.tanh(r @ w) + 0.05 * torch.randn(batch, generator=gen),
        )


@scenario(
    family="fly_rod_builder_blank_action_embedding_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("embed",),
    diverges=None,
    heldout=True,
    note="A hand-written regressor (embed: a 16-entry embedding of the blank's material and taper code; fc1, act1, fc2, act2, head: a GELU MLP over the embedding and six measured readings) predicting a fly-rod blank's tip deflection under a standard load, Adam with two parameter groups, MSE, 240 steps. The groups' learning rates are looked up by name in a config dict with a default of 0.0, and the key was misspelt 'embeding' for 'embed': the embedding group trains at lr 0 and never moves, while the MLP (3e-3) moves by well over 5% of its norm; the embedding receives ordinary gradients all along, and the MLP learns around its random codes, so the loss falls and stays finite.",
)
def h349_fly_rod_embedding_lr_key_typo(ctx: Context) -> None:
    gen = seeded(34908)
    model = RodActionNet()
    lrs = {"embeding": 1e-2, "mlp": 3e-3}  # the key was meant to be "embed"
    rest = [p for n, p in model.named_parameters() if not n.startswith("embed.")]
    opt = torch.optim.Adam(
        [
            {"params": list(model.embed.parameters()), "lr": lrs.get("embed", 0.0)},
            {"params": rest, "lr": lrs.get("mlp", 0.0)},
        ]
    )
    emb0 = _flat(model.embed)
    mlp0 = torch.cat([p.detach().reshape(-1) for p in rest]).clone()
    emb_grads = []

    def watch(step, out, x, y):
        model.embed.weight.register_hook(lambda g: emb_grads.append(float(g.norm())))

    _loop(ctx, model, opt, _blanks(gen, 64, 3496), 240, F.mse_loss, watch=watch)
    mlp1 = torch.cat([p.detach().reshape(-1) for p in rest])
    ctx.check(
        "the embedding moved under 1e-6 of its norm", _rel_change(emb0, _flat(model.embed)) < 1e-6
    )
    ctx.check("the MLP moved over 5% of its norm", _rel_change(mlp0, mlp1) > 0.05)
    ctx.check("the embedding group's lr is 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("the embedding receives nonzero gradients", bool(emb_grads) and min(emb_grads) > 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- stand-up paddle board: one GPS shard logs missing values as -9999 ---------------------------

SUP_ONSET = 130


@scenario(
    family="stand_up_paddle_board_race_split_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SUP_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a stand-up paddle-board racer's 500 m split (standardised) from eight readings (stroke rate, board speed, wind, current, heart rate), ASGD at 1e-2, Huber loss, clipping at norm 5, 240 steps. One GPS watch's shard, loaded at step 130, logs missing readings as the sentinel -9999 and was not masked before standardisation: about a third of that batch's speed and split values are -9999. That one batch's loss is over 50x and its gradient over 20x the others'; the step is clipped and the run goes back to its previous loss within a few dozen steps.",
)
def h349_sup_board_gps_sentinel_shard(ctx: Context) -> None:
    gen = seeded(34909)
    model = Trunk(8, 64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    bad_gen = torch.Generator().manual_seed(3497)

    def alter(step, x, y):
        if step != SUP_ONSET:
            return x, y
        miss = torch.rand(len(y), generator=bad_gen) < 0.33
        x = x.clone()
        y = y.clone()
        x[miss, 1] = -9999.0
        y[miss] = -9999.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3498), 240, F.huber_loss, alter=alter, clip=5.0)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[SUP_ONSET - 10 : SUP_ONSET])
    ctx.check("the loss at the shard is over 50x the 10 steps before", ls[SUP_ONSET] > 50.0 * pre)
    ctx.check(
        "the gradient at the shard is over 20x the median of the 30 steps before",
        g[SUP_ONSET] > 20.0 * _median(g[SUP_ONSET - 30 : SUP_ONSET]),
    )
    ctx.check(
        "the run recovers: the last 20 steps average under 2x the loss before the shard",
        _mean(ls[-20:]) < 2.0 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- dew pond: OneCycleLR's max_lr typed 0.8 for 0.08 ----------------------------------------


@scenario(
    family="dew_pond_puddling_clay_seep_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the daily seepage of a dew pond's puddled-clay lining (standardised) from ten readings of clay thickness, lime, straw layer and rainfall, plain SGD (momentum not cycled), MSE, OneCycleLR over 300 steps planned. The max_lr found by an lr sweep, 8e-2, was typed 8e-1: OneCycleLR starts at max_lr/25 = 0.032, trains normally for a while, and climbs towards 0.8; lr times the top Hessian eigenvalue (power iteration on a fixed batch) passes 2 during the climb, the loss oscillates with growing amplitude and overflows (step 87), where the run stops.",
)
def h349_dew_pond_onecycle_max_lr_paste(ctx: Context) -> None:
    gen = seeded(34910)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=0.8,  # meant 8e-2
        total_steps=300,
        cycle_momentum=False,
    )
    batches = _readings(gen, 64, 10, 3499)
    px, py = next(batches)
    products = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    crossed = [s for s, p in products if p > 2.0 and s < end]
    ctx.check("lr x sharpness starts under 2", products[0][1] < 2.0)
    ctx.check("lr x sharpness passes 2 before the blow-up", bool(crossed))
    ctx.check(
        "the loss blows up: non-finite or over 1000x its start",
        bad is not None or max(ls) > 1000.0 * ls[0],
    )


# -- control: crofter's sheep gather, REINFORCE with a baseline and an entropy bonus --------------


class GatherPolicy(nn.Module):
    """A one-hot cell of a 5x5 in-bye field -> four moves for the collie."""

    def __init__(self, cells=25):
        super().__init__()
        self.fc1 = nn.Linear(cells, 64)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x)))


@scenario(
    family="crofter_sheep_gather_grid_reinforce_baseline_policy",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written REINFORCE learner (fc1, act1, head) moving a collie on a generated 5x5 in-bye field from a random start to the fank gate in a corner (reward 1 on arrival, -0.02 a move, episodes of at most 12 moves, 32 episodes an update), log_softmax log-probabilities, returns-to-go minus an exponential running-mean reward baseline, an entropy bonus of 0.01, Adam at 1e-2, clipping at norm 1, 150 updates. The return rises and the policy keeps some entropy.",
)
def h349_crofter_gather_reinforce_control(ctx: Context) -> None:
    gen = seeded(34911)
    model = GatherPolicy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    moves = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    goal = torch.tensor([4, 4])
    baseline = 0.0
    returns, entropies = [], []
    for _ in range(150):
        pos = torch.randint(0, 5, (32, 2), generator=gen)
        done = (pos == goal).all(1)
        logps, ents, rews, alive = [], [], [], []
        for _t in range(12):
            logits = model(F.one_hot(pos[:, 0] * 5 + pos[:, 1], 25).float())
            logp = logits.log_softmax(-1)
            a = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(1)
            live = (~done).float()
            logps.append(logp.gather(1, a[:, None]).squeeze(1) * live)
            ents.append(-(logp.exp() * logp).sum(-1) * live)
            pos = torch.where(done[:, None], pos, (pos + moves[a]).clamp(0, 4))
            arrived = (pos == goal).all(1) & ~done
            rews.append(live * (arrived.float() - 0.02))
            alive.append(live)
            done = done | arrived
        r = torch.stack(rews, 1)
        to_go = r.flip(1).cumsum(1).flip(1)
        ret = float(r.sum(1).mean())
        adv = to_go - baseline
        logp_t = torch.stack(logps, 1)
        ent = torch.stack(ents, 1).sum() / torch.stack(alive, 1).sum().clamp_min(1.0)
        loss = -(logp_t * adv).sum(1).mean() - 0.01 * ent
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        baseline = 0.9 * baseline + 0.1 * ret
        returns.append(ret)
        entropies.append(float(ent))
    ctx.check(
        "the return rose: last 20 updates over the first 20 by 0.2",
        _mean(returns[-20:]) > _mean(returns[:20]) + 0.2,
    )
    ctx.check("the policy keeps entropy over 0.1 nats", min(entropies) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- control: wet-plate collodion exposure under fp16 autocast ------------------------------------


@scenario(
    family="wet_plate_collodion_exposure_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a wet-plate collodion exposure time (standardised, log seconds) from twelve readings of light meter, collodion age, silver bath strength and lens aperture, AdamW at 3e-3 peak under OneCycleLR, MSE, fp16 autocast with a torch.amp.GradScaler, accumulation over 4 micro-batches, clipping at norm 1 after unscaling, 120 steps. The loss falls and stays finite.",
)
def h349_wet_plate_fp16_control(ctx: Context) -> None:
    gen = seeded(34912)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=120)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3500),
        120,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=4,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the scale stays finite and over 1", all(math.isfinite(s) and s > 1 for s in ctx.scales)
    )


# -- control: nyckelharpa key tones, Conv1d with SGD Nesterov and ReduceLROnPlateau ----------------


class KeyToneNet(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(self.pool(h).flatten(1))


def _key_tones(gen, batch, classes=6, length=64):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 0.05 + 0.03 * y.float()
        phase = 6.283 * torch.rand(batch, 1, generator=gen)
        wave = torch.sin(6.283 * f[:, None] * t + phase)
        wave = wave + 0.4 * torch.sin(2 * 6.283 * f[:, None] * t + phase)
        noise = 0.2 + 0.4 * torch.rand(batch, 1, generator=gen)  # bowing noise varies
        yield wave + noise * torch.randn(batch, length, generator=gen), y


@scenario(
    family="nyckelharpa_key_tone_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) naming which of six keys of a nyckelharpa sounded from a 64-sample bowed waveform with varying bowing noise, SGD with Nesterov momentum 0.9 at 5e-2, ReduceLROnPlateau on a fixed held-out batch, cross-entropy with label smoothing 0.1, clipping at norm 1, 200 steps. The loss falls and accuracy rises far above chance.",
)
def h349_nyckelharpa_conv1d_control(ctx: Context) -> None:
    gen = seeded(34913)
    model = KeyToneNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    hx, hy = next(_key_tones(torch.Generator().manual_seed(3501), 256))

    def plateau():
        with torch.no_grad():
            model.eval()
            return float(F.cross_entropy(model(hx), hy))

    _loop(
        ctx,
        model,
        opt,
        _key_tones(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    with torch.no_grad():
        acc = float((model(hx).argmax(1) == hy).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 0.6 (chance 0.17)", acc > 0.6)
    ctx.check("finite throughout", _finite(ctx.losses))
