"""Held-out set 351 (``h351_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a flintknapping flake-length ReLU regressor whose fc2 bias
is initialised at -2 (copied from a sparse-gating recipe; its units die and stay dead), a
funicular brake-distance tanh regressor whose StepLR gamma is typed 10 for 0.1 (lr passes
2/sharpness), a manatee dive-duration SiLU regressor fed one shard logged in centimetres (one
corrupted batch), a lighthouse-lens beam-range 22-layer tanh MLP whose init multiplies by tanh's
gain twice (gradients grow through depth), a squash-racket string-break BCE net whose
hand-written Bernoulli log-likelihood takes log(1 - sigmoid(z)) with no clamp (NaN), a luthier
purfling-depth two-group regressor whose head group's lr is typed 2e-8 for 2e-3 (head frozen), a
lute-rose carving-pattern MLP-Mixer whose temperature is divided by 100 twice (softmax
saturates), a zeppelin gas-cell lift regressor whose L2 regulariser is subtracted (slow climb), a
camel-race lap-time GELU regressor whose last step of an epoch uses reduction='sum' (one
gradient burst), a banderilla placement classifier trained with nll_loss on raw logits (head
logits grow without bound), and three controls (an ambergris grade LayerNorm classifier with
warm-up, cosine decay and label smoothing under AdamW; a blimp mooring-mast load Huber regressor
with NAdam and ReduceLROnPlateau; a chestnut-roast crackle Conv1d classifier with SGD momentum,
OneCycleLR, accumulation over 2 and clipping).

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
    dead_fraction,
    digit_batches,
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
    accumulate=1,
    inspect=None,
):
    """The file's training loop; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
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
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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
        norm = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / norm for u in hv]
    return abs(eig)


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "flintknapping_flake_length_relu_regressor",
    "SGD",
    "loss_of_plasticity",
    where=("fc2",),
    heldout=True,
    note="fc2's bias initialised at -2 (copied from a sparse-gating recipe): most of its ReLU "
    "units are never positive, get no gradient and stay dead; the regressor stops learning",
)
def h351_flintknapping_dead_relu(ctx: Context) -> None:
    gen = seeded(35101)
    model = Trunk(10, hidden=64)
    with torch.no_grad():
        nn.init.constant_(model.fc2.bias, -2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = next(_readings(torch.Generator().manual_seed(7), 512, 10, 351))
    dead = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe[0])))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 351), 200, F.mse_loss, after=after)
    ctx.check("over 70% of fc2's units dead at the end", dead[-1] > 0.7)
    ctx.check("the dead share does not recover", min(dead[len(dead) // 2 :]) > 0.7)
    ctx.check(
        "loss stays high (under 40% drop)", _mean(ctx.losses[-20:]) > 0.6 * _mean(ctx.losses[:10])
    )


@scenario(
    "funicular_car_brake_distance_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=120,
    note="StepLR(step_size=60, gamma=10) typed for gamma=0.1: the lr rises tenfold at step 60 "
    "and again at 120, where lr x top Hessian eigenvalue passes 2 and the loss blows up",
)
def h351_funicular_steplr_gamma(ctx: Context) -> None:
    gen = seeded(35102)
    model = Trunk(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(8), 256, 8, 352))
    products = {}

    def before(step):
        if step in (0, 59, 61, 121):
            lam = _sharpness(model, F.mse_loss, *probe)
            products[step] = opt.param_groups[0]["lr"] * lam

    _loop(ctx, model, opt, _readings(gen, 64, 8, 352), 200, F.mse_loss, before=before, sched=sched)
    ctx.check(
        "lr x sharpness under 2 up to step 120",
        max(products.get(k, 9.0) for k in (0, 59, 61)) < 2.0,
    )
    ctx.check("lr x sharpness over 2 after step 120", products.get(121, 0.0) > 2.0)
    ls = ctx.losses
    ctx.check(
        "loss blows up past 100x its pre-onset level",
        _first_bad(ls) is not None or max(ls[120:]) > 100 * _mean(ls[100:120]),
    )


@scenario(
    "manatee_dive_duration_silu_regressor",
    "SGD momentum",
    "data_outlier",
    heldout=True,
    onset=120,
    note="one survey's shard has its depth and distance columns logged in centimetres, not "
    "metres and not standardised (x100) at step 120; clipped, the run recovers",
)
def h351_manatee_centimetre_shard(ctx: Context) -> None:
    gen = seeded(35103)
    model = Trunk(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :4] = x[:, :4] * 100.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 12, 353), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at the bad shard over 20x the median before", ls[120] > 20 * _median(ls[90:120])
    )
    ctx.check(
        "gradient at the bad shard over 20x the median before", gs[120] > 20 * _median(gs[90:120])
    )
    ctx.check(
        "recovers: last 20 under 2x the pre-shard level", _mean(ls[-20:]) < 2 * _mean(ls[100:120])
    )


class DeepTanh(nn.Module):
    def __init__(self, d_in=10, width=32, depth=22, gain=(5 / 3) ** 2):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = torch.tanh(lin(x))
        return self.layers[-1](x).squeeze(-1)


