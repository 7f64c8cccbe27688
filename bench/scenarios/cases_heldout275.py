"""Held-out set 275 (``h275_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kamancheh bow-ornament attention classifier whose
qk-norm flag was misspelt and silently ignored, an earthquake-light glow regressor whose field
power feature is squared in fp16 under autocast, a spoon-carving bowl-depth regressor whose L2
penalty is subtracted, a mycorrhizal-network graph net with edge updates whose log-distance lost
its clamp, a tamburitza tremolo classifier whose layer-wise lr decay was entered in percent, a
shove-halfpenny slide regressor fed one shard logged in millimetres, a rope-splicing defect
tagger whose pos_weight is rebuilt from raw counts for one step, a bow-drill ember-time deep
tanh net initialised with gain 4, a quillwork dye-pattern classifier whose temperature was
typed 0.001 for 1.0, a nautilus chamber-volume regressor whose SGD lr was scaled linearly with
the batch size, and three controls (a vihuela pluck-decay net under bf16 autocast with AdamW
param groups, a snail-racing lap-time GRU with a Gaussian NLL and ReduceLROnPlateau, a
bottle-kiln firing-stage Conv1d classifier with OneCycleLR, label smoothing and gradient
accumulation).

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


class _Twin:
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
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step; ``amp``: an autocast dtype; stops after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            out = out.float() if amp is not None else out
            if hasattr(loss_fn, "step_loss"):  # a loss that depends on the step
                loss = loss_fn.step_loss(step, out, y)
            else:
                loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- kamancheh: the qk-norm flag was misspelt and silently ignored -------------------------------


class OrnamentAttention(nn.Module):
    def __init__(self, dim, qk_norm):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        self.q_ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.k_ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.dim = dim
        self.last_peak = 0.0

    def logits(self, x):
        q, k = self.q(x), self.k(x)
        if self.qk_norm:
            q, k = self.q_ln(q), self.k_ln(k)
        return q @ k.transpose(1, 2) / math.sqrt(self.dim)

    def forward(self, x):
        att = self.logits(x)
        self.last_peak = float(att.detach().abs().max())
        return torch.softmax(att, -1) @ self.v(x)


class KamanchehNet(nn.Module):
    def __init__(self, vocab=24, length=12, dim=32, classes=6, qk_norm=True):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = OrnamentAttention(dim, qk_norm)
        self.head = nn.Linear(dim, classes)
        for lin in (self.attn.q, self.attn.k, self.attn.v):
            nn.init.normal_(lin.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.attn(x)[:, 0])


def _ornaments(gen, batch, length=12, vocab=24, classes=6):
    """Bow-stroke token sequences: position 0 is a query token, one marker token (18..23)
    sits somewhere; the ornament class is the marker's identity."""
    while True:
        x = torch.randint(1, 18, (batch, length), generator=gen)
        x[:, 0] = 0
        y = torch.randint(0, classes, (batch,), generator=gen)
        pos = torch.randint(1, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] = 18 + y
        yield x, y


@scenario(
    family="kamancheh_bow_ornament_attention_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-layer attention classifier (tok and pos embeddings, attn with q, k, v projections, head) naming which of 6 ornaments a kamancheh player bows from a 12-token stroke sequence (the ornament's marker token sits at a random place; the query position must find it), Adam at 1e-2, cross-entropy. The config asks for QK-LayerNorm, but the flag was misspelt (qk_nrom) and the model's default (off) was used silently: nothing bounds q.k/sqrt(d), and sharpening the attention keeps paying, so the attention logits (q and k initialised at std 0.02, peak about 0.1 at the start) grow more than 20x over the run to a peak over 30 where the softmax is one-hot; the twin with the qk-norm on keeps the peak over 5x smaller. Finite, no blow-up.",
)
def h275_kamancheh_qk_norm_flag_ignored(ctx: Context) -> None:
    def run(c, qk_norm):
        gen = seeded(27501)
        model = KamanchehNet(qk_norm=qk_norm)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        probe = next(_ornaments(torch.Generator().manual_seed(5), 256))[0]

        def peak_now():
            with torch.no_grad():
                x = model.tok(probe) + model.pos(torch.arange(probe.shape[1]))
                return float(model.attn.logits(x).abs().max())

        peaks = [peak_now()]

        def after(step):
            peaks.append(peak_now())

        _train(
            c, model, opt, _ornaments(gen, 64), 250, F.cross_entropy, classifier=True, after=after
        )
        return peaks

    twin = _Twin()
    twin_peaks = run(twin, True)
    peaks = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the attention logits' peak grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak ends over 30 (softmax near one-hot)", peaks[-1] > 30)
    ctx.check("the twin with qk-norm keeps the peak 5x smaller", twin_peaks[-1] < peaks[-1] / 5)
    ctx.check("the loss fell", _fell(ls, ratio=0.5))


