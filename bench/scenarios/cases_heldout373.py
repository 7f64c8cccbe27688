"""Held-out set 373 (``h373_``): hand-written models of sports, trades, instruments and natural
phenomena not covered before: a sheepdog-trial pen grid deep Q-network whose discount is read as
1 + 1/horizon for 1 - 1/horizon (the TD loss climbs slowly), a glassblower gather-cooling 16-layer
tanh MLP initialised with std 1 instead of 1/sqrt(fan_in) (gradients grow through depth), a
marimba bar-undercut pitch tanh regressor whose warm-up peak is typed 6e0 for 6e-2 (past
2/sharpness), a kiteboard kite-loop lift GELU regressor whose resumed step skips the unscale of a
manual static loss scale (Adam's second moment poisoned), a geyser eruption-window sigmoid BCE
net with a hand-written BCE without its clamp (0 * log 0, NaN), a saddler stitch-hold ReLU BCE net
fed one shard of awl pulls in newtons instead of kilonewtons (one corrupted batch), a lacrosse
pass-speed SiLU Huber regressor whose step-150 micro-batch losses are summed over the batch by an
eval helper (one gradient burst), a harpsichord quill-pluck classifier whose trunk lr is typed
3e-9 for 3e-3 (frozen), a fulgurite tube-class GELU classifier whose softmax temperature is read
in seconds from a millisecond field (softmax collapse), a dust-devil vortex-height ReLU regressor
with RAdam lr typed 2e0 for 2e-3 (dead ReLUs), and three controls (an ice-fishing hole grid deep
Q-network with a target network synced every 50 steps and Adam at 1e-3, a falconry stoop-phase
Conv1d classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping, a quilting-frame
tension SiLU Huber regressor under fp16 autocast with a GradScaler, AdamW, accumulation and
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first and may return the number of
    micro-batches for the step, ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)``
    sees the forward pass, ``backprop(step, loss)`` returns the loss actually backpropagated
    (before the division by the accumulation count), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        micro = accumulate
        if before is not None:
            got = before(step)
            if got is not None:
                micro = got
        model.train()
        shown = 0.0
        for _ in range(micro):
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / micro
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, margin=0.0, flip=0.0):
    """Readings labelled by a hidden linear rule (with an optional margin and label noise)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = x @ w
        x = x + margin * torch.sign(s)[:, None] * w
        y = (s > 0).float()
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


# -- deep Q-networks on a generated grid ------------------------------------------------------------


class QNet(nn.Module):
    """One-hot grid cell -> fc1 -> act1 -> fc2 -> act2 -> q_head (one value per move)."""

    def __init__(self, cells, actions=4, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(cells, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.q_head = nn.Linear(hidden, actions)

    def forward(self, s):
        return self.q_head(self.act2(self.fc2(self.act1(self.fc1(s)))))


def _grid(side, rewarded):
    """A continuing grid world: moves up/down/left/right (walls keep the agent in place), reward
    1 on arriving in a rewarded cell. Returns next-state and reward tables (cells x 4)."""
    nxt = torch.zeros(side * side, 4, dtype=torch.long)
    rew = torch.zeros(side * side, 4)
    for c in range(side * side):
        r, k = divmod(c, side)
        for a, (dr, dk) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
            r2, k2 = min(max(r + dr, 0), side - 1), min(max(k + dk, 0), side - 1)
            nxt[c, a] = r2 * side + k2
            rew[c, a] = 1.0 if (r2 * side + k2) in rewarded else 0.0
    return nxt, rew


def _q_star(nxt, rew, gamma, sweeps=300):
    q = torch.zeros_like(rew)
    for _ in range(sweeps):
        q = rew + gamma * q.max(1).values[nxt]
    return q


def _dqn(ctx, net, opt, nxt, rew, gamma, steps, sync, gen, batch=64, clip=10.0):
    """Fitted Q-learning from uniformly sampled transitions: Huber TD loss against a target
    network copied every ``sync`` steps. Returns the largest |Q| after each step."""
    cells = nxt.shape[0]
    eye = torch.eye(cells)
    target = copy.deepcopy(net)
    ctx.attach(net, opt)
    peaks = []
    for step in range(steps):
        if step % sync == 0:
            target.load_state_dict(net.state_dict())
        s = torch.randint(0, cells, (batch,), generator=gen)
        a = torch.randint(0, 4, (batch,), generator=gen)
        s2, r = nxt[s, a], rew[s, a]
        with torch.no_grad():
            y = r + gamma * target(eye[s2]).max(1).values
        q = net(eye[s]).gather(1, a[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(net))
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            peaks.append(float(net(eye).abs().max()))
        if not math.isfinite(float(loss.detach())):
            break
    return peaks


@scenario(
    "sheepdog_trial_pen_grid_dqn",
    "RMSprop",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the discount is derived from the config's horizon of 20 as 1 + 1/horizon instead of "
    "1 - 1/horizon (1.05 for 0.95) in a continuing 6x6 pen grid; each target-network sync "
    "(every 10 steps) raises the TD targets, the Q-values pass any bound a discount under 1 "
    "allows and the Huber TD loss climbs slowly",
)
def h373_sheepdog_pen_gamma_dqn(ctx: Context) -> None:
    gen = seeded(37301)
    nxt, rew = _grid(6, {14, 15, 20, 21})
    net = QNet(36)
    opt = torch.optim.RMSprop(net.parameters(), lr=3e-3)
    horizon = 20
    gamma = 1 + 1 / horizon  # the bug: 1 - 1 / horizon
    peaks = _dqn(ctx, net, opt, nxt, rew, gamma, 300, 10, gen)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 30]) for i in range(30, len(ls) - 29, 10)]
    ctx.check("the TD loss finite throughout", _finite(ls))
    ctx.check(
        "the TD loss over the last 30 steps over 3x its lowest 30-step mean after step 30",
        _mean(ls[-30:]) > 3 * min(windows),
    )
    ctx.check(
        "the largest Q-value over 2x 1/(1 - 0.95), beyond any discount under 1",
        peaks[-1] > 2 * horizon,
    )
    ctx.check(
        "a gradual climb: no 30-step window's mean over 2x the window before it after step 60",
        all(_mean(ls[i : i + 30]) < 2 * _mean(ls[i - 30 : i]) for i in range(60, len(ls) - 29, 30)),
    )


