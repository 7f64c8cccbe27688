"""Held-out set 237 (``h237_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a telegraph-operator Perceiver ported with its qk-norm
switched off, a tamburello line-call BCE MLP fed SVM-style -1/+1 labels, a Kelvin-Helmholtz
billow-height GELU regressor whose stratified sampler's share for one site was typed 0.0008 for
0.05 (importance weight 62.5 for one step), a pit-saw cost-to-go TD MLP with its discount typed
1.005 for 0.995, an undular-bore crest-speed tanh regressor whose OneCycleLR max_lr was typed 1.0
for 0.1, a harmonograph Elman RNN with its recurrent init gain typed 2.5 for 0.25, a brontide
barograph Laplace-NLL net whose hand-written window norm has no eps (a stuck barograph gives 0/0),
a steel-tongue-drum pitch Huber regressor fed one shard in raw millimetres, a tintype plate-density
regressor whose encoder warm-up min(1, step // 500) freezes it, a pallone-col-bracciale cosine
classifier whose scale is applied twice, and three controls (a seaquake hydrophone conv1d
classifier with RAdam over 150 steps, an orrery gear-mesh tied-weight autoencoder under fp16
autocast with a GradScaler, a circumhorizontal-arc GRU regressor with Adadelta).

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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs between backward and the optimizer
    step, ``after(step)`` runs after the optimizer step; ``amp`` is the autocast dtype (None:
    float32); stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if unscale is not None:
            unscale(step)
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
        if math.isnan(shown):
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- telegraph: a Perceiver ported with its qk-norm switched off ------------------------------------


class CrossAttention(nn.Module):
    """Latents attend to the input events; q and k are layer-normalised per head before the
    scaled dot product in the reference (``qk_norm``)."""

    def __init__(self, dim, heads=2, qk_norm=True):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.last_logits = None

    def forward(self, latents, x):
        b, n, d = x.shape
        h = self.heads
        q = self.q_norm(self.to_q(latents).reshape(b, -1, h, d // h).transpose(1, 2))
        k = self.k_norm(self.to_k(x).reshape(b, n, h, d // h).transpose(1, 2))
        v = self.to_v(x).reshape(b, n, h, d // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_logits = logits.detach()
        y = logits.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, -1, d))


class FistPerceiver(nn.Module):
    """A Perceiver-style classifier: learned latents cross-attend to the embedded keying events,
    a latent MLP, mean over latents, a head."""

    def __init__(self, feat=5, length=24, dim=32, latents=4, classes=6, qk_norm=True):
        super().__init__()
        self.in_proj = nn.Linear(feat, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.latents = nn.Parameter(torch.randn(latents, dim))
        self.cross = CrossAttention(dim, qk_norm=qk_norm)
        self.norm = nn.LayerNorm(dim)
        self.latent_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        e = self.in_proj(x) + self.pos
        z = self.latents.expand(x.shape[0], -1, -1)
        z = z + self.cross(z, e)
        z = z + self.latent_mlp(self.norm(z))
        return self.head(z.mean(1))


def _keying(gen, batch, length=24, classes=6, seed=1):
    """A telegraph message as 24 keying events (key-down time, gap after, key pressure, contact
    bounce, and a flag for the message's sign-off), standardised. Every operator's habits show in
    how they key the sign-off; the other events are keyed in the manner of random operators
    (relayed or copied traffic), so only the flagged event names the sender."""
    g = torch.Generator().manual_seed(seed)
    marks = torch.randn(classes, 4, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        other = torch.randint(0, classes, (batch, length), generator=gen)
        events = marks[other] + 0.3 * torch.randn(batch, length, 4, generator=gen)
        x = torch.cat([events, torch.zeros(batch, length, 1)], -1)
        at = torch.randint(0, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, at, :4] = marks[y] + 0.3 * torch.randn(batch, 4, generator=gen)
        x[rows, at, 4] = 1.0
        yield x, y


@scenario(
    family="telegraph_operator_fist_perceiver",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("cross",),
    diverges=None,
    heldout=True,
    note="A Perceiver-style classifier (in_proj, 4 learned latents, cross: multi-head cross-attention from the latents to the 24 embedded keying events, norm, latent_mlp, head) naming which of 6 telegraph operators sent a message from their 'fist' on the sign-off (the other events are relayed traffic keyed by random operators), AdamW at 2e-2 with weight decay 0.01, cross-entropy. The reference layer-normalises q and k per head (qk-norm), which is what makes that rate safe; the port was built with qk_norm switched off. Picking out the one flagged event keeps paying, q and k grow and the cross-attention logits q.k/sqrt(d) grow over 20x from their early size, the attention rows go nearly one-hot (the same run with qk-norm keeps its logits under 10); finite.",
)
def h237_telegraph_perceiver_no_qk_norm(ctx: Context) -> None:
    steps, lr = 260, 2e-2

    def run(c, qk_norm):
        gen = seeded(23701)
        model = FistPerceiver(qk_norm=qk_norm)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sizes, peaks = {}, {}

        def watch(step, out, x, y):
            logits = model.cross.last_logits
            sizes[step] = float(logits.abs().amax(-1).mean())
            peaks[step] = float(logits.softmax(-1).amax(-1).mean())

        _train(
            c, model, opt, _keying(gen, 64), steps, F.cross_entropy, classifier=True, watch=watch
        )
        return sizes, peaks

    twin = _Quiet()
    normed, _ = run(twin, qk_norm=True)  # the reference's qk-norm, for the checks only
    sizes, peaks = run(ctx, qk_norm=False)
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(5, 15)])
    late = _mean([sizes[s] for s in range(steps - 20, steps)])
    ctx.check("cross-attention logits grew over 20x from steps 5-15 to the end", late > 20 * early)
    ctx.check(
        "attention rows near one-hot at the end (mean top weight over 0.95)",
        _mean([peaks[s] for s in range(steps - 20, steps)]) > 0.95,
    )
    ctx.check("with qk-norm the logits stay under 10", max(normed.values()) < 10)
    ctx.check("loss fell", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- tamburello: line calls encoded as -1/+1 fed to BCE ---------------------------------------------


def _line_calls(gen, batch, seed=2):
    """Ten standardised readings of a tamburello shot (ball speed, spin, bounce distance to the
    line, wind, ...) and the umpire's call; the loader was written for an SVM and encodes the call
    as +1 (in) / -1 (out)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        p = torch.sigmoid(2.0 * x @ w / math.sqrt(10))
        called_in = torch.rand(batch, generator=gen) < p
        yield x, torch.where(called_in, 1.0, -1.0)


@scenario(
    family="tamburello_line_call_bce_mlp",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) calling a tamburello shot in or out from 10 standardised readings (ball speed, spin, bounce distance to the line, ...), Adam at 3e-3, BCEWithLogitsLoss. The loader was reused from an SVM baseline and encodes the calls as +1 / -1 instead of 1 / 0. For a target of -1 the BCE term is max(z, 0) + z + log(1 + exp(-|z|)): it falls without bound as z goes to minus infinity, so the head's logits for 'out' calls are pushed down without limit (their size grows over 20x from steps 10-20 to the end and still grows), and the loss falls through 0 and keeps falling; finite over the run.",
)
def h237_tamburello_svm_labels_bce(ctx: Context) -> None:
    gen = seeded(23702)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sizes, negs = {}, []

    def watch(step, out, x, y):
        sizes[step] = float(out.detach().abs().mean())
        negs.append(float((y < 0).float().mean()))

    _train(
        ctx, model, opt, _line_calls(gen, 64), 260, F.binary_cross_entropy_with_logits, watch=watch
    )
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(10, 20)])
    late = _mean([sizes[s] for s in range(240, 260)])
    ctx.check("a quarter or more of the targets are -1", _mean(negs) > 0.25)
    ctx.check("head logits grew over 20x from steps 10-20 to the end", late > 20 * early)
    ctx.check(
        "head logits still growing at the end",
        late > 1.1 * _mean([sizes[s] for s in range(200, 220)]),
    )
    ctx.check("loss below 0 at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- Kelvin-Helmholtz billows: a stratum's sampling probability typed 0.0008 for 0.05 -------------


def _billows(gen, batch, seed=3):
    """Ten standardised readings of a sheared cloud layer (wind shear, stability, layer depth,
    humidity, ...) and the height of its Kelvin-Helmholtz billows, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="kelvin_helmholtz_billow_height_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the height of Kelvin-Helmholtz billows on a sheared cloud layer from 10 standardised readings (wind shear, stability, layer depth, ...), SGD at 0.01 with momentum 0.9, MSE. Batches come from a stratified sampler (one stratum per observing site) and the loss is multiplied by the importance weight target share / sampling share of the batch's stratum. One rare site's sampling share was typed 0.0008 for 0.05 in the sampler's table; it is drawn once, at step 100, and its importance weight is 62.5 instead of 1: that step's gradient is over 30x the usual while the batch itself is ordinary (the logged, unweighted loss stays at its level). The step and the momentum it leaves throw the weights off, the loss jumps, and the run recovers; finite.",
)
def h237_kelvin_helmholtz_importance_weight_typo(ctx: Context) -> None:
    gen = seeded(23703)
    onset = 100
    target_share, sampled_share = 0.05, 0.0008  # meant: 0.05
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def scale_loss(step, total):
        weight = target_share / sampled_share if step == onset else 1.0
        return total * weight

    _train(ctx, model, opt, _billows(gen, 64), 220, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 30x the median before", gn[onset] > 30 * _median(gn[80:100])
    )
    ctx.check(
        "loss at the onset within 2x its level (the batch is ordinary)",
        ls[onset] < 2 * _mean(ls[90:100]),
    )
    ctx.check(
        "loss after the kick over 2x its level before", max(ls[101:110]) > 2 * _mean(ls[90:100])
    )
    ctx.check(
        "loss back within 1.5x its level (steps 180-220)", _mean(ls[180:]) < 1.5 * _mean(ls[90:100])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- pit saw: a TD discount typed 1.005 for 0.995 -----------------------------------------------------


def _cuts(gen, batch, seed=4):
    """Transitions of a two-man pit saw working through a log: eight standardised readings of the
    cut (kerf depth, stroke rate, blade set, grain angle, ...), the effort spent this stroke and
    the readings one stroke later (stable linear dynamics with noise)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(8, 8, generator=g))[0] * 0.8
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        nxt = x @ a.T + 0.3 * torch.randn(batch, 8, generator=gen)
        cost = 1.0 + 0.3 * torch.tanh(x @ w / math.sqrt(8))
        yield x, torch.cat([cost[:, None], nxt], 1)