# -- earthquake light: the field power feature is squared in fp16 --------------------------------

ONSET_QUAKE = 140


class PowerFeature(nn.Module):
    """Squares the projected field components (a power estimate) before the LayerNorm."""

    def forward(self, h):
        return h * h


class GlowNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.power = PowerFeature()
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.norm(self.power(self.fc1(x)))
        return self.head(self.act(self.fc2(h))).squeeze(-1)


def _field(gen, batch, seed):
    """Magnetometer and tilt readings in their logged units (tens of nT), log glow target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = 20.0 * torch.randn(batch, 10, generator=gen)
        y = torch.log1p((x @ w / 20.0) ** 2 / 10.0)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="earthquake_light_glow_fp16_power_regressor",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("power",),
    diverges=ONSET_QUAKE,
    heldout=True,
    onset=ONSET_QUAKE,
    note="A regressor of how bright an earthquake light glows (log luminance) from 10 magnetometer and tilt readings kept in their logged units (tens of nT): fc1 projects them, power squares the projections (a field power estimate), norm (LayerNorm) rescales, fc2, act, head; SGD momentum 0.9 at 1e-2, MSE, trained under fp16 autocast with a torch.amp.GradScaler. In fp32 the squares are harmless because the LayerNorm rescales them, but under autocast fc1's output is fp16 and the elementwise square stays fp16: at step 140 a storm batch with readings about 8x the usual (physically valid, the same batch gives an ordinary loss in fp32) pushes fc1's projections past 256, their squares past 65504, power outputs inf, the LayerNorm turns it into NaN and the loss is NaN at step 140. The fp32 twin on the same data stays finite.",
)
def h275_earthquake_light_fp16_power_square(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(27502)
        model = GlowNet()
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        seen = {}

        def alter(step, x, y):
            if step == ONSET_QUAKE:
                x = 8.0 * x
                seen["storm"] = (x.clone(), y.clone())
            return x, y

        def watch(step, out, x, y):
            if step == ONSET_QUAKE and amp:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                    seen["sq_inf"] = bool(torch.isinf(model.power(model.fc1(x))).any())
                    seen["fc1_peak"] = float(model.fc1(x).float().abs().max())
                with torch.no_grad():
                    seen["fp32_loss"] = float(F.mse_loss(model(x), y))

        _train(
            c,
            model,
            opt,
            _field(gen, 64, 41),
            220,
            F.mse_loss,
            scaler=scaler,
            amp=torch.float16 if amp else None,
            alter=alter,
            watch=watch,
        )
        return seen

    twin = _Twin()
    run(twin, False)
    seen = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite before the storm batch", _finite(ls[:ONSET_QUAKE]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_QUAKE], ratio=0.7))
    ctx.check("the loss is non-finite at step 140", _first_bad(ls) == ONSET_QUAKE)
    ctx.check("fc1's projections passed 256 on the storm batch", seen.get("fc1_peak", 0) > 256)
    ctx.check("the fp16 square overflowed to inf", seen.get("sq_inf", False))
    ctx.check(
        "in fp32 the same batch gives an ordinary loss (under 5x the median)",
        seen.get("fp32_loss", math.inf) < 5 * _median(ls[ONSET_QUAKE - 30 : ONSET_QUAKE]),
    )
    ctx.check("the fp32 twin stays finite", _finite(twin.losses) and len(twin.losses) == 220)


# -- spoon carving: the L2 penalty is subtracted -------------------------------------------------


class _SignedL2:
    def __init__(self, model, coef):
        self.model, self.coef = model, coef

    def step_loss(self, step, out, y):
        data = F.mse_loss(out, y)
        penalty = sum((p * p).sum() for n, p in self.model.named_parameters() if "weight" in n)
        self.last_data = float(data.detach())
        # the loss builder returns data - sum(regularisers): the penalty entered with its sign
        return data - self.coef * penalty


class _ShowData:
    """Reports the data loss while the backpropagated total includes the signed penalty."""

    def __init__(self, inner):
        self.inner = inner

    def step_loss(self, step, out, y):
        total = self.inner.step_loss(step, out, y)
        data = self.inner.last_data
        return total - total.detach() + data


@scenario(
    family="spoon_carving_bowl_depth_silu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how deep a green-wood spoon carver's hook knife takes the bowl from 12 standardised readings (wood species, moisture, knife sweep, grip, ...), ASGD at 1e-2, MSE plus an L2 penalty on the weights (coefficient 0.2 on the summed squares, copied from a ridge head's recipe). The loss builder subtracts its regularisers (it is written for log-likelihood bonuses) and the penalty was entered with its positive sign, so the run optimises MSE - 0.2 * |w|^2: the data loss first falls (for about 120 steps), then, as the weights are pushed outward by a factor of about 1.004 a step, climbs slowly and steadily to over 3x its minimum with no spike; the weight norm keeps growing; the twin with the penalty switched off keeps falling and ends several times lower. Finite, no blow-up in the run's length.",
)
def h275_spoon_carving_l2_sign(ctx: Context) -> None:
    def run(c, coef):
        gen = seeded(27503)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
        norms = [float(_flat(model).norm())]

        def after(step):
            norms.append(float(_flat(model).norm()))

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 12, 53),
            300,
            _ShowData(_SignedL2(model, coef)),
            after=after,
        )
        return norms

    twin = _Twin()
    run(twin, 0.0)
    norms = run(ctx, 0.2)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(len(ls) - 9)]
    low = min(range(len(smooth)), key=lambda i: smooth[i])
    spikes = [ls[i] / _mean(ls[i - 10 : i]) for i in range(10, len(ls))]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell to under half its start", smooth[low] < 0.5 * smooth[0])
    ctx.check("the lowest point is in the first half", low < len(ls) // 2)
    ctx.check("then climbed to over 3x its minimum by the end", smooth[-1] > 3 * smooth[low])
    ctx.check("no spike: no step over 2x the mean of the 10 before", max(spikes) < 2)
    ctx.check("the weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check(
        "the twin without the penalty ends 2x lower",
        _mean(twin.losses[-10:]) < 0.5 * _mean(ls[-10:]),
    )


# -- mycorrhizal network: the log-distance edge feature lost its clamp ---------------------------

ONSET_MYCO = 110


class EdgeGeometry(nn.Module):
    """Log pairwise distance between trees (the diagonal is given distance 1, log 0)."""

    def forward(self, pos):
        n = pos.shape[1]
        d = (pos[:, :, None, :] - pos[:, None, :, :]).norm(dim=-1)
        # written as log(d.clamp_min(1e-3) + eye); the clamp was dropped in a refactor
        return torch.log(d + torch.eye(n))[..., None]


class MycorrhizalGNN(nn.Module):
    """Two rounds of message passing with edge updates: e_ij <- edge_mlp(h_i, h_j, e_ij, geom);
    h_i <- h_i + node_mlp(h_i, sum_j e_ij)."""

    def __init__(self, d_node=6, hidden=24, rounds=2):
        super().__init__()
        self.embed = nn.Linear(d_node, hidden)
        self.edge_geom = EdgeGeometry()
        self.edge_in = nn.Linear(1, hidden)
        self.edge_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(4 * hidden, hidden), nn.SiLU()) for _ in range(rounds)
        )
        self.node_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU()) for _ in range(rounds)
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, batch):
        pos, feats = batch[..., :2], batch[..., 2:]
        h = self.embed(feats)
        g = self.edge_geom(pos)
        e = self.edge_in(g)
        n = h.shape[1]
        mask = (1.0 - torch.eye(n))[None, :, :, None]
        for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps, strict=True):
            hi = h[:, :, None, :].expand(-1, -1, n, -1)
            hj = h[:, None, :, :].expand(-1, n, -1, -1)
            e = edge_mlp(torch.cat([hi, hj, e, self.edge_in(g)], -1)) * mask
            h = h + node_mlp(torch.cat([h, e.sum(2) / n], -1))
        return self.head(h).squeeze(-1)


def _stands(gen, batch, trees=10):
    """Forest plots: tree positions (tens of metres), 6 standardised tree readings; the target
    is each tree's carbon received over the network, from nearby trees' surplus."""
    while True:
        pos = 3.0 * torch.rand(batch, trees, 2, generator=gen)
        feats = torch.randn(batch, trees, 6, generator=gen)
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1) + 10 * torch.eye(trees)
        surplus = torch.tanh(feats[..., 0] - 0.5 * feats[..., 1])
        y = (torch.exp(-d) * surplus[:, None, :]).sum(-1) - 0.3 * feats[..., 2]
        yield torch.cat([pos, feats], -1), y


@scenario(
    family="mycorrhizal_network_carbon_edge_gnn",
    optimizer="AdamW",
    cause="nonfinite",
    where=("edge_geom",),
    diverges=ONSET_MYCO,
    heldout=True,
    onset=ONSET_MYCO,
    note="A hand-written message-passing graph network with edge updates (embed, edge_geom, edge_in, edge_mlps.0/1, node_mlps.0/1, head) predicting how much carbon each tree of a 10-tree forest plot receives through the mycorrhizal network from tree positions and 6 readings per tree, AdamW at 3e-3 (weight decay 1e-2), MSE. edge_geom computes the log pairwise distance as log(d + eye); the clamp_min(1e-3) it had was dropped in a refactor. At step 110 a plot surveyed with a coppice stool's regrowth logged at its parent stump's GPS point comes in: two trees at distance exactly 0, log(0) = -inf in edge_geom, the edge MLP turns it into inf - inf and the loss is NaN at step 110. The plot is otherwise ordinary and duplicate positions are a legitimate survey record; the loss was falling before.",
)
def h275_mycorrhizal_gnn_log_distance_unclamped(ctx: Context) -> None:
    gen = seeded(27504)
    model = MycorrhizalGNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_MYCO:
            x = x.clone()
            x[3, 7, :2] = x[3, 2, :2]
            seen["feats_max"] = float(x[..., 2:].abs().max())
            with torch.no_grad():
                g = model.edge_geom(x[..., :2])
            seen["geom_inf"] = bool(torch.isinf(g).any())
        return x, y

    _train(ctx, model, opt, _stands(gen, 16), 160, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the onset", _finite(ls[:ONSET_MYCO]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_MYCO], ratio=0.7))
    ctx.check("edge_geom produced -inf on the plot", seen.get("geom_inf", False))
    ctx.check("the loss is NaN at step 110", _first_bad(ls) == ONSET_MYCO)
    ctx.check("the plot's readings are ordinary (max |x| under 6)", seen.get("feats_max", 99) < 6)


# -- tamburitza: the layer-wise lr decay was entered in percent ----------------------------------


@scenario(
    family="tamburitza_tremolo_style_layer_decay_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 5 regional tremolo styles a tamburitza player uses from 18 standardised pick-stroke readings, Adamax at 2e-3 with layer-wise lr decay param groups (head x1, fc2 x decay, fc1 x decay^2). The config meant layer_decay 0.75 and was written in percent-of-a-percent, 0.0075: fc2 trains at 1.5e-5 and fc1 at 1.1e-7, so fc1's per-step update is under 1e-6 of its weights and fc2's under 1e-4, while the head's is over 1e-3; the loss falls through the head alone and ends well above the twin with 0.75. Finite, no blow-up.",
)
def h275_tamburitza_layer_decay_percent(ctx: Context) -> None:
    def run(c, decay):
        gen = seeded(27505)
        model = Stack(18, hidden=64, out=5, act=nn.GELU)
        base = 2e-3
        groups = [
            {"params": model.head.parameters(), "lr": base},
            {"params": model.fc2.parameters(), "lr": base * decay},
            {"params": model.fc1.parameters(), "lr": base * decay**2},
        ]
        opt = torch.optim.Adamax(groups, lr=base)
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for n in ratios:
                prev[n] = _flat(getattr(model, n))

        def after(step):
            for n in ratios:
                w = _flat(getattr(model, n))
                ratios[n].append(float((w - prev[n]).norm() / prev[n].norm()))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 5, 88, noise=0.6),
            200,
            F.cross_entropy,
            classifier=True,
            before=before,
            after=after,
        )
        return ratios

    twin = _Twin()
    run(twin, 0.75)
    ratios = run(ctx, 0.0075)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio under 1e-6", _median(ratios["fc1"]) < 1e-6)
    ctx.check("fc2's update ratio under 1e-4", _median(ratios["fc2"]) < 1e-4)
    ctx.check("the head's update ratio over 1e-3", _median(ratios["head"]) > 1e-3)
    ctx.check("the loss fell (through the head)", _fell(ls, ratio=0.9))
    ctx.check("the twin ends under 0.7x the loss", _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]))


# -- shove-halfpenny: one shard logged in millimetres --------------------------------------------

ONSET_SHOVE = 120


@scenario(
    family="shove_halfpenny_slide_distance_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SHOVE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a shove-halfpenny coin slides from 8 standardised readings (strike speed, coin mass, board polish, humidity, ...), SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0. One pub's shard logged the strike position and board length in millimetres instead of standardised metres; its batch comes in at step 120 with those two columns about 1e3 where the others stay under 5: the loss spikes and the gradient is over 20x the median before clipping, then the next batches are ordinary and the run recovers within 40 steps. Finite, no blow-up.",
)
def h275_shove_halfpenny_millimetre_shard(ctx: Context) -> None:
    gen = seeded(27506)
    model = Stack(8, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SHOVE:
            x = x.clone()
            x[:, 3] = 1000.0 * (1.2 + 0.1 * x[:, 3])
            x[:, 5] = 1000.0 * (0.6 + 0.05 * x[:, 5])
            seen["max"] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 61),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SHOVE - 20 : ONSET_SHOVE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the shard's batch has inputs over 500", seen.get("max", 0) > 500)
    ctx.check("the loss spiked over 10x at the onset", ls[ONSET_SHOVE] > 10 * pre)
    ctx.check(
        "the gradient over 20x the median before",
        gn[ONSET_SHOVE] > 20 * _median(gn[ONSET_SHOVE - 20 : ONSET_SHOVE]),
    )
    ctx.check(
        "recovered: 30-40 steps later under 1.5x the level before",
        _mean(ls[ONSET_SHOVE + 30 : ONSET_SHOVE + 40]) < 1.5 * pre,
    )


# -- rope splicing: pos_weight rebuilt from raw counts for one step ------------------------------

ONSET_ROPE = 100


class _RopeLoss:
    def __init__(self, pos_weight_bad):
        self.bad = pos_weight_bad

    def step_loss(self, step, out, y):
        pw = self.bad if step == ONSET_ROPE else torch.full((6,), 2.0)
        return F.binary_cross_entropy_with_logits(out, y, pos_weight=pw)


def _splices(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(20, 6, generator=g)
    while True:
        x = torch.randn(batch, 20, generator=gen)
        y = ((x @ w) / math.sqrt(20) + 0.3 * torch.randn(batch, 6, generator=gen) > 0.6).float()
        yield x, y


@scenario(
    family="rope_splicing_eye_splice_defect_bce_tagger",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROPE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging which of 6 defects (short tuck, twisted strand, slack crown, ...) a rigger's eye splice has from 20 standardised tension-test readings, SGD Nesterov momentum 0.9 at 5e-2, BCE with logits and a pos_weight of 2 per label, clipping at 1.0. The resume at step 100 rebuilds pos_weight from the raw positive and negative counts of the whole dataset instead of their ratio (counts in the thousands) for that one step: the loss and its gradient are over 100x the usual for one step (clipped), the batch itself is ordinary, and the run recovers. Finite, no blow-up.",
)
def h275_rope_splicing_pos_weight_counts(ctx: Context) -> None:
    gen = seeded(27507)
    model = Stack(20, hidden=48, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    bad = torch.tensor([4210.0, 3880.0, 5120.0, 2950.0, 4470.0, 3600.0])
    xs = []

    def watch(step, out, x, y):
        if step == ONSET_ROPE:
            xs.append(float(x.abs().max()))

    _train(ctx, model, opt, _splices(gen, 64, 73), 200, _RopeLoss(bad), watch=watch, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_ROPE - 20 : ONSET_ROPE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_ROPE], ratio=0.8))
    ctx.check(
        "the gradient at the onset over 100x the median before",
        gn[ONSET_ROPE] > 100 * _median(gn[ONSET_ROPE - 20 : ONSET_ROPE]),
    )
    ctx.check(
        "the gradient back under 5x the median the step after",
        gn[ONSET_ROPE + 1] < 5 * _median(gn[ONSET_ROPE - 20 : ONSET_ROPE]),
    )
    ctx.check("the batch is ordinary (max |x| under 6)", xs and xs[0] < 6)
    ctx.check(
        "recovered: 20-30 steps later under 1.3x the level before",
        _mean(ls[ONSET_ROPE + 20 : ONSET_ROPE + 30]) < 1.3 * pre,
    )


# -- bow drill: a deep tanh net initialised with gain 4 ------------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=10, width=48, depth=12, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="bow_drill_ember_time_deep_tanh_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0..11, head) regressing how long a bow-drill fire-lighter takes to raise an ember from 10 standardised readings (spindle and hearth wood, bow speed, downward pressure, humidity, ...), Adagrad at 1e-2, MSE, clipping at 1.0. The init helper took its gain from the config key meant for the input scaling (4.0) instead of tanh's 5/3, so every layer is xavier_normal_ with gain 4: the net is in the chaotic regime and the gradient grows through depth, layers.0's gradient over 30x the last layer's at the start and through the run; clipping keeps the run finite but the loss ends well above the twin with gain 5/3.",
)
def h275_bow_drill_init_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(27508)
        model = DeepTanh(gain=gain)
        opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
        ratio = []

        def after(step):
            # clipping scales every gradient alike: the ratio is the one backward gave
            g0 = model.layers[0].weight.grad.norm()
            gl = model.layers[-1].weight.grad.norm().clamp_min(1e-12)
            ratio.append(float(g0 / gl))

        _train(c, model, opt, _readings(gen, 64, 10, 19), 200, F.mse_loss, clip=1.0, after=after)
        return ratio

    twin = _Twin()
    twin_ratio = run(twin, 5.0 / 3.0)
    ratio = run(ctx, 4.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 30x the last layer's at the start", ratio[0] > 30)
    ctx.check("and over 30x in median over the run", _median(ratio) > 30)
    ctx.check("the twin's ratio under 10", _median(twin_ratio) < 10)
    ctx.check("the twin ends under 0.7x the loss", _mean(twin.losses[-10:]) < 0.7 * _mean(ls[-10:]))


# -- quillwork: the temperature was typed 0.001 for 1.0 ------------------------------------------


class TempNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="quillwork_dye_pattern_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 5 dye-and-fold patterns a porcupine-quillwork artist used from 16 standardised readings of a finished band (hue, quill width, flattening, stitch spacing, ...), NAdam at 1e-3, cross-entropy on head(x) / temperature. The temperature was typed 0.001 for 1.0 (a calibration offset from another run pasted in the wrong field), so the logits are 1000x: the float32 softmax rounds the top class to exactly 1.0 (the others to 0) for most rows from the start and through the run, the loss on the rows it gets wrong is enormous and stays far above the twin with 1.0, whose softmax never saturates. Finite, no blow-up.",
)
def h275_quillwork_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(27509)
        model = TempNet(16, 5, temperature)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        fracs, on_target = [], []

        def watch(step, out, x, y):
            p = torch.softmax(out.detach().float(), -1)
            fracs.append(float((p.max(-1).values == 1.0).float().mean()))
            on_target.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 5, 29, noise=0.8),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return fracs, on_target

    twin = _Twin()
    twin_fracs, _ = run(twin, 1.0)
    fracs, on_target = run(ctx, 0.001)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the rows' softmax exactly 1.0 on one class", _median(fracs) > 0.5)
    ctx.check("over a third exactly 1.0 on the target itself", _median(on_target) > 0.33)
    ctx.check("the twin's collapsed fraction stays under 0.05", max(twin_fracs) < 0.05)
    ctx.check("the loss ends over 3x the twin's", _mean(ls[-10:]) > 3 * _mean(twin.losses[-10:]))


# -- nautilus: the SGD lr was scaled linearly with the batch size --------------------------------


def _top_eig(model, x, y, iters=15):
    """Largest Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