@scenario(
    "ice_fishing_hole_grid_dqn",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a deep Q-network on a continuing 5x5 grid of fishing holes, Huber TD loss, "
    "a target network synced every 50 steps, Adam at 1e-3, clipping, discount 0.8",
)
def h373_ice_fishing_dqn_control(ctx: Context) -> None:
    gen = seeded(37302)
    nxt, rew = _grid(5, {6, 18})
    gamma = 0.8
    qs = _q_star(nxt, rew, gamma)
    net = QNet(25)
    eye = torch.eye(25)
    with torch.no_grad():
        err0 = float((net(eye) - qs).abs().mean())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _dqn(ctx, net, opt, nxt, rew, gamma, 300, 50, gen)
    with torch.no_grad():
        err1 = float((net(eye) - qs).abs().mean())
    ctx.check("the TD loss finite", _finite(ctx.losses))
    ctx.check("mean |Q - Q*| fell under 0.6x its value at the start", err1 < 0.6 * err0)


# -- depth ----------------------------------------------------------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        if std is not None:
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        self.outs = []
        for lin in self.layers:
            h = lin(h)
            if h.requires_grad:
                h.retain_grad()
            self.outs.append(h)
            h = torch.tanh(h)
        return self.head(h).squeeze(-1)


@scenario(
    "glassblower_gather_cooling_deep_tanh_mlp",
    "Adamax",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="the 16 hidden tanh layers are initialised with normal(std=1.0), a copied snippet whose "
    "std was meant to be divided by sqrt(fan_in) = 8; the network sits in the chaotic regime and "
    "the gradient grows layer by layer towards the input (clipped at 1, so nothing overflows)",
)
def h373_glassblower_std_one_init(ctx: Context) -> None:
    gen = seeded(37303)
    model = DeepTanh(10, 64, 16, std=1.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ratios = []

    def inspect(step):
        first, last = model.outs[0].grad, model.outs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 373031), 150, F.mse_loss, clip=1.0, inspect=inspect
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.15's at the start", ratios[0] > 20
    )
    ctx.check("and over 10x on the median of the last 50 steps", _median(ratios[-50:]) > 10)


# -- sharpness -------------------------------------------------------------------------------------


