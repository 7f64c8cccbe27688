"""Held-out set 384 (``h384_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before. Faults: an Iditarod checkpoint-split hypernetwork (a task embedding
generates the weights of a small target MLP) whose hidden-layer weight generator gen1 has its
param group's lr typed 2e-9 for 2e-3 (frozen), a coxswain-call stroke-rate tanh Elman RNN whose
recurrent matrix is initialised orthogonal with a gain typed 3.0 for 1.0 (gradients grow through
time), a moonmilk cave-deposit Laplace-NLL net whose scale head is a ReLU without its clamp_min
(log 0 and x/0, NaN), a yak-butter-tea churn-temperature tanh regressor whose L2 penalty is
subtracted instead of added (the loss climbs slowly), a thunder-sheet rattle BCE net fed one shard
with two columns in millimetres (one corrupted batch), a xiao-flute breath-sustain Huber regressor
whose loss weight is 100 for one step (one gradient burst), a spring-drum reverb-tail tanh
regressor whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness), a cabasa shake-pattern
classifier whose softmax temperature is typed 2e-3 for 2e0 (softmax collapse), an ocean-drum
bead-roll ReLU classifier with SGD Nesterov at lr 0.8 for 0.008 (dead ReLUs), and a theatre
wind-machine gust-sound classifier trained with F.nll_loss on raw logits (log_softmax dropped; the
head's logits grow). Controls: a camel-milk churn-yield hypernetwork whose generated weights are
scaled by 1/sqrt(fan_in) (Adam, clipping), a lion-roar string-drum Conv1d classifier (SGD momentum,
OneCycleLR, label smoothing, clipping), and a slackline bounce-height SiLU Huber regressor (fp16
autocast with a GradScaler, AdamW groups, accumulation, ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    gives the validation loss for ReduceLROnPlateau. Stops after a non-finite loss (once
    ``ctx.step`` has seen it); returns the number of steps run."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
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


# -- data -----------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Readings labelled by a hidden linear rule with a little label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _task_readings(gen, batch, d_in, tasks, seed, noise=0.05):
    """Per-task regression: each task (a team, a herd) has its own nonlinear rule. Yields
    ((task ids, readings), targets)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(tasks, d_in, generator=g)
    v = torch.randn(tasks, d_in, generator=g)
    while True:
        t = torch.randint(0, tasks, (batch,), generator=gen)
        x = torch.randn(batch, d_in, generator=gen)
        a = (x * w[t]).sum(1) / math.sqrt(d_in)
        b = (x * v[t]).sum(1) / math.sqrt(d_in)
        y = torch.tanh(1.3 * a) + 0.5 * torch.cos(b)
        yield (t, x), y + noise * torch.randn(batch, generator=gen)


