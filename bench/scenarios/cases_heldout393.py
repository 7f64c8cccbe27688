"""Held-out set 393 (``h393_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a saddlery tree-fit two-tower BPR recommender whose item-tower group lr is typed 3e-9 for
3e-3 (frozen), a hot-spring travertine terrace regressor fed one shard in millimetres (one
corrupted batch), a cymbal-lathe tone regressor whose lr gets the linear-scaling rule applied
twice (past 2/sharpness), a sitar-fret buzz classifier trained with F.nll_loss on raw logits
after log_softmax was moved out of the model (the head's logits grow without bound), a blue-ice runway ablation Gaussian-NLL net whose
variance head lost its softplus before a sqrt (NaN), a fencing-lunge 14-layer ReLU MLP with an
init gain typed 1.5 per layer (gradients grow through depth), a shamisen skin-strike Conv1d
classifier with a temperature typed 1e-4 (softmax saturates), an erhu bow-pressure regressor
whose hand-written weight decay has its sign flipped (slow climb), a steel-guitar slide-pitch
regressor whose resumed step sums instead of averaging its micro-batch losses (one gradient
burst) and a climbing-chalk grip regressor whose resumed step skips a static loss scale's
unscale (Adam's second moment poisoned).

Controls: a pigeon-racing loft two-tower recommender (L2-normalised towers, temperature 0.1,
in-batch sampled softmax, Adagrad), a wood-shingle split-grade Conv1d classifier (SGD momentum,
OneCycleLR, label smoothing, clipping) and a disc-golf putt-drift Huber regressor (fp16 autocast
with a GradScaler, AdamW with a no-decay group, accumulation, ReduceLROnPlateau, clipping).
"""

from __future__ import annotations

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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the loss actually backpropagated for one micro-batch, ``after(step)`` runs after the
    optimizer step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``.
    Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if watch is not None:
                watch(step, out, x, y)
            loss = loss_fn(out.float(), y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
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
            sched.step(plateau()) if plateau is not None else sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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


def _interactions(gen, batch, users, items, seed, dim=6, mode="bpr"):
    """Generated user-item interactions: hidden factors, a positive item drawn from
    softmax(3 u.v) over all items. ``bpr`` yields (user, positive, uniform negative) triples,
    ``pairs`` yields (user, positive) pairs for in-batch sampled softmax."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(users, dim, generator=g) / math.sqrt(dim)
    v = torch.randn(items, dim, generator=g)
    probs = torch.softmax(3.0 * u @ v.T, dim=1)
    while True:
        who = torch.randint(0, users, (batch,), generator=gen)
        pos = torch.multinomial(probs[who], 1, generator=gen)[:, 0]
        if mode == "bpr":
            neg = torch.randint(0, items, (batch,), generator=gen)
            yield torch.stack([who, pos, neg], 1), torch.zeros(batch)
        else:
            yield torch.stack([who, pos], 1), torch.arange(batch)


# -- models -----------------------------------------------------------------------------------------


class Tower(nn.Module):
    """Id embedding -> two-layer ReLU MLP; optionally L2-normalised output."""

    def __init__(self, n, dim=32, out=16, normalise=False):
        super().__init__()
        self.emb = nn.Embedding(n, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim, out)
        self.normalise = normalise

    def forward(self, ids):
        z = self.fc2(self.act(self.fc1(self.emb(ids))))
        return F.normalize(z, dim=-1) if self.normalise else z


class TwoTower(nn.Module):
    """User and item towers scored by a dot product. ``bpr``: input (user, pos, neg), output
    s(u, pos) - s(u, neg); ``softmax``: input (user, item) pairs, output the in-batch score
    matrix divided by ``temperature``."""

    def __init__(self, users, items, mode="bpr", normalise=False, temperature=1.0):
        super().__init__()
        self.user_tower = Tower(users, normalise=normalise)
        self.item_tower = Tower(items, normalise=normalise)
        self.mode, self.temperature = mode, temperature

    def forward(self, x):
        u = self.user_tower(x[:, 0])
        if self.mode == "bpr":
            return (u * self.item_tower(x[:, 1])).sum(-1) - (u * self.item_tower(x[:, 2])).sum(-1)
        return u @ self.item_tower(x[:, 1]).T / self.temperature


def _bpr(diff, _y):
    return -F.logsigmoid(diff).mean()


class Regressor(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, one output."""

    def __init__(self, d_in, hidden, act=nn.Tanh):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))[:, 0]