@scenario(
    "marimba_bar_undercut_pitch_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=12,
    note="a linear warm-up over 300 steps to a peak lr typed 6e0 for 6e-2; lr x the top Hessian "
    "eigenvalue is under 2 at the start and passes 2 during the warm-up, after which the loss "
    "oscillates and blows up (plain SGD, no clipping)",
)
def h373_marimba_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(37304)
    model = Trunk(8, 48, act=nn.Tanh)
    peak, warm = 6e0, 300  # the bug: 6e-2
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    data = _readings(gen, 128, 8, 373041)
    px, py = next(data)
    seen = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0:
            seen.append((step, lr, _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, 120, F.mse_loss, before=before)
    ls = ctx.losses
    s0 = seen[0]
    ctx.check("lr x sharpness under 2 at the start", s0[1] * s0[2] < 2)
    crossed = [s for s in seen if math.isfinite(s[2]) and s[1] * s[2] > 2]
    ctx.check("lr x sharpness past 2 during the warm-up", bool(crossed) and crossed[0][0] < warm)
    ctx.check(
        "the loss then blows up to over 100x its lowest value or non-finite",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- Adam's second moment ---------------------------------------------------------------------------


@scenario(
    "kiteboard_kite_loop_lift_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="the loss is multiplied by a static loss scale of 65536 (a manual mixed-precision "
    "recipe) and the gradients divided by it before the step; the resume path at step 100 skips "
    "the division once, so one clean batch's gradient reaches Adam 65536x too large, fills the "
    "second moment and shrinks the updates for the rest of the run",
)
def h373_kiteboard_skipped_unscale(ctx: Context) -> None:
    gen = seeded(37305)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale, onset = 65536.0, 100
    ups: list[float] = []
    prev = {}

    def backprop(step, loss):
        return loss * scale

    def inspect(step):
        for p in model.parameters():
            if step != onset:
                p.grad.div_(scale)
        ctx.grad_norms[-1] = grad_norm(model)
        prev.clear()
        prev.update({n: p.detach().clone() for n, p in model.named_parameters()})

    def after(step):
        rel = [
            float(((p.detach() - prev[n]).abs() / prev[n].abs().clamp_min(1e-8)).median())
            for n, p in model.named_parameters()
            if p.dim() == 2
        ]
        ups.append(_median(rel))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 373051),
        260,
        F.mse_loss,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    gn = ctx.grad_norms
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "the step-100 gradient over 1000x the median before",
        gn[onset] > 1000 * _median(gn[60:onset]),
    )
    ctx.check(
        "median per-weight update 60-160 steps later under a tenth of before",
        _median(ups[onset + 60 : onset + 160]) < 0.1 * _median(ups[60:onset]),
    )
    ctx.check(
        "while the gradients are not smaller than before",
        _median(gn[onset + 60 : onset + 160]) > 0.5 * _median(gn[60:onset]),
    )


# -- an operation's NaN ------------------------------------------------------------------------------


class ProbNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.logit = nn.Linear(hidden, 1)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.logit(self.act1(self.fc1(x)))).squeeze(-1)


def _bce_no_clamp(p, y):
    """The hand-written BCE of the port: the recipe's clamp(eps, 1 - eps) left out."""
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


@scenario(
    "geyser_eruption_window_sigmoid_bce_net",
    "ASGD",
    "nonfinite",
    "prob",
    "auto",
    heldout=True,
    note="the model outputs probabilities through a Sigmoid module and the ported loss is a "
    "hand-written BCE without its clamp; on well separated eruption windows the logits grow "
    "until a probability rounds to exactly 1.0 (or 0.0) and (1 - y) * log(1 - p) is 0 * -inf, "
    "NaN",
)
def h373_geyser_unclamped_bce(ctx: Context) -> None:
    gen = seeded(37306)
    model = ProbNet(6)
    opt = torch.optim.ASGD(model.parameters(), lr=2.5)
    saturated = []

    def watch(step, out, x, y):
        saturated.append(bool(((out == 1.0) | (out == 0.0)).any()))

    ran = _loop(
        ctx, model, opt, _binary(gen, 64, 6, 373061, margin=3.0), 300, _bce_no_clamp, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check("finite for the first 30 steps", bad is not None and bad >= 30)
    ctx.check("a probability is exactly 0 or 1 at the NaN step", bad is not None and saturated[bad])
    ctx.check("the run stopped there", ran == (bad or 0) + 1)


# -- a bad shard -----------------------------------------------------------------------------------


@scenario(
    "saddler_stitch_awl_hold_relu_bce_net",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one workshop's shard records the awl pull force in newtons instead of kilonewtons "
    "(x1000 on that feature); the step-120 batch comes from it; loss and gradient jump, the "
    "gradient is clipped at 1 and the run recovers",
)
def h373_saddler_newton_shard(ctx: Context) -> None:
    gen = seeded(37307)
    model = Trunk(8, 48)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 8, 373071, flip=0.03),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the step-120 loss over 20x the median before", ls[onset] > 20 * _median(ls[80:onset])
    )
    ctx.check(
        "the step-120 gradient over 20x the median before", gn[onset] > 20 * _median(gn[80:onset])
    )
    ctx.check(
        "recovered: the last 30 steps under 1.5x the 30 before the shard",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )


# -- one gradient burst ----------------------------------------------------------------------------