@scenario(
    family="pit_saw_cut_cost_to_go_td_mlp",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) learning the cost-to-go (remaining effort) of a pit-saw cut from 8 standardised readings of the cut by TD(0): target = effort + gamma x V(next readings), detached; ASGD at 0.01, MSE. The discount was typed 1.005 for 0.995, so the bootstrapped targets have no fixed point: each fit of V raises its own targets and they drift upwards. The loss falls at first, then climbs slowly and steadily as V and its targets inflate together, ending over 2x its low (the same run with 0.995 stays near its low); no single step jumps; finite.",
)
def h237_pit_saw_td_discount_typo(ctx: Context) -> None:
    steps = 300

    def run(c, gamma):
        gen = seeded(23704)
        model = Stack(8, hidden=64, act=nn.Tanh)
        opt = torch.optim.ASGD(model.parameters(), lr=0.01)

        def td_loss(v, batch):
            with torch.no_grad():
                target = batch[:, 0] + gamma * model(batch[:, 1:])
            return F.mse_loss(v, target)

        _train(c, model, opt, _cuts(gen, 64), steps, td_loss)

    twin = _Quiet()
    run(twin, gamma=0.995)  # the intended discount, for the checks only
    run(ctx, gamma=1.005)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    low = min(smooth)
    at = smooth.index(low)
    ctx.check("loss at the end over 2x its low", smooth[-1] > 2 * low)
    ctx.check(
        "the climb is gradual (no 10-step mean over 1.5x the one before after the low)",
        all(b < 1.5 * a for a, b in zip(smooth[at:], smooth[at + 1 :], strict=False)),
    )
    ctx.check(
        "the intended discount ends within 1.5x its low",
        _mean(twin.losses[-10:])
        < 1.5 * min(_mean(twin.losses[i : i + 10]) for i in range(0, steps - 9, 10)),
    )
    ctx.check("finite", _finite(ls))