class ConvNet(nn.Module):
    """Two Conv1d + ReLU layers, average pooling, a linear head; ``temperature`` divides logits."""

    def __init__(self, channels, classes, width=16, temperature=1.0):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 9, padding=4)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)
        self.temperature = temperature

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1)
        return self.head(h) / self.temperature


def _moved(before: dict, model: nn.Module, prefix: str) -> float:
    num = sum(
        float((p.detach() - before[n]).norm() ** 2)
        for n, p in model.named_parameters()
        if n.startswith(prefix)
    )
    den = sum(
        float(before[n].norm() ** 2) for n, p in model.named_parameters() if n.startswith(prefix)
    )
    return math.sqrt(num / max(den, 1e-30))


def _top_eig(model, loss_of, iters=20) -> float:
    """Top Hessian eigenvalue of ``loss_of()`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_of(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / norm for t in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- two-tower recommenders -------------------------------------------------------------------------


@scenario(
    "saddlery_tree_rider_two_tower_bpr_recommender",
    "Adam",
    "update_ratio_out_of_range",
    where=("item_tower",),
    heldout=True,
    note="a saddlery's rider-to-saddle-tree recommender: user and item towers (id embedding and a "
    "two-layer ReLU MLP) scored by a dot product, BPR loss with uniform negatives on generated "
    "interactions, two param groups; the item tower's lr is typed 3e-9 for 3e-3, so the item "
    "tower is frozen in effect (moves under 1e-5 of its norm while getting gradients) while the "
    "user tower moves over 5%",
)
def h393_saddlery_tree_frozen_item_tower_bpr_adam(ctx: Context) -> None:
    gen = seeded(3931)
    model = TwoTower(200, 300, mode="bpr")
    opt = torch.optim.Adam(
        [
            {"params": model.user_tower.parameters(), "lr": 3e-3},
            {"params": model.item_tower.parameters(), "lr": 3e-9},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    item_grads = []
    data = _interactions(gen, 128, 200, 300, seed=39310)

    def after(step):
        item_grads.append(
            math.sqrt(
                sum(
                    float(p.grad.norm() ** 2)
                    for p in model.item_tower.parameters()
                    if p.grad is not None
                )
            )
        )

    _loop(ctx, model, opt, data, 200, _bpr, after=after)
    ctx.check("item tower moved under 1e-5 of its norm", _moved(start, model, "item_tower") < 1e-5)
    ctx.check("user tower moved over 5% of its norm", _moved(start, model, "user_tower") > 0.05)
    ctx.check("item tower got gradients", _median(item_grads) > 1e-4)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "pigeon_racing_loft_fancier_two_tower_recommender",
    "Adagrad",
    "healthy",
    heldout=True,
    note="a pigeon-racing loft-to-fancier recommender: L2-normalised user and item towers, "
    "temperature 0.1, in-batch sampled softmax (cross-entropy over the batch's items) on "
    "generated interactions, Adagrad with the embeddings in their own group at a higher rate, "
    "clipping; control",
)
def h393_pigeon_loft_two_tower_control_adagrad(ctx: Context) -> None:
    gen = seeded(3932)
    model = TwoTower(200, 300, mode="softmax", normalise=True, temperature=0.1)
    emb = [model.user_tower.emb.weight, model.item_tower.emb.weight]
    ids = {id(p) for p in emb}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adagrad([{"params": emb, "lr": 0.1}, {"params": rest, "lr": 0.02}])
    data = _interactions(gen, 128, 200, 300, seed=39320, mode="pairs")
    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, clip=5.0)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.85))
    ctx.check("loss finite", _finite(ctx.losses))


# -- regressors -------------------------------------------------------------------------------------


@scenario(
    "cymbal_lathe_tone_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="a cymbal-lathe tone regressor (tanh MLP, MSE, plain SGD); the recipe's lr 0.03 at batch "
    "32 is rescaled for batch 256 by the linear-scaling rule in the config and again in the "
    "launcher, 0.03 x 8 x 8 = 1.92 instead of 0.24: lr x top Hessian eigenvalue (power iteration) "
    "is past 2 once the 100-step linear warm-up passes 2/lambda and under 2 at the intended rate; "
    "the loss blows up",
)
def h393_cymbal_lathe_double_lr_scaling_sgd(ctx: Context) -> None:
    gen = seeded(3933)
    model = Regressor(12, 64)
    data = _readings(gen, 256, 12, seed=39330)
    xp, yp = next(data)
    lam = _top_eig(model, lambda: F.mse_loss(model(xp), yp))
    intended = 0.03 * 256 / 32
    lr = intended * 256 / 32
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 100))
    _loop(ctx, model, opt, data, 200, F.mse_loss, sched=sched)
    ctx.check("lr x lambda_max (at init) past 2 after the warm-up", lr * lam > 2.0)
    ctx.check("intended lr x lambda_max under 2", intended * lam < 2.0)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "loss blew up (non-finite or over 100x its start)",
        bad is not None or max(ctx.losses) > 100 * ctx.losses[0],
    )


@scenario(
    "hot_spring_travertine_terrace_relu_regressor",
    "Adamax",
    "data_outlier",
    heldout=True,
    onset=120,
    note="a hot-spring travertine terrace growth regressor (ReLU MLP, MSE, Adamax, clipping); at "
    "step 120 one survey team's shard arrives with three columns in millimetres instead of "
    "metres (x1000): loss and gradient over 20x on that batch, the run recovers",
)
def h393_travertine_millimetre_shard_adamax(ctx: Context) -> None:
    gen = seeded(3934)
    model = Regressor(10, 48, act=nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _readings(gen, 64, 10, seed=39340)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, [1, 4, 7]] *= 1000.0
        return x, y

    _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at step 120", ls[120] > 20 * _median(ls[100:120]))
    ctx.check("gradient over 20x at step 120", gs[120] > 20 * _median(gs[100:120]))
    ctx.check("recovers", _mean(ls[-20:]) < 2 * _mean(ls[100:120]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    "blue_ice_runway_ablation_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("var_head",),
    diverges=63,
    heldout=True,
    note="a blue-ice runway ablation-rate net (mean and variance heads, Gaussian NLL written with "
    "std = sqrt(var)); the variance head's softplus was dropped in a refactor, a nearly noise-free "
    "target drives the variance down, one goes negative and sqrt gives NaN",
)
def h393_blue_ice_sqrt_negative_variance_radam(ctx: Context) -> None:
    gen = seeded(3935)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 48)
            self.act1 = nn.SiLU()
            self.fc2 = nn.Linear(48, 48)
            self.act2 = nn.SiLU()
            self.mean_head = nn.Linear(48, 1)
            self.var_head = nn.Linear(48, 1)
            nn.init.constant_(self.var_head.bias, 1.0)

        def forward(self, x):
            h = self.act2(self.fc2(self.act1(self.fc1(x))))
            return torch.cat([self.mean_head(h), self.var_head(h)], 1)

    model = Net()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    data = _readings(gen, 64, 8, seed=39350, noise=0.001)
    min_var = []

    def nll(out, y):
        mu, var = out[:, 0], out[:, 1]
        std = torch.sqrt(var)
        return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()

    def watch(step, out, x, y):
        min_var.append(float(out[:, 1].detach().min()))

    n = _loop(ctx, model, opt, data, 300, nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN", bad is not None and math.isnan(ctx.losses[bad]))
    ctx.check("a variance negative at that step", bad is not None and min_var[bad] < 0)
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]) and n == bad + 1)


@scenario(
    "erhu_bow_pressure_tanh_regressor",
    "SGD",
    "loss_divergence",
    heldout=True,
    note="an erhu bow-pressure regressor (tanh MLP, MSE, SGD momentum) with hand-written "
    "decoupled weight decay p *= (1 + lr * wd) instead of (1 - lr * wd): the weights grow over 2x "
    "and the loss climbs slowly to over 3x its lowest 20-step mean, no jump, finite",
)
def h393_erhu_bow_decay_sign_sgd_momentum(ctx: Context) -> None:
    gen = seeded(3936)
    model = Regressor(10, 48)
    lr, wd = 0.02, 3.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    data = _readings(gen, 64, 10, seed=39360)
    w0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, data, 300, F.mse_loss, after=after)
    ls = ctx.losses
    w1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    low = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check("weights over 2x", w1 > 2 * w0)
    ctx.check("loss climbs over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * low)
    means = [_mean(ls[i : i + 10]) for i in range(20, len(ls) - 10, 10)]
    ctx.check(
        "no 2x jump between 10-step means",
        all(b < 2 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    "steel_guitar_slide_pitch_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    heldout=True,
    onset=150,
    note="a steel-guitar slide-pitch regressor (SiLU MLP, Huber loss, SGD Nesterov, accumulation "
    "over 4, clipping); the resumed step 150 computes its micro-batch losses with reduction='sum' "
    "and does not divide by the accumulation count: the gradient is over 20x on clean data while "
    "the logged loss is ordinary; clipped, the run recovers",
)
def h393_steel_guitar_summed_accumulation_nesterov(ctx: Context) -> None:
    gen = seeded(3937)
    model = Regressor(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    data = _readings(gen, 32, 10, seed=39370)
    preds = {}

    def watch(step, out, x, y):
        preds["out"], preds["y"] = out, y

    def backprop(step, loss, accumulate):
        if step == 150:
            return F.huber_loss(preds["out"].float(), preds["y"], reduction="sum")
        return loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        data,
        260,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
        clip=1.0,
        accumulate=4,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 20x at step 150", gs[150] > 20 * _median(gs[130:150]))
    ctx.check("logged loss ordinary at step 150", ls[150] < 2 * _median(ls[130:150]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    "climbing_chalk_grip_friction_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=100,
    note="a climbing-chalk grip-friction regressor (GELU MLP, MSE, Adam); the run resumes at step "
    "100 with a static loss scale of 2**16 left on and no unscale: a gradient over 1000x on a clean "
    "batch fills Adam's second moment, the median per-weight update 20-100 steps later is under "
    "a tenth of before while gradients are not smaller",
)
def h393_climbing_chalk_unscaled_resume_adam(ctx: Context) -> None:
    gen = seeded(3938)
    model = Regressor(10, 48, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 10, seed=39380)
    updates = []
    prev = {}

    def before(step):
        prev.update({n: p.detach().clone() for n, p in model.named_parameters()})

    def after(step):
        d = torch.cat([(p.detach() - prev[n]).abs().flatten() for n, p in model.named_parameters()])
        updates.append(float(d.median()))

    def backprop(step, loss, accumulate):
        return loss * (2.0**16 if step == 100 else 1.0) / accumulate

    _loop(ctx, model, opt, data, 220, F.mse_loss, before=before, after=after, backprop=backprop)
    gs = ctx.grad_norms
    ctx.check("gradient over 1000x at step 100", gs[100] > 1000 * _median(gs[80:100]))
    ctx.check(
        "median update 20-100 steps later under a tenth of before",
        _median(updates[120:200]) < 0.1 * _median(updates[80:100]),
    )
    ctx.check("gradients not smaller", _median(gs[120:200]) > 0.5 * _median(gs[80:100]))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "fencing_lunge_distance_deep_relu_mlp",
    "RMSprop",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="a fencing-lunge distance regressor, a 14-layer ReLU MLP whose init helper multiplies He "
    "init by a gain typed 1.5 for 1.0: dL/d(layers.0 output) over 20x dL/d(last hidden output) "
    "at the start and over 10x through the run; clipped, RMSprop",
)
def h393_fencing_lunge_deep_gain_rmsprop(ctx: Context) -> None:
    gen = seeded(3939)

    class Deep(nn.Module):
        def __init__(self, depth=14, width=32):
            super().__init__()
            dims = [10] + [width] * depth
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
            )
            self.head = nn.Linear(width, 1)
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=1.5 * math.sqrt(2.0 / lin.in_features))
                nn.init.zeros_(lin.bias)
            self.acts = []

        def forward(self, x):
            self.acts = []
            for lin in self.layers:
                x = lin(x)
                if x.requires_grad:
                    x.retain_grad()
                self.acts.append(x)
                x = F.relu(x)
            return self.head(x)[:, 0] / 100.0

    model = Deep()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    data = _readings(gen, 64, 10, seed=39390)
    ratios = []

    def after(step):
        a, b = model.acts[0].grad, model.acts[-1].grad
        ratios.append(float(a.norm() / b.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, data, 150, F.mse_loss, after=after, clip=1.0)
    ctx.check("layers.0 gradient over 20x the last layer's at the start", ratios[0] > 20)
    ctx.check("over 10x through the run", _median(ratios) > 10)
    ctx.check("loss finite", _finite(ctx.losses))


# -- classifiers ------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (logits)."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "sitar_fret_buzz_gelu_classifier",
    "AdamW",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="a sitar fret-buzz GELU classifier whose model used to end in log_softmax; the refactor "
    "moved it into the loss but the training script kept F.nll_loss on the raw logits, so the loss "
    "is -logit[target], unbounded below: the head's largest logit grows over 20x its start and is "
    "still growing, the loss goes below -10, finite",
)
def h393_sitar_fret_nll_on_raw_logits_adamw(ctx: Context) -> None:
    gen = seeded(3940)
    model = Classifier(12, 48, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    data = _grades(gen, 64, 12, 6, seed=39400, spread=0.6)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().max()))

    _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, watch=watch)
    ctx.check("largest logit over 20x its start", top[-1] > 20 * top[0])
    ctx.check("still growing", _mean(top[-10:]) > 1.2 * _mean(top[-40:-30]))
    ctx.check("loss below -10", ctx.losses[-1] < -10)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "shamisen_skin_strike_conv1d_classifier",
    "NAdam",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a shamisen skin-strike (bachi) Conv1d classifier whose softmax temperature is typed 1e-4 "
    "for 1e0 in the config: over half the rows' target probability is exactly 1.0 in float32 over "
    "the last 30 steps against none on the same logits at the intended temperature",
)
def h393_shamisen_temperature_typo_nadam(ctx: Context) -> None:
    gen = seeded(3941)
    model = ConvNet(2, 5, temperature=1e-4)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    data = _traces(gen, 64, 5, seed=39410)
    bug, intended = [], []

    def watch(step, out, x, y):
        o = out.detach()
        p = torch.softmax(o, -1).gather(1, y[:, None])
        q = torch.softmax(o * model.temperature, -1).gather(1, y[:, None])
        bug.append(float((p == 1.0).float().mean()))
        intended.append(float((q == 1.0).float().mean()))

    _loop(ctx, model, opt, data, 250, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("over half the rows collapsed over the last 30 steps", _mean(bug[-30:]) > 0.5)
    ctx.check("none at the intended temperature", max(intended[-30:]) == 0.0)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "wood_shingle_split_grade_relu_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="a wood-shingle (shake) split-grade ReLU Conv1d classifier on froe-strike traces: SGD "
    "momentum with weight decay under OneCycleLR, label smoothing 0.1, clipping; control",
)
def h393_wood_shingle_onecycle_control_sgd(ctx: Context) -> None:
    gen = seeded(3942)
    model = ConvNet(2, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    data = _traces(gen, 64, 5, seed=39420)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, data, steps, loss_fn, classifier=True, clip=1.0, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "discgolf_putt_drift_silu_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="a disc-golf putt-drift SiLU Huber regressor under fp16 autocast with a GradScaler, AdamW "
    "with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out batch, "
    "clipping; control",
)
def h393_discgolf_putt_amp_control_adamw(ctx: Context) -> None:
    gen = seeded(3943)
    model = Regressor(10, 48, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = _readings(gen, 32, 10, seed=39430)
    xv, yv = next(_readings(torch.Generator().manual_seed(7), 256, 10, seed=39430))

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
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite", _finite(ctx.losses))