@scenario(
    "lighthouse_lens_beam_range_deep_tanh_mlp",
    "Adagrad",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="the init helper multiplies by calculate_gain('tanh') twice (std (5/3)^2/sqrt(fan_in)): "
    "through 21 tanh layers the gradient grows towards the input, layers.0's gradient over "
    "20x the last hidden layer's (about 1x with tanh's gain applied once)",
)
def h351_lighthouse_double_gain(ctx: Context) -> None:
    gen = seeded(35104)
    model = DeepTanh()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    ratios = []

    def inspect(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-2].weight.grad.norm()
        ratios.append(float(first / last.clamp_min(1e-12)))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 354), 150, F.mse_loss, inspect=inspect, clip=5.0)
    ctx.check("layers.0's gradient over 20x layers.20's at the start", _mean(ratios[:10]) > 20)
    ctx.check("still over 10x through the run", _median(ratios) > 10)
    ctx.check("finite", _finite(ctx.losses))


class BernoulliLogLik(nn.Module):
    """Returns (log p, log(1 - p)) of a logit, written without a clamp."""

    def forward(self, z):
        p = torch.sigmoid(z)
        return torch.log(p), torch.log(1 - p)


class RacketNet(nn.Module):
    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        self.loglik = BernoulliLogLik()
        self.last_logit = torch.zeros(())

    def forward(self, x):
        z = self.head(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)
        self.last_logit = z.detach().abs().max()
        return self.loglik(z)


def _bernoulli_nll(out, y):
    lp, lq = out
    return -(y * lp + (1 - y) * lq).mean()


@scenario(
    "squash_racket_string_break_bce_net",
    "Adam",
    "nonfinite",
    where=("loglik",),
    diverges=48,
    heldout=True,
    note="hand-written Bernoulli log-likelihood takes log(1 - sigmoid(z)) with no clamp: once "
    "a confident row's logit passes ~17, sigmoid rounds to 1.0 and 0 x log(0) gives NaN",
)
def h351_squash_racket_log_zero(ctx: Context) -> None:
    gen = seeded(35105)
    model = RacketNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    grades = _grades(gen, 64, 12, 2, 355, spread=0.6)

    def batches():
        for x, y in grades:
            yield x, y.float()

    logits = []

    def watch(step, out, x, y):
        logits.append(float(model.last_logit))

    _loop(ctx, model, opt, batches(), 300, _bernoulli_nll, watch=watch)
    k = _first_bad(ctx.losses)
    ctx.check("loss non-finite within the run", k is not None)
    ctx.check("a logit past 16.6 at the NaN step", k is not None and logits[k] > 16.6)
    ctx.check("finite before it", k is not None and k > 20 and _finite(ctx.losses[:k]))


@scenario(
    "luthier_purfling_channel_depth_two_group_regressor",
    "Adamax",
    "update_ratio_out_of_range",
    where=("head",),
    heldout=True,
    note="two param groups, the head's lr typed 2e-8 for 2e-3: the head moves under 1e-4 of "
    "its norm while the trunk trains; the loss plateaus without blowing up",
)
def h351_purfling_head_lr_typo(ctx: Context) -> None:
    gen = seeded(35106)
    model = Trunk(10, hidden=48, act=nn.SiLU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [{"params": trunk, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 2e-8}]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 10, 356), 200, F.mse_loss)
    ctx.check("head moved under 1e-4 of its norm", _rel_change(head0, model.head.weight) < 1e-4)
    ctx.check("fc1 moved over 2% of its norm", _rel_change(fc10, model.fc1.weight) > 0.02)
    ctx.check("finite", _finite(ctx.losses))


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim, token_hidden, channel_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_fc1 = nn.Linear(tokens, token_hidden)
        self.token_fc2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_fc1 = nn.Linear(dim, channel_hidden)
        self.channel_fc2 = nn.Linear(channel_hidden, dim)

    def forward(self, x):  # (batch, tokens, dim)
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_fc2(F.gelu(self.token_fc1(y))).transpose(1, 2)
        return x + self.channel_fc2(F.gelu(self.channel_fc1(self.norm2(x))))


class PatchMixer(nn.Module):
    """MLP-Mixer over the 16 2x2 patches of an 8x8 image."""

    def __init__(self, dim=32, blocks=2, classes=10, temperature=1.0):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(MixerBlock(16, dim, 32, 64) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.embed(p)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1)) / self.temperature


@scenario(
    "lute_rose_carving_pattern_patch_mixer",
    "AdamW",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config gives the softmax temperature in percent (1 for 1%) and the code divides "
    "by 100 again: logits are divided by 1e-4, over half the rows' target probability rounds "
    "to exactly 1.0",
)
def h351_lute_rose_temperature_percent(ctx: Context) -> None:
    gen = seeded(35107)
    percent = 1.0
    model = PatchMixer(temperature=percent / 100 / 100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx, model, opt, digit_batches(gen, 64), 120, F.cross_entropy, classifier=True, watch=watch
    )
    ctx.check("over half the rows saturate to exactly 1.0 late", _mean(collapsed[-20:]) > 0.5)
    ctx.check("the share grows from the start", _mean(collapsed[-20:]) > _mean(collapsed[:5]) + 0.2)