ONSET_NAUTILUS = 15


@scenario(
    family="nautilus_shell_chamber_volume_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_NAUTILUS,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the volume of a nautilus shell's next septum chamber from 10 standardised readings (whorl expansion, siphuncle width, body-chamber length, depth, ...), plain SGD, MSE, batch 512. The recipe's lr 0.1 was tuned for batch 32 and the launcher applied the linear scaling rule for batch 512 (x16, 1.6) with a 100-step linear warm-up from 0.1 (LambdaLR), a rule that does not hold for plain SGD on this loss: lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch every 5 steps) is under 2 at the start and crosses the 2/sharpness stability limit at about step 15; the loss oscillates at the edge for a while, then the rising lr takes it past for good and it blows up (NaN in about 60 steps). The twin at a constant 0.1 stays under the limit and trains. The batches are ordinary.",
)
def h275_nautilus_linear_lr_scaling(ctx: Context) -> None:
    def run(c, scaled):
        gen = seeded(27510)
        model = Stack(10, hidden=48, act=nn.Tanh)
        probe = next(_readings(torch.Generator().manual_seed(8), 512, 10, 97))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        factor = 16.0 if scaled else 1.0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 1.0 + (factor - 1.0) * min(1.0, s / 100)
        )
        product = []

        def before(step):
            if step % 5 == 0 and step <= 40:
                product.append((step, opt.param_groups[0]["lr"] * _top_eig(model, *probe)))

        _train(
            c, model, opt, _readings(gen, 512, 10, 97), 200, F.mse_loss, sched=sched, before=before
        )
        return product

    twin = _Twin()
    twin_product = run(twin, False)
    product = run(ctx, True)
    ls = ctx.losses
    crossed = next((s for s, v in product if v > 2), None)
    ctx.check("lr x top eigenvalue under 2 at the start", product[0][1] < 2)
    ctx.check(
        "it crosses 2 between steps 10 and 25",
        crossed is not None and 10 <= crossed <= 25,
    )
    ctx.check("the twin's product stays under 2", max(v for _, v in twin_product) < 2)
    ctx.check(
        "the loss blew up: non-finite or over 100x its start",
        _first_bad(ls) is not None or max(ls) > 100 * ls[0],
    )
    ctx.check("the twin trained and stayed finite", _fell(twin.losses, ratio=0.7))