@scenario(
    "lacrosse_pass_speed_accum_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="gradient accumulation over 4 micro-batches; at step 150 (the first step after an "
    "evaluation) the loss comes from the eval helper with reduction='sum', so the clean batch's "
    "gradient is 64x too large for one step; clipped at 1, SGD with momentum, the run goes on",
)
def h373_lacrosse_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(37308)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    onset, batch = 150, 64

    def backprop(step, loss):
        return loss * (batch if step == onset else 1) / 4

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, batch, 10, 373081),
        240,
        F.huber_loss,
        backprop=backprop,
        accumulate=4,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the step-150 gradient over 20x the median of the 50 before",
        gn[onset] > 20 * _median(gn[onset - 50 : onset]),
    )
    ctx.check(
        "no gradient over 5x that median on any other step after 100",
        all(gn[i] < 5 * _median(gn[onset - 50 : onset]) for i in range(100, len(gn)) if i != onset),
    )
    ctx.check(
        "the step-150 batch's own loss is ordinary (under 3x the median before)",
        ls[onset] < 3 * _median(ls[onset - 50 : onset]),
    )


# -- a frozen trunk ---------------------------------------------------------------------------------


@scenario(
    "harpsichord_quill_pluck_two_group_relu_classifier",
    "NAdam",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="two parameter groups, the trunk's lr typed 3e-9 for 3e-3 (the head at 3e-3): fc1 and "
    "fc2 barely move while the head learns on random features",
)
def h373_harpsichord_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(37309)
    model = Trunk(16, 64, out=6)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 3e-9}, {"params": model.head.parameters(), "lr": 3e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 373091, spread=1.6),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "fc1 and fc2 moved under 1e-5 of their norm",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-5,
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)


# -- softmax collapse -------------------------------------------------------------------------------


class TempClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    "fulgurite_tube_class_temperature_gelu_classifier",
    "Adadelta",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the softmax temperature comes from a config field in milliseconds (1 ms) read as "
    "seconds, 1e-3 instead of 1.0: logits are 1000x, the softmax saturates and most rows' "
    "target probability rounds to exactly 1.0 in float32",
)
def h373_fulgurite_ms_temperature(ctx: Context) -> None:
    gen = seeded(37310)
    temperature_ms = 1.0
    model = TempClassifier(12, 5, temperature_ms / 1000.0)  # the bug: the value is already 1.0
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    late = []

    def watch(step, out, x, y):
        if step >= 100:
            p = torch.softmax(out.detach(), -1).gather(1, y[:, None])
            late.append(float((p == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 373101, spread=1.2),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 after step 100", _mean(late) > 0.5
    )


# -- dead ReLUs -------------------------------------------------------------------------------------


@scenario(
    "dust_devil_vortex_height_relu_regressor",
    "RAdam",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="RAdam's lr typed 2e0 for 2e-3; once its rectification lets full steps through, the "
    "second layer's ReLUs are pushed negative on every input and stop learning; the loss "
    "stays far above what the net fits at a sane rate",
)
def h373_dust_devil_radam_lr_typo(ctx: Context) -> None:
    gen = seeded(37311)
    model = Trunk(8, 64)
    opt = torch.optim.RAdam(model.parameters(), lr=2e0)
    d1, d2, var = [], [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            d1.append(_dead(h1))
            d2.append(_dead(model.act2(model.fc2(h1))))
            var.append(float(y.var()))

    _loop(ctx, model, opt, _readings(gen, 128, 8, 373111), 200, F.mse_loss, watch=watch)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("under 20% of act2's units dead at the start", d2[0] < 0.2)
    ctx.check(
        "over 90% of act2's units dead on every one of the last 50 steps", min(d2[-50:]) > 0.9
    )
    ctx.check(
        "the last 50 steps' loss over 0.3x the targets' variance (not fitted)",
        _mean(ctx.losses[-50:]) > 0.3 * _mean(var[-50:]),
    )


# -- controls ---------------------------------------------------------------------------------------


class StoopConv(nn.Module):
    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "falconry_stoop_phase_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of stoop phases from accelerometer traces, SGD with "
    "Nesterov momentum under OneCycleLR, label smoothing 0.1, clipping at 1",
)
def h373_falconry_onecycle_control(ctx: Context) -> None:
    gen = seeded(37312)
    model = StoopConv(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 373121),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))


class QuiltNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    "quilting_frame_tension_fp16_silu_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of quilting-frame tension under fp16 autocast with a "
    "GradScaler, AdamW with a no-decay group for biases, accumulation over 2, ReduceLROnPlateau "
    "on a held-out batch, clipping at 1",
)
def h373_quilting_fp16_control(ctx: Context) -> None:
    gen = seeded(37313)
    model = QuiltNet(10)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 64, 10, 373131)
    vx, vy = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))
