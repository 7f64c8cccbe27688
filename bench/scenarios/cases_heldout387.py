"""Held-out set 387 (``h387_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an acequia ditch-network graph attention net whose attention-entropy regulariser is added
with its sign flipped (the attention logits grow), a tannery hide-liming regressor under fp16
autocast whose target unit is grams instead of kilograms (the head's fp16 output overflows), a
peat-cutting turf drying-time Gaussian-NLL net whose resumed step skips the unscale of a static
loss scale (Adam's second moment poisoned), a telemark-landing classifier whose z-loss sign is
flipped (the output logits grow without bound), a ball-lightning sighting net with a hand-written
BCE on a Sigmoid output (0 * log(0) = NaN once the sigmoid rounds to 1.0), an oast-house hop-kiln
moisture regressor fed one logger's shard in percent (one corrupted batch), a steelpan
note-tuning Conv1d classifier whose resumed step multiplies its micro-batch loss by the
accumulation count instead of dividing (one gradient burst), a tapestry-loom weft-density CNN
whose conv1 group's lr is typed 1e-9 (frozen) and a singing-sand-dune boom Elman RNN whose
recurrent init gain is 3 (gradients grow through time).

Controls: a coral-reef spawning-cue graph attention net (multi-head averaging, dropout on the
attention coefficients, ELU), a didgeridoo drone-overtone Conv1d classifier (NAdam, OneCycleLR,
label smoothing, clipping) and a felt-making wool-shrink tied autoencoder (fp16 autocast with a
GradScaler, AdamW with a no-decay group, accumulation, ReduceLROnPlateau, Huber loss).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
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
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
    train=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count; a backprop that
    divides itself returns ``(loss, True)``), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train(True if train is None else train)
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
            out = out.float()
            loss = loss_fn(out, y)
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


def _binary(gen, batch, d_in, seed):
    """Readings labelled by a hidden linear rule (separable: no label noise)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w > 0).float()


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


def _graphs(gen, batch, nodes=16, d_in=6, p=0.25, rule="strongest"):
    """Random graphs (self-loops included), 4 node classes. ``strongest``: a node's label is the
    sign pattern of features 1 and 2 of the neighbour with the strongest signal (feature 0);
    ``mean``: the sign pattern of the neighbourhood's mean of features 1 and 2. Yields
    ((features, adjacency), labels) with labels flattened over the batch."""
    while True:
        x = torch.randn(batch, nodes, d_in, generator=gen)
        a = torch.rand(batch, nodes, nodes, generator=gen) < p
        a = a | a.transpose(1, 2) | torch.eye(nodes, dtype=torch.bool)
        if rule == "strongest":
            sig = x[:, :, 0][:, None, :].expand(batch, nodes, nodes).masked_fill(~a, -1e9)
            src = sig.argmax(-1)  # (batch, nodes): the strongest neighbour of each node
            f = torch.stack([torch.gather(x[:, :, k], 1, src) for k in (1, 2)], -1)
        else:
            f = (a.float() @ x[:, :, 1:3]) / a.float().sum(-1, keepdim=True)
        y = (f[..., 0] > 0).long() * 2 + (f[..., 1] > 0).long()
        yield (x, a), y.reshape(-1)


# -- models -----------------------------------------------------------------------------------------


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


class GraphAttention(nn.Module):
    """A GAT layer: e_ij = LeakyReLU(a_src . W h_i + a_dst . W h_j) over each node's neighbours
    (masked by the adjacency), softmax over j, heads concatenated or averaged.
    ``last_logits`` keeps the largest |e_ij| of the batch, ``entropy`` the mean entropy of the
    attention rows (with its graph, for a regulariser)."""

    def __init__(self, d_in, d_out, heads=1, concat=True, att_drop=0.0):
        super().__init__()
        self.heads, self.d_out, self.concat = heads, d_out, concat
        self.lin = nn.Linear(d_in, heads * d_out, bias=False)
        self.a_src = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.a_dst = nn.Parameter(0.1 * torch.randn(heads, d_out))
        self.drop = nn.Dropout(att_drop)
        self.last_logits = 0.0

    def forward(self, x, adj):
        b, n, _ = x.shape
        h = self.lin(x).view(b, n, self.heads, self.d_out)
        s = (h * self.a_src).sum(-1)
        t = (h * self.a_dst).sum(-1)
        e = F.leaky_relu(s[:, :, None, :] + t[:, None, :, :], 0.2)  # (b, i, j, heads)
        mask = adj[..., None]
        self.last_logits = float(e.detach().masked_fill(~mask, 0).abs().max())
        alpha = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=2)
        plogp = torch.where(mask, alpha * torch.log(alpha.clamp_min(1e-30)), 0.0)
        self.entropy = -plogp.sum(2).mean()
        alpha = self.drop(alpha)
        out = torch.einsum("bijh,bjhd->bihd", alpha, h)
        return out.reshape(b, n, -1) if self.concat else out.mean(2)