def _sequences(gen, batch, seed, length=30, channels=3):
    """Stroke traces: the target is a weighted sum of the first few steps' readings (the catch),
    so the loss depends on remembering early inputs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, generator=g)
    while True:
        x = torch.randn(batch, length, channels, generator=gen)
        y = torch.tanh(x[:, :3] @ w).mean(1)
        yield x, y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
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


# -- hypernetworks --------------------------------------------------------------------------------


class HyperMLP(nn.Module):
    """A hypernetwork: a task embedding goes through ``body``; ``gen1`` generates the target MLP's
    hidden layer (weights and bias), ``gen2`` its output layer. The target MLP (d_in -> hidden ->
    1, tanh) is evaluated per sample with the generated weights. ``fan_in_scale`` multiplies the
    generated weights by 1/sqrt(fan_in)."""

    def __init__(self, tasks, d_in, hidden=16, embed=8, width=32, fan_in_scale=True):
        super().__init__()
        self.d_in, self.hidden = d_in, hidden
        self.task = nn.Embedding(tasks, embed)
        self.body = nn.Linear(embed, width)
        self.body_act = nn.ReLU()
        self.gen1 = nn.Linear(width, d_in * hidden + hidden)
        self.gen2 = nn.Linear(width, hidden + 1)
        self.s1 = 1 / math.sqrt(d_in) if fan_in_scale else 1.0
        self.s2 = 1 / math.sqrt(hidden) if fan_in_scale else 1.0

    def forward(self, inp):
        t, x = inp
        z = self.body_act(self.body(self.task(t)))
        p1 = self.gen1(z)
        w1 = p1[:, : self.d_in * self.hidden].reshape(-1, self.hidden, self.d_in) * self.s1
        b1 = p1[:, self.d_in * self.hidden :]
        p2 = self.gen2(z)
        w2, b2 = p2[:, : self.hidden] * self.s2, p2[:, self.hidden]
        h = torch.tanh(torch.einsum("bhd,bd->bh", w1, x) + b1)
        return (w2 * h).sum(1) + b2


@scenario(
    "iditarod_checkpoint_split_hypernet_regressor",
    "Adam",
    "update_ratio_out_of_range",
    "gen1",
    None,
    heldout=True,
    note="a hypernetwork maps each musher team's embedding to the weights of a small target "
    "MLP of checkpoint split times; two param groups, and the group of gen1 (the generator of "
    "the target's hidden layer) has its lr typed 2e-9 for 2e-3; gen1 barely moves while the "
    "embedding, body and gen2 learn (Adam)",
)
def h384_iditarod_gen1_lr_typo(ctx: Context) -> None:
    gen = seeded(38401)
    model = HyperMLP(tasks=6, d_in=6)
    gen2_and_rest = [p for n, p in model.named_parameters() if not n.startswith("gen1")]
    opt = torch.optim.Adam(
        [
            {"params": model.gen1.parameters(), "lr": 2e-9},  # the bug: 2e-3
            {"params": gen2_and_rest, "lr": 2e-3},
        ]
    )
    w_gen1 = model.gen1.weight.detach().clone()
    w_gen2 = model.gen2.weight.detach().clone()
    w_body = model.body.weight.detach().clone()
    _loop(ctx, model, opt, _task_readings(gen, 64, 6, 6, 384011), 200, F.mse_loss)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("gen1 moves under 1e-5 of its norm", _rel_change(w_gen1, model.gen1.weight) < 1e-5)
    ctx.check("gen2 moves over 5% of its norm", _rel_change(w_gen2, model.gen2.weight) > 0.05)
    ctx.check("body moves over 5% of its norm", _rel_change(w_body, model.body.weight) > 0.05)


@scenario(
    "camel_milk_churn_yield_hypernet_regressor",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a hypernetwork maps each herd's embedding to the weights of a small target MLP "
    "of butter yield per churn; the generated weights are scaled by 1/sqrt(fan_in), Adam at 2e-3, "
    "clipping at 1",
)
def h384_camel_milk_hypernet_control(ctx: Context) -> None:
    gen = seeded(38402)
    model = HyperMLP(tasks=5, d_in=6, fan_in_scale=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, _task_readings(gen, 64, 6, 5, 384021), 200, F.mse_loss, clip=1.0)
    ctx.check("the loss fell under 0.6x", _fell(ctx.losses, ratio=0.6))


# -- exploding gradients through time -------------------------------------------------------------


class ElmanRNN(nn.Module):
    """h_t = tanh(inp(x_t) + rec(h_{t-1})), regression from the last state."""

    def __init__(self, channels=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(channels, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    "coxswain_call_stroke_rate_elman_rnn",
    "RMSprop",
    "exploding_gradients",
    "rec",
    None,
    heldout=True,
    note="a hand-written tanh Elman RNN of coxswain-call stroke-rate traces whose recurrent "
    "matrix is initialised orthogonal with a gain typed 3.0 for 1.0; the gradient grows "
    "backwards through the 30 time steps (over 1000x from the last state to the first), "
    "clipped at 1 so the run goes on (RMSprop)",
)
def h384_coxswain_rec_gain(ctx: Context) -> None:
    gen = seeded(38403)
    model = ElmanRNN(gain=3.0)  # the bug: gain 1.0
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    ratios = []

    def after(step):
        s = model.states
        if s and s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _sequences(gen, 64, 384031), 150, F.mse_loss, clip=1.0, after=after)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "the gradient at the first state over 20x that at the last at the start",
        bool(ratios) and ratios[0] > 20,
    )
    ctx.check(
        "the median first/last gradient ratio over the run over 10x",
        bool(ratios) and _median(ratios) > 10,
    )
    ctx.check(
        "the pre-clip gradient norm over 1 (clipping active) on over half the steps",
        sum(g > 1 for g in ctx.grad_norms) > len(ctx.grad_norms) / 2,
    )


# -- non-finite: the Laplace NLL without a clamp --------------------------------------------------


class LaplaceNet(nn.Module):
    """Trunk with a location head and a scale head (the scale through ``scale_act``)."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.loc = nn.Linear(hidden, 1)
        self.scale = nn.Linear(hidden, 1)
        self.scale_act = nn.ReLU()  # the bug: the clamp_min(1e-3) after it is missing
        nn.init.constant_(self.scale.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.loc(h), self.scale_act(self.scale(h))], -1)