@scenario(
    "zeppelin_gas_cell_lift_tanh_regressor",
    "ASGD",
    "loss_divergence",
    heldout=True,
    note="the hand-written L2 regulariser is subtracted from the loss (wd sign flipped): the "
    "weights grow steadily and the loss climbs slowly, no spike, finite",
)
def h351_zeppelin_l2_sign(ctx: Context) -> None:
    gen = seeded(35108)
    model = Trunk(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    wd = 0.15
    w0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def backprop(step, loss):
        return loss - wd * sum((p * p).sum() for p in model.parameters())

    _loop(ctx, model, opt, _readings(gen, 64, 8, 358), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    lows = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20, 10))
    ctx.check("finite", _finite(ls))
    ctx.check("weights over 3x their initial norm", w1 > 3 * w0)
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lows)
    ctx.check(
        "no single step over 3x its predecessor",
        all(b < 3 * a for a, b in zip(ls, ls[1:], strict=False)),
    )


@scenario(
    "camel_race_lap_time_gelu_regressor",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=150,
    note="the last step of the epoch (step 150) takes a code path with reduction='sum' instead "
    "of 'mean' on a batch of 128: one gradient over 50x on a clean batch; clipped, recovers",
)
def h351_camel_race_sum_reduction(ctx: Context) -> None:
    gen = seeded(35109)
    model = Trunk(10, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 128 if step == 150 else loss

    _loop(
        ctx, model, opt, _readings(gen, 128, 10, 359), 240, F.mse_loss, backprop=backprop, clip=1.0
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 50x the median before", gs[150] > 50 * _median(gs[120:150])
    )
    ctx.check(
        "the batch is clean: loss under 2x the median before", ls[150] < 2 * _median(ls[120:150])
    )
    ctx.check(
        "recovers: last 20 under 1.5x the pre-onset level",
        _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]),
    )


@scenario(
    "banderilla_placement_grade_relu_classifier",
    "RMSprop",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="trained with F.nll_loss on the raw logits (the log_softmax was dropped in a refactor): "
    "the loss is -logit[target], unbounded below, and the head's logits grow without bound",
)
def h351_banderilla_nll_raw_logits(ctx: Context) -> None:
    gen = seeded(35110)
    model = Trunk(12, hidden=48, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx, model, opt, _grades(gen, 64, 12, 5, 360), 200, F.nll_loss, classifier=True, watch=watch
    )
    ctx.check("peak logit over 20x its start", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check("still growing in the last quarter", peaks[-1] > 1.2 * peaks[150])
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls ------------------------------------------------------------------------------


class LNClassifier(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.gelu(self.ln1(self.fc1(x)))
        return self.head(F.gelu(self.ln2(self.fc2(x))))


@scenario(
    "ambergris_lump_grade_layernorm_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: LayerNorm GELU classifier, AdamW, 20-step linear warm-up then cosine, label "
    "smoothing 0.1, noisy readings",
)
def h351_ambergris_control(ctx: Context) -> None:
    gen = seeded(35111)
    model = LNClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, warm = 200, 20

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    data = _grades(gen, 64, 16, 6, 361, spread=1.5)
    _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    x, y = next(_grades(torch.Generator().manual_seed(11), 512, 16, 6, 361, spread=1.5))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 80%", acc > 0.8)


@scenario(
    "blimp_mooring_mast_load_huber_regressor",
    "NAdam",
    "healthy",
    heldout=True,
    note="control: SiLU Huber regressor, NAdam, ReduceLROnPlateau on a held-out batch, noisy "
    "targets",
)
def h351_blimp_control(ctx: Context) -> None:
    gen = seeded(35112)
    model = Trunk(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    xv, yv = next(_readings(torch.Generator().manual_seed(12), 256, 10, 362, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv, delta=0.5))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 362, noise=0.2),
        220,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out loss under 0.05", plateau() < 0.05)


class CrackleConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


def _crackles(gen, batch, classes=4, length=64):
    """Chestnut crackle traces: a decaying burst whose pitch depends on the class, plus noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float() + 0.02 * torch.randn(batch, generator=gen)
        onset = torch.randint(0, 16, (batch,), generator=gen).float()
        tt = (t[None] - onset[:, None]).clamp_min(0)
        x = torch.sin(freq[:, None] * tt) * torch.exp(-tt / 20) * (tt > 0)
        yield 2.0 * x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    "chestnut_roast_crackle_conv1d_classifier",
    "SGD momentum",
    "healthy",
    heldout=True,
    note="control: ReLU Conv1d classifier, SGD momentum under OneCycleLR, accumulation over 2, "
    "clipping at 1",
)
def h351_chestnut_control(ctx: Context) -> None:
    gen = seeded(35113)
    model = CrackleConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _crackles(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    x, y = next(_crackles(torch.Generator().manual_seed(13), 512))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 70%", acc > 0.7)