# -- undular bore: OneCycleLR's max_lr typed 1.0 for 0.1 -------------------------------------------


def _bore_crests(gen, batch, seed=5):
    """Twelve standardised readings ahead of an undular tidal bore (tidal range, channel depth,
    river flow, Froude number, ...) and the speed of its leading crest, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="undular_bore_crest_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=30,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the leading-crest speed of an undular tidal bore from 12 standardised readings (tidal range, channel depth, river flow, ...), plain SGD, MSE, OneCycleLR over 300 steps (warm-up over the first 30%, momentum cycling off) whose max_lr was typed 1.0 for 0.1. The rate climbs from 0.04; near step 30 (lr about 0.2) lr x sharpness (power iteration on a fixed batch) crosses 2, and the loss, which had been falling, oscillates and blows up to inf within about 45 steps.",
)
def h237_undular_bore_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(23705)
    onset = 30
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=300, cycle_momentum=False
    )
    probe = next(_bore_crests(torch.Generator().manual_seed(4545), 256))
    record = {}

    def before(step):
        if step % 5 == 0 and step <= 150:
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _bore_crests(gen, 64), 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:onset])
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "lr x sharpness under 2 until 5 steps before the onset",
        max(v for s, v in record.items() if s <= onset - 5) < 2,
    )
    ctx.check(
        "lr x sharpness over 2 by 5 steps after the onset",
        max(v for s, v in record.items() if s <= onset + 5) > 2,
    )
    ctx.check(
        "loss blows up (100x its low) within 40 steps after the onset",
        broke is not None and onset < broke < onset + 40,
    )


# -- harmonograph: a recurrent init gain typed 2.5 for 0.25 -----------------------------------------


class ElmanCell(nn.Module):
    def __init__(self, feat, hidden, gain):
        super().__init__()
        self.ih = nn.Linear(feat, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.hh.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class PendulumRNN(nn.Module):
    """A hand-written Elman RNN over a harmonograph's pen trace, then a head."""

    def __init__(self, feat=2, hidden=48, gain=2.5):
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(feat, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _traces(gen, batch, length=40):
    """A harmonograph's pen trace: 40 (x, y) samples of two damped pendulums drawing together, and
    the pendulums' damping rate (standardised) to estimate from it."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        damp = torch.rand(batch, 1, generator=gen)
        f1 = 0.3 + 0.1 * torch.rand(batch, 1, generator=gen)
        f2 = 0.3 + 0.1 * torch.rand(batch, 1, generator=gen)
        env = torch.exp(-(0.01 + 0.05 * damp) * t)
        xs = env * torch.sin(f1 * t) + 0.05 * torch.randn(batch, length, generator=gen)
        ys = env * torch.sin(f2 * t + 1.0) + 0.05 * torch.randn(batch, length, generator=gen)
        yield torch.stack([xs, ys], -1), (damp.squeeze(1) - 0.5) / 0.29


@scenario(
    family="harmonograph_pendulum_decay_elman_rnn",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("cell", "cell.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (cell: ih, hh, tanh; head) reading 40 (x, y) samples of a harmonograph's pen trace and regressing the pendulums' damping rate, SGD Nesterov at 0.02 with momentum 0.9, MSE. The recurrent matrix cell.hh is initialised orthogonal with gain 2.5 where the config meant 0.25 (a slipped decimal point): the recurrence is far past the edge of chaos and the gradient grows back through time (at step 0 the gradient on the hidden state at t=0 is over 100x that on the last state, where the intended gain's shrinks); the whole-model gradient norm at step 0 is over 1000x the intended run's, the first updates throw the recurrent weights into saturation and the loss never comes down (it ends over 2x the intended run's); tanh keeps it finite.",
)
def h237_harmonograph_rnn_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(23706)
        model = PendulumRNN(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
        seen = {}

        def unscale(step):
            if step == 0:
                seen["norms"] = [float(h.grad.norm()) for h in model.states]

        _train(c, model, opt, _traces(gen, 64), 120, F.mse_loss, unscale=unscale)
        return seen.get("norms", [0.0, 1.0])

    twin = _Quiet()
    twin_norms = run(twin, gain=0.25)  # the intended gain, for the checks only
    norms = run(ctx, gain=2.5)
    ls = ctx.losses
    ctx.check(
        "gradient on the hidden state at t=0 over 100x that on the last state (step 0)",
        norms[0] > 100 * max(norms[-1], 1e-30),
    )
    ctx.check("with the intended gain it shrinks back through time", twin_norms[0] < twin_norms[-1])
    ctx.check(
        "whole-model gradient norm at step 0 over 100x the intended run's",
        ctx.grad_norms[0] > 100 * twin.grad_norms[0],
    )
    ctx.check(
        "loss at the end over 2x the intended run's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:])
    )
    ctx.check("finite", _finite(ls))


# -- brontide: a hand-written window norm without eps meets a stuck barograph ---------------------


class WindowNorm(nn.Module):
    """Standardises each window of readings by its own mean and standard deviation (no eps)."""

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class BrontideNet(nn.Module):
    def __init__(self, length=32, hidden=64):
        super().__init__()
        self.norm = WindowNorm()
        self.fc1 = nn.Linear(length + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.loc = nn.Linear(hidden, 1)
        self.log_scale = nn.Linear(hidden, 1)

    def forward(self, x):
        level = x.mean(-1, keepdim=True)
        h = F.silu(self.fc1(torch.cat([self.norm(x), level], -1)))
        h = F.silu(self.fc2(h))
        return torch.cat([self.loc(h), self.log_scale(h)], -1)


def _laplace_nll(out, y):
    loc, log_b = out[:, 0], out[:, 1]
    return ((y - loc).abs() / log_b.exp() + log_b + math.log(2.0)).mean()


def _booms(gen, batch, length=32, stuck_at=None):
    """32-sample microbarograph windows (standardised pressure) around brontides, the unexplained
    booms heard near coasts and lakes, and the boom's loudness (standardised). From step
    ``stuck_at`` one station's barograph is stuck and logs a constant reading for its window."""
    t = torch.arange(length, dtype=torch.float32)
    step = 0
    while True:
        amp = torch.rand(batch, 1, generator=gen)
        at = torch.randint(4, length - 4, (batch, 1), generator=gen)
        pulse = amp * torch.exp(-0.5 * ((t - at) / 2.0) ** 2) * torch.sin(0.8 * (t - at))
        x = pulse + 0.05 * torch.randn(batch, length, generator=gen)
        y = 2.0 * amp.squeeze(1) - 1.0 + 0.1 * torch.randn(batch, generator=gen)
        if stuck_at is not None and step == stuck_at:
            x[7] = 0.5
        step += 1
        yield x, y


@scenario(
    family="brontide_barograph_window_norm_laplace_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A SiLU net (norm: a hand-written per-window standardisation (x - mean) / std with no eps; fc1, fc2, loc and log_scale heads) predicting a Laplace distribution for a brontide's loudness from 32-sample microbarograph windows, NAdam at 2e-3, Laplace NLL. At step 90 one station's barograph is stuck and its window is a constant reading: its standard deviation is exactly 0, the norm computes 0/0 = NaN for that window, and the outputs and the loss are NaN at step 90 (the loss was finite and falling before).",
)
def h237_brontide_window_norm_no_eps(ctx: Context) -> None:
    gen = seeded(23707)
    onset = 90
    model = BrontideNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == onset:
            with torch.no_grad():
                seen["std_zero"] = bool((x.std(-1) == 0).any())
                seen["norm_nan"] = bool(torch.isnan(model.norm(x)).any())
                seen["x_finite"] = bool(torch.isfinite(x).all())

    _train(ctx, model, opt, _booms(gen, 64, stuck_at=onset), 150, _laplace_nll, watch=watch)
    ls = ctx.losses
    ctx.check("loss NaN at the onset", _first_bad(ls) == onset and math.isnan(ls[onset]))
    ctx.check("the inputs at the onset are finite", seen.get("x_finite") is True)
    ctx.check(
        "a window with standard deviation exactly 0 at the onset", seen.get("std_zero") is True
    )
    ctx.check("the norm's output has NaN at the onset", seen.get("norm_nan") is True)
    ctx.check("loss fell before the onset", _fell(ls[:onset], k=10, ratio=0.8))


# -- tongue drum: one workshop's shard in raw millimetres ------------------------------------------


def _tongues(gen, batch, seed=8):
    """Eight standardised measurements of a steel tongue drum's tongue (length, width, root slot
    depth, plate thickness, ...) and its pitch offset from the nominal note, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="tongue_drum_tongue_pitch_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a steel tongue drum tongue's pitch offset from 8 standardised measurements (length, width, root slot depth, plate thickness, ...), Adam at 1e-3, Huber loss, gradient norm clipped at 1. The batch at step 140 comes from one workshop's shard that skipped the standardisation and holds raw millimetres (20 to 200): that batch's loss and (pre-clip) gradient are over 100x the usual; clipping keeps the step it takes to the usual size and the loss comes back to its level afterwards; finite.",
)
def h237_tongue_drum_raw_millimetres(ctx: Context) -> None:
    gen = seeded(23708)
    onset = 140
    model = Stack(8, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sizes = []

    def alter(step, x, y):
        if step == onset:
            x = 110.0 + 30.0 * x.clamp(-3, 3)  # raw millimetres, never standardised
        sizes.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _tongues(gen, 64), 240, F.huber_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("inputs at the onset over 10x the usual", sizes[onset] > 10 * _median(sizes))
    ctx.check(
        "loss at the onset over 100x the median before", ls[onset] > 100 * _median(ls[110:140])
    )
    ctx.check(
        "gradient at the onset over 100x the median before", gn[onset] > 100 * _median(gn[110:140])
    )
    ctx.check(
        "loss back within 2x its level (steps 200-240)", _mean(ls[200:]) < 2 * _mean(ls[120:140])
    )
    ctx.check("finite", _finite(ls))


# -- tintype: a warm-up lambda with integer division freezes the encoder ----------------------------


class PlateNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.enc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.enc2(F.gelu(self.enc1(x))))).squeeze(-1)


def _plates(gen, batch, seed=9):
    """Ten standardised readings of a wet-collodion tintype exposure (plate age, silver bath
    strength, light level, lens aperture, ...) and the plate's mean density, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="tintype_plate_density_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (enc1, enc2 the encoder, head) regressing a wet-collodion tintype plate's density from 10 standardised readings (plate age, silver bath strength, light level, ...), Adagrad at 0.05 with two param groups and a LambdaLR: the head at full rate, the encoder behind a linear warm-up over 500 steps written min(1, step // 500) (integer division, step / 500 was meant). The run is 250 steps, so the encoder's multiplier is 0 throughout: enc1 and enc2 never move (relative update exactly 0 while the head moves over 1e-3 of its weights a step). The loss falls through the head alone but ends well above what the intended warm-up reaches; finite.",
)
def h237_tintype_warmup_integer_division(ctx: Context) -> None:
    steps, warm = 250, 500

    def run(c, integer):
        gen = seeded(23709)
        model = PlateNet()
        encoder = list(model.enc1.parameters()) + list(model.enc2.parameters())
        opt = torch.optim.Adagrad(
            [{"params": list(model.head.parameters())}, {"params": encoder}], lr=0.05
        )

        def ramp(s):
            return min(1, s // warm) if integer else min(1.0, (s + 1) / warm)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, ramp])
        ratios = {"enc1": [], "enc2": [], "head": []}
        prev = {}

        def before(step):
            for name in ratios:
                prev[name] = getattr(model, name).weight.detach().clone()

        def after(step):
            for name in ratios:
                w = getattr(model, name).weight.detach()
                ratios[name].append(float((w - prev[name]).norm() / w.norm()))

        _train(
            c,
            model,
            opt,
            _plates(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            sched=sched,
        )
        return ratios

    twin = _Quiet()
    run(twin, integer=False)  # the intended warm-up, for the checks only
    ratios = run(ctx, integer=True)
    ls = ctx.losses
    ctx.check("enc1 never moves", max(ratios["enc1"]) == 0.0)
    ctx.check("enc2 never moves", max(ratios["enc2"]) == 0.0)
    ctx.check("the head's relative update over 1e-3 per step", _median(ratios["head"]) > 1e-3)
    ctx.check(
        "loss at the end over 1.5x that of the intended warm-up",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- pallone col bracciale: a cosine classifier's scale applied twice -------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim))
        self.scale = scale

    def forward(self, z):
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T


class ShotNet(nn.Module):
    def __init__(self, d_in=16, dim=32, classes=8, scale=16.0, twice=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.embed = nn.Linear(64, dim)
        self.head = CosineHead(dim, classes, scale)
        self.twice = twice

    def forward(self, x):
        logits = self.head(self.embed(F.gelu(self.fc1(x))))
        return logits * self.head.scale if self.twice else logits  # the CosFace port's rescale


@scenario(
    family="pallone_bracciale_shot_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (fc1, embed, head: scale x cos(embedding, class weight), scale 16) naming which of 8 shots a pallone col bracciale player struck (with the spiked wooden armlet) from 16 standardised tracking features, RMSprop at 1e-3, cross-entropy. The model's forward was ported from a CosFace recipe whose margin wrapper rescales the head's logits by the scale again, so the scale is applied twice (256): the logits span hundreds between classes and the float32 softmax rounds to exactly 1.0 for the target on most rows (the same run with the scale applied once saturates on under a tenth); finite.",
)
def h237_pallone_cosine_scale_twice(ctx: Context) -> None:
    steps, s = 200, 16.0

    def run(c, twice):
        gen = seeded(23710)
        model = ShotNet(scale=s, twice=twice)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        fractions = {}

        def watch(step, out, x, y):
            fractions[step] = collapsed_fraction(out.detach(), y)

        batches = _kinds(gen, 64, 16, 8, seed=10, noise=0.5)
        _train(c, model, opt, batches, steps, F.cross_entropy, classifier=True, watch=watch)
        return fractions

    twin = _Quiet()
    once = run(twin, twice=False)  # the scale applied once, for the checks only
    fractions = run(ctx, twice=True)
    ls = ctx.losses
    late = _mean([fractions[k] for k in range(150, 200)])
    ctx.check("over half the rows' target probability exactly 1.0 (steps 150-200)", late > 0.5)
    ctx.check(
        "with the scale applied once under 10% of rows saturate",
        _mean([once[k] for k in range(150, 200)]) < 0.1,
    )
    ctx.check("finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


class HydrophoneConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x.unsqueeze(1))), 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _seaquakes(gen, batch, length=80, classes=4):
    """80 samples of a moored hydrophone's record: four kinds of event (a seaquake's T-phase, a
    whale call, a ship's propeller, surf noise) differing in frequency content and envelope."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.25 + 0.3 * y.float()[:, None] + 0.015 * torch.randn(batch, 1, generator=gen)
        centre = 20 + 40 * torch.rand(batch, 1, generator=gen)
        width = torch.where(y[:, None] % 2 == 0, 6.0, 20.0)
        sig = torch.sin(freq * t) * torch.exp(-0.5 * ((t - centre) / width) ** 2)
        yield sig + 0.2 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="seaquake_hydrophone_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A 1-D convolutional classifier (conv1, conv2, head) naming four kinds of event in 80 samples of a moored hydrophone's record (seaquake T-phase, whale call, ship propeller, surf), RAdam at 1e-2, cross-entropy with label smoothing 0.1, linear warm-up over 15 steps (LambdaLR), a short run of 150 steps. Healthy control.",
)
def h237_control_seaquake_radam_short(ctx: Context) -> None:
    gen = seeded(23711)
    steps, warm = 150, 15
    model = HydrophoneConv()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    hits = []

    def watch(step, out, x, y):
        if step >= steps - 30:
            hits.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _seaquakes(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 80% at the end", _mean(hits) > 0.8)
    ctx.check("finite", _finite(ls))


class TiedAE(nn.Module):
    """An autoencoder whose decoder reuses the encoder's weights transposed (tied)."""

    def __init__(self, d_in=24, hidden=48, code=8):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.enc2 = nn.Linear(hidden, code)
        self.dec_b2 = nn.Parameter(torch.zeros(hidden))
        self.dec_b1 = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        h = F.silu(self.enc1(x))
        z = self.enc2(h)
        h = F.silu(F.linear(z, self.enc2.weight.t(), self.dec_b2))
        return F.linear(h, self.enc1.weight.t(), self.dec_b1)


def _gear_meshes(gen, batch, seed=12):
    """24 standardised readings of an orrery's gear train turning one revolution (tooth-mesh
    torque at 24 points of the crank's turn), generated from 6 underlying gear faults and
    offsets; the reconstruction target is the reading itself."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, 24, generator=g) / math.sqrt(6)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = torch.tanh(z @ basis) + 0.05 * torch.randn(batch, 24, generator=gen)
        yield x, x


@scenario(
    family="orrery_gear_mesh_tied_autoencoder",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A tied-weight SiLU autoencoder (enc1, enc2; the decoder reuses their weights transposed) of 24 standardised tooth-mesh torque readings of an orrery's gear train, Adamax at 4e-3, MSE, fp16 autocast with a torch.amp.GradScaler, OneCycleLR over 220 steps. Healthy control.",
)
def h237_control_orrery_tied_fp16(ctx: Context) -> None:
    gen = seeded(23712)
    steps = 220
    model = TiedAE()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _gear_meshes(gen, 64),
        steps,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)


class ArcGRU(nn.Module):
    def __init__(self, feat=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _arcs(gen, batch, length=20, seed=13):
    """20 half-hourly frames of three standardised readings (sun elevation, cirrus cover, ice
    crystal orientation index) and the brightness of a circumhorizontal arc at the end,
    standardised; heavy-tailed label noise (Student-t: observers' estimates)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    t_noise = torch.distributions.StudentT(3.0)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = torch.tanh(x @ w / math.sqrt(3))
        weights = torch.exp(-0.2 * torch.arange(length - 1, -1, -1).float())
        y = (drive * weights).sum(1) / weights.sum() * 3
        yield x, y + 0.1 * t_noise.sample((batch,))


@scenario(
    family="circumhorizontal_arc_brightness_gru_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="A GRU regressor (gru, head) of a circumhorizontal arc's brightness from 20 frames of three standardised readings, heavy-tailed (Student-t) label noise, Adadelta at 1.0, Huber loss, gradient accumulation over 2 micro-batches, gradient norm clipped at 1, ReduceLROnPlateau (factor 0.5, patience 15). Healthy control.",
)
def h237_control_circumhorizontal_gru(ctx: Context) -> None:
    gen = seeded(23713)
    model = ArcGRU()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _arcs(gen, 32),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))