def _laplace_nll(out, y):
    mu, b = out[:, 0], out[:, 1]
    return (torch.log(2 * b) + (y - mu).abs() / b).mean()


@scenario(
    "moonmilk_cave_deposit_laplace_nll_net",
    "AdamW",
    "nonfinite",
    ("scale_act", "scale"),
    41,
    heldout=True,
    note="a Laplace-NLL net of moonmilk cave-deposit thickness: the scale head is a ReLU whose "
    "clamp_min(1e-3) was dropped in a refactor; as the scale shrinks a sample's scale reaches "
    "exactly 0, log(0) and |r|/0 give -inf + inf = NaN (AdamW)",
)
def h384_moonmilk_unclamped_scale(ctx: Context) -> None:
    gen = seeded(38404)
    model = LaplaceNet(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    zero_at = []

    def watch(step, out, x, y):
        if not zero_at and bool((out[:, 1] == 0).any()):
            zero_at.append(step)

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, 384041, noise=0.02), 300, _laplace_nll, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check("a scale output exactly 0 at the first non-finite step", zero_at == [bad])


# -- a slow climb: the subtracted penalty ---------------------------------------------------------


@scenario(
    "yak_butter_tea_churn_temp_tanh_regressor",
    "Adamax",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the hand-written L2 penalty (coefficient 0.5) is subtracted from the loss instead of "
    "added (loss - wd * sum w^2); the weights keep growing, the tanh units saturate and the loss "
    "climbs slowly with no spike (Adamax)",
)
def h384_yak_butter_penalty_sign(ctx: Context) -> None:
    gen = seeded(38405)
    model = Trunk(10, 48, act=nn.Tanh)
    wd = 0.5
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def backprop(step, loss):
        penalty = sum((p * p).sum() for p in model.parameters())
        return loss - wd * penalty  # the bug: loss + wd * penalty

    _loop(ctx, model, opt, _readings(gen, 64, 10, 384051), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    ctx.check("the loss finite throughout", _finite(ls))
    ctx.check("the weights' norm over 2x its start", w1 > 2 * w0)
    ctx.check(
        "the loss over the last 20 steps over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(windows),
    )
    ctx.check(
        "a gradual climb: no 20-step window's mean over 2x the window before it",
        all(_mean(ls[i : i + 20]) < 2 * _mean(ls[i - 20 : i]) for i in range(40, len(ls) - 19, 20)),
    )


# -- one corrupted shard --------------------------------------------------------------------------


@scenario(
    "thunder_sheet_rattle_bce_classifier",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one workshop's shard at step 120 records sheet length and thickness in millimetres "
    "instead of standardised units (two columns x1000); the loss and gradient jump for that batch, "
    "clipping at 1 bounds the update and the run recovers (Adagrad)",
)
def h384_thunder_sheet_millimetre_shard(ctx: Context) -> None:
    gen = seeded(38406)
    model = Trunk(12, 48, out=1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :2] = x[:, :2] * 1000.0  # the shard in millimetres
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 12, 384061),
        250,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[onset - 30 : onset]), _median(gs[onset - 30 : onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check("the loss at the shard over 20x the median before", ls[onset] > 20 * pre_l)
    ctx.check("the gradient at the shard over 20x the median before", gs[onset] > 20 * pre_g)
    ctx.check(
        "the run recovers: last 30 steps' mean loss under 2x the 30 before the shard",
        _mean(ls[-30:]) < 2 * _mean(ls[onset - 30 : onset]),
    )


# -- one gradient burst from a loss weight --------------------------------------------------------


@scenario(
    "xiao_flute_breath_sustain_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the loss-weight schedule has a milestone at step 150 typed 500 for 5.00 (then "
    "divided by 5 like every weight: 100 instead of 1.0); that step's backpropagated loss is "
    "100x on a clean batch, clipping at 1 bounds the update and the run recovers (SGD "
    "momentum, accumulation over 2)",
)
def h384_xiao_loss_weight(ctx: Context) -> None:
    gen = seeded(38407)
    model = Trunk(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    onset = 150
    weights = {onset: 500.0 / 5}  # the bug: 5.00 / 5 = 1.0

    def backprop(step, loss):
        return weights.get(step, 1.0) * loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 384071),
        250,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
        accumulate=2,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the gradient at step 150 over 50x the median of the 30 steps before",
        gs[onset] > 50 * _median(gs[onset - 30 : onset]),
    )
    ctx.check(
        "a clean batch: the loss at step 150 under 2x the median before",
        ls[onset] < 2 * _median(ls[onset - 30 : onset]),
    )
    ctx.check(
        "the run recovers: last 30 steps' mean loss under 1.5x the 30 before",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )


# -- past the stability limit: a StepLR gamma typo ------------------------------------------------


@scenario(
    "spring_drum_reverb_tail_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=100,
    note="StepLR(step_size=100, gamma=10) typed for gamma=0.1: at step 100 the rate goes up 10x "
    "instead of down; lr x the top Hessian eigenvalue passes 2 and the loss oscillates and blows "
    "up (plain SGD, no clipping)",
)
def h384_spring_drum_steplr_gamma(ctx: Context) -> None:
    gen = seeded(38408)
    model = Trunk(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)  # the bug: 0.1
    data = _readings(gen, 128, 8, 384081)
    px, py = next(data)
    seen = []

    def before(step):
        if step % 10 == 0 or step == 99:
            lr = opt.param_groups[0]["lr"]
            seen.append((step, lr, _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    pre = [s for s in seen if s[0] == 99]
    ctx.check("lr x sharpness under 2 at step 99", bool(pre) and pre[0][1] * pre[0][2] < 2)
    post = [s for s in seen if s[0] >= 100 and math.isfinite(s[2])]
    ctx.check(
        "lr x sharpness past 2 at step 100",
        bool(post) and post[0][0] == 100 and post[0][1] * post[0][2] > 2,
    )
    ctx.check("the loss fell before step 100", _mean(ls[90:100]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "the loss then blows up to over 100x its lowest value or non-finite",
        not _finite(ls) or max(ls[100:]) > 100 * min(ls[:100]),
    )


# -- softmax collapse: a temperature typo ---------------------------------------------------------


class TempClassifier(Trunk):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, out=classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "cabasa_shake_pattern_temperature_classifier",
    "NAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the softmax temperature of a cabasa shake-pattern classifier is typed 2e-3 for 2e0; the "
    "logits are 500x too large and most rows' target probability rounds to exactly 1 (NAdam)",
)
def h384_cabasa_temperature_typo(ctx: Context) -> None:
    gen = seeded(38409)
    model = TempClassifier(16, 48, 6, temperature=2e-3)  # the bug: 2.0
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 384091, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    x, y = next(_grades(seeded(38410), 256, 16, 6, 384091, spread=1.5))
    with torch.no_grad():
        intended = collapsed_fraction(model.head(model.features(x)) / 2.0, y)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1 over the last 50 steps",
        _mean(frac[-50:]) > 0.5,
    )
    ctx.check("none at the intended temperature", intended == 0.0)


# -- dead ReLUs: an lr typo -----------------------------------------------------------------------


@scenario(
    "ocean_drum_bead_roll_relu_classifier",
    "SGD",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="SGD Nesterov with lr typed 0.8 for 0.008 on a ReLU classifier of ocean-drum bead "
    "rolls; the first large steps push fc2's pre-activations negative and most of act2's units "
    "die and stay dead",
)
def h384_ocean_drum_lr_typo(ctx: Context) -> None:
    gen = seeded(38411)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.9, nesterov=True)  # bug: 0.008
    dead = []
    probe = next(_grades(seeded(38412), 256, 12, 5, 384111))[0]

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.features(probe)))

    with torch.no_grad():
        dead0 = _dead(model.features(probe))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 384111),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("under 20% of act2 dead at the start", dead0 < 0.2)
    ctx.check("over 60% of act2 dead over the last 50 steps", bool(dead) and min(dead[-50:]) > 0.6)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "it stopped learning: the last 50 steps' mean loss over 0.9 x log(5)",
        _mean(ctx.losses[-50:]) > 0.9 * math.log(5),
    )