# -- controls ------------------------------------------------------------------------------------


class PluckNet(nn.Module):
    def __init__(self, d_in=14, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.norm1(self.fc1(x)))
        h = h + self.act2(self.norm2(self.fc2(h)))
        return self.head(h).squeeze(-1)


@scenario(
    family="vihuela_course_pluck_decay_bf16_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP with LayerNorms and a residual (fc1, norm1, act1, fc2, norm2, act2, head) regressing how long a plucked vihuela course rings from 14 standardised readings (string gauge, fret, pluck position, soundboard humidity, ...), trained under bf16 autocast, AdamW at 3e-3 with two param groups (weight decay 0.05 on the Linear weights, none on biases and LayerNorm parameters), a 20-step linear warm-up then cosine decay (LambdaLR), clipping at 1.0, Huber loss, noisy targets. Trains normally.",
)
def h275_vihuela_bf16_adamw_groups(ctx: Context) -> None:
    gen = seeded(27511)
    model = PluckNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / (steps - warm)))))
        ),
    )
    dtypes = []

    def watch(step, out, x, y):
        if step == 0:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                dtypes.append(model.fc1(x).dtype)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 14, 23, noise=0.15),
        steps,
        F.huber_loss,
        amp=torch.bfloat16,
        clip=1.0,
        sched=sched,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under half", _fell(ls, ratio=0.5))
    ctx.check("the forward ran in bf16", bool(dtypes) and dtypes[0] == torch.bfloat16)


class LapGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        h = out[:, -1]
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _laps(gen, batch, length=10):
    """A racing snail's previous lap times (standardised) with track dampness, temperature and
    slope; the next lap time is a trend of them with noise that grows with dampness."""
    while True:
        damp = torch.rand(batch, 1, generator=gen)
        temp = torch.randn(batch, 1, generator=gen)
        base = 0.5 * temp - 0.8 * damp + 0.2 * torch.randn(batch, 1, generator=gen)
        trend = 0.05 * torch.randn(batch, 1, generator=gen)
        t = torch.arange(length).float()[None]
        laps = base + trend * t + 0.1 * torch.randn(batch, length, generator=gen)
        slope = torch.randn(batch, length, generator=gen) * 0.3
        x = torch.stack([laps, damp.expand(-1, length), temp.expand(-1, length), slope], -1)
        y = (base + trend * length).squeeze(-1) + (0.05 + 0.3 * damp.squeeze(-1)) * torch.randn(
            batch, generator=gen
        )
        yield x, y


@scenario(
    family="snail_racing_lap_time_gru_gaussian_nll_forecaster",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GRU (gru, mean and log_var heads) forecasting a racing snail's next lap time from its previous 10 laps with track dampness, temperature and slope, Gaussian NLL (heteroscedastic: the noise grows with dampness), RAdam at 1e-2, ReduceLROnPlateau on the loss (factor 0.5, patience 30), clipping at 1.0. Trains normally.",
)
def h275_snail_racing_gru_radam_plateau(ctx: Context) -> None:
    gen = seeded(27512)
    model = LapGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    _train(ctx, model, opt, _laps(gen, 64), 220, _gauss_nll, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)


class KilnConv(nn.Module):
    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(F.max_pool1d(x, 2))))
        return self.head(x.mean(-1))


@scenario(
    family="bottle_kiln_firing_stage_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A Conv1d net with BatchNorm (conv1, bn1, conv2, bn2, head) naming which of 5 firing stages (water-smoking, full fire, soaking, ...) a bottle kiln is in from 3 thermocouple and draught traces of 32 readings with random gain and noise, SGD Nesterov momentum 0.9 under OneCycleLR (max_lr 0.1), cross-entropy with label smoothing 0.1, gradient accumulation over 2 micro-batches. Trains normally.",
)
def h275_bottle_kiln_onecycle_smoothing(ctx: Context) -> None:
    gen = seeded(27513)
    model = KilnConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 47),
        steps,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 0.6x", _fell(ls, ratio=0.6))