class GAT(nn.Module):
    """gat1 -> ELU -> (gat2 -> ELU) -> head, per-node classification."""

    def __init__(self, d_in, hidden, classes, layer1, layer2=None):
        super().__init__()
        self.gat1 = layer1
        self.act1 = nn.ELU()
        self.gat2 = layer2
        self.act2 = nn.ELU() if layer2 is not None else None
        self.head = nn.Linear(hidden, classes)

    def forward(self, inp):
        x, adj = inp
        h = self.act1(self.gat1(x, adj))
        if self.gat2 is not None:
            h = self.act2(self.gat2(h, adj))
        return self.head(h).reshape(-1, self.head.out_features)


def _accuracy(model, batches, n=4) -> float:
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(n):
            x, y = next(batches)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return hits / total


# -- graph attention ---------------------------------------------------------------------------------


def _gat_entropy_run(sign, steps, seed, ctx=None):
    """The acequia GAT with an attention-entropy regulariser of weight 0.5 added with ``sign``
    (+1: the bug, entropy minimised; -1: as intended, entropy kept up); returns the model and
    the max |e_ij| per step."""
    gen = seeded(seed)
    model = GAT(6, 32, 4, GraphAttention(6, 32, heads=2, concat=True))
    model.head = nn.Linear(64, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    data = _graphs(gen, 16, rule="mean")
    logits = []

    def watch(step, out, x, y):
        logits.append(model.gat1.last_logits)

    def backprop(step, loss, accumulate):
        return loss + sign * 0.5 * model.gat1.entropy

    if ctx is not None:
        _loop(
            ctx,
            model,
            opt,
            data,
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
            backprop=backprop,
        )
    else:
        for _ in range(steps):
            x, y = next(data)
            loss = F.cross_entropy(model(x), y)
            watch(0, None, x, y)
            backprop(0, loss, 1).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model, logits


@scenario(
    "acequia_ditch_network_share_gat",
    "AdamW",
    "attention_logit_growth",
    "gat1",
    None,
    heldout=True,
    note="an attention-entropy regulariser meant to keep the GAT's attention from collapsing "
    "(loss - 0.5 * H(alpha)) is added with its sign flipped (loss + 0.5 * H(alpha)), so every "
    "step pushes the attention rows towards one-hot and the attention logits e_ij of gat1 grow "
    "over 20x while the task itself (the mean of the neighbourhood) needs no sharp attention",
)
def h387_acequia_gat_entropy_sign(ctx: Context) -> None:
    model, logits = _gat_entropy_run(+1.0, 250, 38701, ctx)
    ls = ctx.losses
    _, ref = _gat_entropy_run(-1.0, 250, 38701)
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the attention logits' max |e| over the last 20 steps over 20x that of the first 5",
        _mean(logits[-20:]) > 20 * _mean(logits[:5]),
    )
    ctx.check(
        "with the intended sign the logits grow under half as much",
        _mean(ref[-20:]) / _mean(ref[:5]) < 0.5 * _mean(logits[-20:]) / _mean(logits[:5]),
    )


@scenario(
    "coral_reef_spawning_cue_gat_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a two-layer GAT, 4 heads concatenated then 4 heads averaged, dropout 0.2 on "
    "the attention coefficients, ELU, Adam with weight decay 5e-4, clipping at 2",
)
def h387_coral_reef_gat_control(ctx: Context) -> None:
    gen = seeded(38702)
    layer1 = GraphAttention(6, 16, heads=4, concat=True, att_drop=0.2)
    layer2 = GraphAttention(64, 32, heads=4, concat=False, att_drop=0.2)
    model = GAT(6, 32, 4, layer1, layer2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-4)
    data = _graphs(gen, 16)
    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, clip=2.0)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.8x the first 10)", _fell(ls, 20))
    acc = _accuracy(model, _graphs(torch.Generator().manual_seed(387020), 16))
    ctx.check("held-out node accuracy over 0.5 (chance 0.25)", acc > 0.5)