# -- the head's logits grow: NLL on raw logits ----------------------------------------------------


@scenario(
    "wind_machine_gust_sound_raw_nll_classifier",
    "RAdam",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a classifier of theatre wind-machine gust sounds trained with F.nll_loss on the "
    "head's raw logits (the log_softmax was dropped when the model's forward stopped returning "
    "log-probabilities); the loss is -logit[target], unbounded below, and the head's logits grow "
    "without bound while the loss keeps falling (RAdam)",
)
def h384_wind_machine_raw_logit_nll(ctx: Context) -> None:
    gen = seeded(38413)
    model = Trunk(12, 48, out=5)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 384131),
        250,
        F.nll_loss,  # the bug: F.nll_loss(F.log_softmax(out, -1), y), i.e. F.cross_entropy
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("the largest logit grew over 20x from step 0", top[-1] > 20 * top[0])
    ctx.check(
        "still growing: the largest logit over the last 20 steps over 1.2x the 20 before",
        _mean(top[-20:]) > 1.2 * _mean(top[-40:-20]),
    )
    ctx.check("the loss went below -10 (no floor)", ls[-1] < -10)


# -- controls -------------------------------------------------------------------------------------


class BreathConv(nn.Module):
    def __init__(self, channels=2, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "lion_roar_string_drum_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of lion-roar string-drum friction traces, SGD momentum "
    "under OneCycleLR (max_lr 0.1), label smoothing 0.1, clipping at 1",
)
def h384_lion_roar_control(ctx: Context) -> None:
    gen = seeded(38414)
    model = BreathConv()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 384141),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    x, y = next(_traces(seeded(38415), 256, 5, 384141))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell under 0.7x", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)


@scenario(
    "slackline_bounce_fp16_silu_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of slackline bounce height, AdamW with a no-decay bias "
    "group, fp16 autocast with a GradScaler, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1",
)
def h384_slackline_control(ctx: Context) -> None:
    gen = seeded(38416)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 64, 10, 384161)
    xv, yv = next(_readings(seeded(38417), 256, 10, 384161))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell under 0.5x", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scaler's scale stayed finite and positive", all(s > 0 for s in ctx.scales))