# -- fp16 ---------------------------------------------------------------------------------------------


def _hide_uptake(gen, batch, d_in, seed, grams=False):
    """Liming-drum readings and the hides' weight after liming: 40-120 kg (x1000 in grams)."""
    for x, y in _readings(gen, batch, d_in, seed):
        kg = 80.0 + 25.0 * y
        yield x, kg * 1000.0 if grams else kg


@scenario(
    "tannery_hide_liming_swell_fp16_regressor",
    "Adam",
    "amp_overflow",
    "head",
    67,
    heldout=True,
    note="the regressor trains under fp16 autocast with a GradScaler; the data config's target "
    "unit reads 'g' for 'kg', so the hide weights are 40000-120000; as the head learns their "
    "mean its fp16 output passes 65504 and overflows to inf (the float32 forward of the same "
    "batch is finite), the loss is inf at step 67",
)
def h387_tannery_fp16_grams_target(ctx: Context) -> None:
    gen = seeded(38703)
    model = Trunk(8, 64, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    data = _hide_uptake(gen, 64, 8, 387031, grams=True)
    seen = {}

    def watch(step, out, x, y):
        seen["out"], seen["x"], seen["y"] = out.detach(), x, y

    _loop(ctx, model, opt, data, 200, F.mse_loss, watch=watch, scaler=scaler, amp=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss non-finite at step 67, finite before", bad == 67 and _finite(ls[:67]))
    ctx.check(
        "the loss fell before the overflow (step 60-66 under 0.7x the first 10)",
        _mean(ls[60:67]) < 0.7 * _mean(ls[:10]),
    )
    ctx.check(
        "the head's fp16 output holds inf at that step",
        seen["out"].dtype == torch.float16 and bool(torch.isinf(seen["out"]).any()),
    )
    with torch.no_grad():
        out32 = model(seen["x"])
    ctx.check(
        "the float32 forward of the same batch is finite and past 65504",
        bool(torch.isfinite(out32).all()) and float(out32.abs().max()) > 65504,
    )


@scenario(
    "felt_making_wool_shrink_tied_autoencoder",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a tied-weight autoencoder of wool shrinkage profiles (the decoder reuses the "
    "encoder's weight transposed), fp16 autocast with a GradScaler, AdamW with a no-decay bias "
    "group, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping, Huber loss",
)
def h387_felt_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(38704)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(16, 6)
            self.act = nn.SiLU()
            self.dec_bias = nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)

    g = torch.Generator().manual_seed(387041)
    basis = torch.randn(4, 16, generator=g)

    def profiles(gen):
        while True:
            z = torch.randn(64, 4, generator=gen)
            x = torch.tanh(z @ basis / 2) + 0.05 * torch.randn(64, 16, generator=gen)
            yield x, x

    model = Tied()
    decay = [model.enc.weight]
    no_decay = [model.enc.bias, model.dec_bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    vx, vy = next(profiles(torch.Generator().manual_seed(387042)))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    v0 = plateau()
    _loop(
        ctx,
        model,
        opt,
        profiles(gen),
        200,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ls, 10, 0.6))
    ctx.check("the held-out loss fell under half its start", plateau() < 0.5 * v0)
    ctx.check("the loss scale finite and positive", all(0 < s < math.inf for s in ctx.scales))


# -- Adam's second moment ---------------------------------------------------------------------------


class MeanVar(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head: the mean and the log-variance of a Gaussian."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    "peat_cutting_turf_dry_time_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=90,
    note="a Gaussian-NLL drying-time net trained with a static loss scale of 2**15 carried over "
    "from an fp16 recipe (loss x scale, gradients / scale); the resumed step 90 goes through the "
    "branch that skips the gradients' unscale, one gradient 32768x its size lands in Adam's "
    "second moment and the per-weight updates stall for the next hundred steps",
)
def h387_peat_cutting_skipped_unscale(ctx: Context) -> None:
    gen = seeded(38705)
    model = MeanVar(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    onset, scale = 90, 2.0**15
    updates = []
    snap = {}

    def before(step):
        snap["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        d = torch.cat(
            [
                (p.detach() - w).abs().flatten()
                for p, w in zip(model.parameters(), snap["w"], strict=True)
            ]
        )
        updates.append(float(d.median()))

    def backprop(step, loss, accumulate):
        # the resumed step's loss keeps its scale; every other step's scale is divided out again
        return loss * scale if step == onset else loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 387051, noise=0.2),
        260,
        _gauss_nll,
        before=before,
        after=after,
        backprop=backprop,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    pre = _median(gn[onset - 40 : onset])
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the gradient at step 90 over 1000x the median before", gn[onset] > 1000 * pre)
    ctx.check(
        "median per-weight update 20-100 steps later under a tenth of before",
        _median(updates[onset + 20 : onset + 100]) < 0.1 * _median(updates[onset - 40 : onset]),
    )
    ctx.check(
        "the gradients afterwards are not smaller (over half the median before)",
        _median(gn[onset + 20 : onset + 100]) > 0.5 * pre,
    )


# -- output logits ------------------------------------------------------------------------------------


@scenario(
    "ski_jump_telemark_landing_zloss_classifier",
    "SGD",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a PaLM-style z-loss (1e-3 * logsumexp(logits)^2, meant to keep the output logits near "
    "zero) is added with its sign flipped; cross-entropy is blind to a common shift of the "
    "logits, so SGD with momentum drives the head's logits up without bound while the "
    "cross-entropy itself keeps falling",
)
def h387_telemark_zloss_sign(ctx: Context) -> None:
    gen = seeded(38706)
    model = Trunk(10, 64, out=5, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    peaks, shifts = [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        shifts.append(float(out.detach().mean()))

    def backprop(step, loss, accumulate):
        lse = torch.logsumexp(watch.out, dim=-1)
        return loss - 1e-3 * (lse**2).mean()  # the bug: + 1e-3 * ...

    def watch_keep(step, out, x, y):
        watch(step, out, x, y)
        watch.out = out.float()

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 387061, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch_keep,
        backprop=backprop,
    )
    ls = ctx.losses
    ctx.check(
        "max |logit| over the last 10 steps over 20x that of the first 5",
        _mean(peaks[-10:]) > 20 * _mean(peaks[:5]),
    )
    ctx.check("the cross-entropy finite", _finite(ls))
    ctx.check(
        "the logits' common shift (batch mean) over the last 10 steps past 10x the first max |logit|",
        _mean(shifts[-10:]) > 10 * peaks[0],
    )


# -- a NaN from an operation --------------------------------------------------------------------------


class SightingNet(Trunk):
    """Trunk whose output goes through a Sigmoid module ``squash``: probabilities out."""

    def __init__(self, d_in, hidden=32):
        super().__init__(d_in, hidden, out=1, act=nn.ReLU)
        self.squash = nn.Sigmoid()

    def forward(self, x):
        return self.squash(super().forward(x))


def _hand_bce(p, y):
    """Binary cross-entropy written out by hand (no clamp of the logs, unlike F.binary_cross_entropy)."""
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


@scenario(
    "ball_lightning_sighting_bce_net",
    "Adamax",
    "nonfinite",
    "squash",
    158,
    heldout=True,
    note="the sighting-report classifier ends in a Sigmoid and its BCE is written by hand as "
    "-(y log p + (1 - y) log(1 - p)) without the clamp F.binary_cross_entropy applies; the "
    "reports are separable, the logits grow under Adamax, a confident report's sigmoid rounds "
    "to exactly 1.0 in float32 and (1 - y) * log(1 - p) = 0 * -inf = NaN at step 158",
)
def h387_ball_lightning_hand_bce(ctx: Context) -> None:
    gen = seeded(38707)
    model = SightingNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    seen = {}

    def watch(step, out, x, y):
        seen["p"], seen["x"], seen["y"] = out.detach(), x, y

    _loop(ctx, model, opt, _binary(gen, 64, 6, 387071), 200, _hand_bce, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss NaN at step 158, finite before", bad == 158 and _finite(ls[:158]))
    ctx.check(
        "the loss fell before (steps 140-157 under 0.3x the first 10)",
        _mean(ls[140:158]) < 0.3 * _mean(ls[:10]),
    )
    p, y = seen["p"], seen["y"]
    ctx.check(
        "a positive report's probability exactly 1.0 at that step",
        bool(((p == 1.0) & (y == 1)).any()),
    )
    ctx.check(
        "F.binary_cross_entropy (clamped logs) finite on the same outputs",
        math.isfinite(float(F.binary_cross_entropy(p, y))),
    )


# -- a corrupted batch --------------------------------------------------------------------------------


@scenario(
    "oast_house_hop_kiln_moisture_regressor",
    "RMSprop",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one kiln's logger writes its four moisture columns in percent instead of as fractions; "
    "its shard arrives as the batch of step 120 (inputs x100 in those columns), the loss and "
    "gradient jump over 20x, clipping at 5 keeps the step bounded and the run recovers",
)
def h387_oast_house_percent_shard(ctx: Context) -> None:
    gen = seeded(38708)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset = 120
    peaks = []

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = x[:, :4] * 100.0
        peaks.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, 387081), 240, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[onset - 20 : onset]), _median(gn[onset - 20 : onset])
    ctx.check(
        "the batch's max |x| over 30x the median batch's",
        peaks[onset] > 30 * _median(peaks[:onset]),
    )
    ctx.check("the loss at step 120 over 20x the median of the 20 before", ls[onset] > 20 * pre_l)
    ctx.check(
        "the gradient at step 120 over 20x the median of the 20 before", gn[onset] > 20 * pre_g
    )
    ctx.check(
        "recovers: the last 30 steps' mean under 2x the median before", _mean(ls[-30:]) < 2 * pre_l
    )
    ctx.check("the loss finite", _finite(ls))


# -- one gradient burst --------------------------------------------------------------------------------


class Conv1dNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over (batch, channels, length)."""

    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@scenario(
    "steelpan_note_tuning_conv1d_classifier",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="gradient accumulation over 8 micro-batches; the resume path at step 150 multiplies each "
    "micro-batch loss by the accumulation count instead of dividing by it, one step's gradient "
    "is 64x its size on clean data, clipping at 1 bounds the update and the run goes on",
)
def h387_steelpan_accum_multiply(ctx: Context) -> None:
    gen = seeded(38709)
    model = Conv1dNet(2, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    onset = 150

    def backprop(step, loss, accumulate):
        return loss * accumulate if step == onset else loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 8, 6, 387091),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        accumulate=8,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[onset - 20 : onset]), _median(gn[onset - 20 : onset])
    ctx.check(
        "the gradient at step 150 over 20x the median of the 20 before", gn[onset] > 20 * pre_g
    )
    ctx.check("the batch is clean: its loss under 3x the median before", ls[onset] < 3 * pre_l)
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell overall", _fell(ls, 20))
    ctx.check("the last 20 steps' mean under 1.5x the median before", _mean(ls[-20:]) < 1.5 * pre_l)


@scenario(
    "didgeridoo_drone_overtone_conv1d_classifier",
    "NAdam",
    "healthy",
    heldout=True,
    note="control: a Conv1d overtone classifier with NAdam under OneCycleLR (max 1e-2), label "
    "smoothing 0.1 and clipping at 1",
)
def h387_didgeridoo_onecycle_control(ctx: Context) -> None:
    gen = seeded(38710)
    model = Conv1dNet(2, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 387101),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.6x the first 10)", _fell(ls, 20, 0.6))
    acc = _accuracy(model, _traces(torch.Generator().manual_seed(387102), 64, 5, 387101))
    ctx.check("held-out accuracy over 0.7 (chance 0.2)", acc > 0.7)


# -- a frozen layer -----------------------------------------------------------------------------------


class WeftCNN(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over 1x8x8 weft patches."""

    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


@scenario(
    "tapestry_loom_weft_density_cnn",
    "Adagrad",
    "update_ratio_out_of_range",
    "conv1",
    None,
    heldout=True,
    note="per-layer learning rates in two param groups; the conv1 group's lr is typed 1e-9 for "
    "1e-2, so conv1 never moves (relative change under 1e-5) while conv2 and the head train",
)
def h387_tapestry_conv1_lr_typo(ctx: Context) -> None:
    gen = seeded(38711)
    model = WeftCNN(6)
    rest = [p for n, p in model.named_parameters() if not n.startswith("conv1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.conv1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-2}]
    )
    w_c1 = model.conv1.weight.detach().clone()
    w_h = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 64, 6, 387111, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ls = ctx.losses
    ctx.check("conv1 moved under 1e-5 of its norm", _rel_change(w_c1, model.conv1.weight) < 1e-5)
    ctx.check("the head moved over 5% of its norm", _rel_change(w_h, model.head.weight) > 0.05)
    ctx.check("the loss finite and fell", _fell(ls, 20))


# -- gradients growing through time --------------------------------------------------------------------


class Elman(nn.Module):
    """A hand-written Elman RNN: h_t = tanh(inp(x_t) + rec(h_{t-1})), classify from the last h.
    ``keep`` retains the hidden states' gradients for a probe."""

    def __init__(self, d_in, hidden, classes, gain=1.0):
        super().__init__()
        self.cell = nn.Module()
        self.cell.inp = nn.Linear(d_in, hidden)
        self.cell.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.head = nn.Linear(hidden, classes)
        self.keep = False
        self.states = []

    def forward(self, x):  # x: (batch, channels, length)
        h = torch.zeros(x.shape[0], self.cell.rec.in_features)
        self.states = []
        for t in range(x.shape[2]):
            h = torch.tanh(self.cell.inp(x[:, :, t]) + self.cell.rec(h))
            if self.keep:
                h.retain_grad()
                self.states.append(h)
        return self.head(h)


def _through_time(model, x, y) -> float:
    """|dL/dh_1| / |dL/dh_T|: how much the gradient grows going back through time."""
    model.keep = True
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    model.keep = False
    model.zero_grad(set_to_none=True)
    return float(first / last.clamp_min(1e-30))


@scenario(
    "singing_sand_dune_boom_elman_rnn",
    "SGD",
    "exploding_gradients",
    ("cell.rec", "cell"),
    None,
    heldout=True,
    note="the recurrent weight is initialised orthogonal with gain 3.0 (the init helper's gain "
    "argument was given the value meant for the input layer's scale) instead of 1.0; the tanh "
    "recurrence is chaotic and the gradient grows going back through the 40 steps; clipping at 1 "
    "keeps the loss finite",
)
def h387_singing_sand_rec_gain(ctx: Context) -> None:
    gen = seeded(38712)
    model = Elman(2, 32, 4, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    data = _traces(gen, 32, 4, 387121)
    px, py = next(data)
    ratios = []

    def before(step):
        if step % 25 == 0:
            ratios.append(_through_time(model, px, py))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, before=before, clip=1.0)
    ref = Elman(2, 32, 4, gain=1.0)
    r1 = _through_time(ref, px, py)
    ctx.check("dL/dh_1 over 20x dL/dh_40 at the start", ratios[0] > 20)
    ctx.check("over 10x at every probe through the run", min(ratios) > 10)
    ctx.check("under 5x with the intended gain 1.0", r1 < 5)
    ctx.check("the loss finite", _finite(ctx.losses))


# -- dying units ----------------------------------------------------------------------------------------


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


def _glass_run(lr, seed, ctx=None, steps=200):
    """The glassblower regressor under SGD momentum with CosineAnnealingWarmRestarts from
    ``lr``; returns the model, act2's dead fraction per step and a held-out MSE."""
    gen = seeded(seed)
    model = Trunk(10, 64, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60)
    data = _readings(gen, 64, 10, 387131)
    vx, vy = next(_readings(torch.Generator().manual_seed(387132), 512, 10, 387131))
    dead = []
    hook = model.act2.register_forward_hook(lambda m, i, o: dead.append(_dead(o)))
    if ctx is not None:
        _loop(ctx, model, opt, data, steps, F.mse_loss, sched=sched)
    else:
        for _ in range(steps):
            x, y = next(data)
            F.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    hook.remove()
    with torch.no_grad():
        held = float(F.mse_loss(model(vx), vy))
    return model, dead, held


@scenario(
    "glassblower_gather_heat_relu_regressor",
    "SGD",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="the config's base lr for SGD momentum with cosine warm restarts is typed 0.8 for 0.08; "
    "the first large steps push most of act2's ReLU units to never fire again, and they stay "
    "dead through the restarts while the loss stays finite",
)
def h387_glassblower_lr_typo_dead_relu(ctx: Context) -> None:
    _, dead, held = _glass_run(0.8, 38713, ctx)
    _, ref_dead, ref_held = _glass_run(0.08, 38713)
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("over 60% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.6)
    ctx.check("under 20% dead at the intended rate", _mean(ref_dead[-50:]) < 0.2)
    ctx.check("under 10% dead at the first step", dead[0] < 0.1)
    ctx.check("held-out loss over 2x that at the intended rate", held > 2 * ref_held)
