"""Held-out set 385 (``h385_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before. Faults: a sea-glass beachcomb-haul Set Transformer (induced set
attention blocks, pooling by multi-head attention) whose query/key param group has its lr typed
3e-2 for 3e-4 with no weight decay (attention logits grow), a tsukemono brine-grade cosine
classifier whose scale is typed 1e3 for 1e1 (softmax collapse), a kora-harp string-buzz BCE net
fed one shard logged in millivolts instead of volts (one corrupted batch), a lacrosse face-off
clamp-speed SiLU regressor whose loss-weight table returns 100 for one step (one gradient burst),
a fumarole-plume gas-count Poisson net whose rate comes out of a ReLU with no clamp before the log
(log 0, NaN), a rookery dive-depth deep tanh MLP initialised with gain 3 (gradients grow through
depth), a bird-banding ring-wear two-group Conv1d classifier whose backbone lr multiplier is left
at 0 by a freeze flag (frozen), a tin-whistle breath-pitch tanh regressor whose StepLR gamma is
typed 10 for 0.1 (the rate passes 2/sharpness), a pleacher-cut ReLU regressor under SGD momentum
with lr typed 1.0 for 1e-2 (dead ReLUs), and a salt-marsh creek-stage regressor whose target
normaliser accumulates the mean instead of averaging it (the target drifts, the loss climbs slowly).
Controls: a kora-harp ostinato pre-LN transformer with normalised queries and keys and AdamW
with warm-up, a sailmaker grommet-stitch Conv1d classifier with Adam, OneCycleLR and label
smoothing, and a snow-roller formation SiLU Huber regressor under fp16 autocast with a
GradScaler, SGD Nesterov, accumulation and ReduceLROnPlateau.

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


class _Offline:
    """A context for an unmonitored reference run (the intended setting): attaches nothing."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, *args, **kwargs) -> None:
        return None

    def targets(self, y) -> None:
        return None

    def step(self, loss) -> None:
        self.losses.append(float(loss))


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
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``inspect(step)`` sees the gradients before clipping,
    ``plateau()`` gives a held-out loss for ReduceLROnPlateau. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- generated data -------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, offset + y + noise * torch.randn(batch, generator=gen)


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


def _hauls(gen, batch, size=12, feats=4):
    """Sets of beach finds (size, frosting, hue, weight): the target is the largest piece's
    size plus the mean frosting, a permutation-invariant quantity."""
    while True:
        x = torch.randn(batch, size, feats, generator=gen)
        y = x[:, :, 0].max(1).values + x[:, :, 1].mean(1)
        yield x, y


def _phrases(gen, batch, length=16, vocab=12, classes=4):
    """Token phrases: the class is which of four motifs (token pairs) occurs most often."""
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randint(classes * 2, vocab, (batch, length), generator=gen)
        pos = torch.rand(batch, length, generator=gen) < 0.35
        motif = (2 * y[:, None] + torch.randint(0, 2, (batch, length), generator=gen)).long()
        yield torch.where(pos, motif, x), y


# -- hand-written models --------------------------------------------------------------------------


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


class MAB(nn.Module):
    """Multihead attention block of the Set Transformer (Lee et al. 2019):
    H = LN(Q + MHA(Q, K)), out = LN(H + rFF(H)). Keeps the last attention logits' max."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.fc_q = nn.Linear(dim, dim)
        self.fc_k = nn.Linear(dim, dim)
        self.fc_v = nn.Linear(dim, dim)
        self.fc_o = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.logit_max = 0.0

    def forward(self, q_in, k_in):
        b, n, d = q_in.shape
        m = k_in.shape[1]
        h = self.heads
        q = self.fc_q(q_in).reshape(b, n, h, -1).transpose(1, 2)
        k = self.fc_k(k_in).reshape(b, m, h, -1).transpose(1, 2)
        v = self.fc_v(k_in).reshape(b, m, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.logit_max = float(logits.detach().abs().max())
        att = torch.softmax(logits, -1) @ v
        x = self.ln0(q_in + att.transpose(1, 2).reshape(b, n, d))
        return self.ln1(x + self.ff(x))


class ISAB(nn.Module):
    """Induced set attention block: learnt inducing points attend to the set, then the set
    attends to them."""

    def __init__(self, dim, inducing=6, heads=2):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, inducing, dim) / math.sqrt(dim))
        self.mab0 = MAB(dim, heads)
        self.mab1 = MAB(dim, heads)

    def forward(self, x):
        h = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x)
        return self.mab1(x, h)


class PMA(nn.Module):
    """Pooling by multihead attention with learnt seed vectors."""

    def __init__(self, dim, seeds=1, heads=2):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, seeds, dim) / math.sqrt(dim))
        self.mab = MAB(dim, heads)

    def forward(self, x):
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x)


class SetTransformer(nn.Module):
    def __init__(self, feats=4, dim=32, heads=2):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.isab1 = ISAB(dim, 6, heads)
        self.isab2 = ISAB(dim, 6, heads)
        self.pool = PMA(dim, 1, heads)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.isab2(self.isab1(self.embed(x)))
        return self.head(self.pool(h)[:, 0]).squeeze(-1)

    def logit_max(self):
        return max(m.logit_max for m in self.modules() if isinstance(m, MAB))


class QKNormAttention(nn.Module):
    """Self-attention with L2-normalised queries and keys and a learnt temperature."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gain = nn.Parameter(torch.tensor(math.log(8.0)))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        att = torch.softmax(self.gain.exp() * q @ k.transpose(-1, -2), -1) @ v
        return self.proj(att.transpose(1, 2).reshape(b, t, d))


class PreLNBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = QKNormAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PhraseEncoder(nn.Module):
    def __init__(self, vocab=12, dim=32, heads=2, layers=2, length=16, classes=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.blocks = nn.ModuleList(PreLNBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.tok(idx) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x).mean(1))


class CosineClassifier(nn.Module):
    """ReLU trunk, then cosine similarity to learnt class weights times a fixed scale."""

    def __init__(self, d_in, classes, hidden=64, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(self.fc2(self.act1(self.fc1(x))), dim=-1)
        return self.scale * h @ F.normalize(self.head.weight, dim=-1).T


class TraceNet(nn.Module):
    """backbone (two Conv1d) -> global average -> head."""

    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.backbone(x).mean(-1))


class DeepTanh(nn.Module):
    def __init__(self, d_in, width=48, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "sea_glass_beachcomb_haul_set_transformer",
    "AdamW",
    "attention_logit_growth",
    where=("isab1.mab0", "isab1.mab1", "isab2.mab0", "isab2.mab1", "pool.mab"),
    diverges=None,
    heldout=True,
    note="Set Transformer (two ISABs with learnt inducing points, PMA pooling) on generated "
    "hauls; the query/key param group's lr is typed 3e-2 for 3e-4 and left without weight "
    "decay, so q.k/sqrt(d) grows many times over while the rest trains at 3e-4.",
)
def h385_sea_glass_haul_qk_lr_typo_set_transformer(ctx: Context) -> None:
    gen = seeded(38501)
    model = SetTransformer()
    qk = [p for n, p in model.named_parameters() if ".fc_q." in n or ".fc_k." in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 3e-2, "weight_decay": 0.0}, {"params": rest}],
        lr=3e-4,
        weight_decay=0.01,
    )
    maxes: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _hauls(gen, 32),
        200,
        F.mse_loss,
        watch=lambda s, o, x, y: maxes.append(model.logit_max()),
    )
    ctx.check("attention logits grew over 20x from step 0", _mean(maxes[-10:]) > 20 * maxes[0])
    ctx.check("attention logits above 50 at the end", _mean(maxes[-10:]) > 50)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "tsukemono_brine_grade_cosine_classifier",
    "Adagrad",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cosine classifier of pickling-brine grades; the scale is typed 1e3 for 1e1, the "
    "softmax saturates and most rows' target probability rounds to exactly 1.0.",
)
def h385_tsukemono_brine_scale_typo_cosine_classifier(ctx: Context) -> None:
    gen = seeded(38502)
    model = CosineClassifier(12, 6, scale=1e3)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    collapsed: list[float] = []
    intended: list[float] = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        intended.append(collapsed_fraction(out.detach() / 100.0, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 38502),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows collapsed (last 30 steps)", _mean(collapsed[-30:]) > 0.5)
    ctx.check("none collapse at the intended scale", _mean(intended[-30:]) < 0.01)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "kora_harp_string_buzz_bce_net",
    "RMSprop",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="ReLU BCE net flagging buzzing kora strings from pickup readings; at step 120 one "
    "shard logged in millivolts (x1000 in four columns) gets in, loss and gradient jump, "
    "clipping at 1.0, the run recovers.",
)
def h385_kora_harp_millivolt_shard_bce_net(ctx: Context) -> None:
    gen = seeded(38503)
    model = Trunk(10, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :4] *= 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, 38503),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at step 120", ls[120] > 20 * _median(ls[100:120]))
    ctx.check("gradient over 20x at step 120", gs[120] > 20 * _median(gs[100:120]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-10:]) < 2 * _mean(ls[110:120]))


@scenario(
    "lacrosse_face_off_clamp_speed_silu_regressor",
    "SGD",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="SiLU regressor of face-off clamp speed; the loss-weight table is indexed with an "
    "off-by-one and returns the 100 meant for a scale constant at step 140, one gradient burst "
    "on clean data, clipping at 5, the run recovers.",
)
def h385_lacrosse_face_off_loss_weight_table_spike(ctx: Context) -> None:
    gen = seeded(38504)
    model = Trunk(8, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    table = {140: 100.0}

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 38504),
        220,
        F.mse_loss,
        backprop=lambda s, loss: table.get(s, 1.0) * loss,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 50x at step 140", gs[140] > 50 * _median(gs[120:140]))
    ctx.check("loss not jumped at step 140", ls[140] < 3 * _median(ls[120:140]))
    ctx.check("recovers", _finite(ls) and _mean(ls[-10:]) < 2 * _mean(ls[130:140]))


class PoissonNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()
        nn.init.constant_(self.head.bias, 1.0)

    def forward(self, x):
        return self.rate(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _gas_counts(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, torch.poisson(torch.exp(0.9 * x @ w - 0.3), generator=gen)


@scenario(
    "fumarole_plume_gas_count_poisson_relu_net",
    "Adamax",
    "nonfinite",
    where=("rate",),
    heldout=True,
    diverges=80,
    note="Poisson NLL written by hand as rate - y*log(rate) with the rate out of a ReLU and no "
    "clamp; once a rate hits exactly 0 the log gives -inf and the loss is non-finite.",
)
def h385_fumarole_plume_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(38505)
    model = PoissonNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=1.5e-3)
    zeros: list[float] = []

    def nll(rate, y):
        return (rate - y * torch.log(rate)).mean()

    _loop(
        ctx,
        model,
        opt,
        _gas_counts(gen, 64, 6, 38505),
        250,
        nll,
        watch=lambda s, o, x, y: zeros.append(float((o.detach() == 0).float().mean())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("a rate exactly 0 at the bad step", bad is not None and zeros[bad] > 0)
    ctx.check("non-finite at step 80", bad == 80)


@scenario(
    "rookery_penguin_dive_depth_deep_tanh_mlp",
    "ASGD",
    "exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="16-layer tanh MLP of penguin dive depth initialised orthogonal with gain 3.0 (typed for "
    "the 5/3 tanh gain); the backward pass grows through depth, layers.0's weight gradient "
    "is many times layers.15's, clipping at 1.0 keeps the run finite.",
)
def h385_rookery_dive_depth_gain_typo_deep_tanh(ctx: Context) -> None:
    gen = seeded(38506)
    model = DeepTanh(8, depth=16, gain=3.0)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    ratios: list[float] = []

    def inspect(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratios.append(float(first / last.clamp_min(1e-12)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 38506), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("layers.0 gradient over 20x layers.15's at start", _mean(ratios[:5]) > 20)
    ctx.check("still over 10x at the end", _mean(ratios[-10:]) > 10)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "bird_banding_ring_wear_conv1d_two_group_classifier",
    "NAdam",
    "update_ratio_out_of_range",
    where=("backbone.0", "backbone.2"),
    diverges=None,
    heldout=True,
    note="Conv1d classifier of ring-wear traces with a backbone and a head param group; the "
    "backbone's lr multiplier is left at 0.0 by a freeze_backbone flag carried over from a "
    "linear-probe config, so the backbone never moves while the head trains.",
)
def h385_bird_banding_frozen_backbone_two_group(ctx: Context) -> None:
    gen = seeded(38507)
    model = TraceNet()
    base = 2e-3
    freeze_backbone = True
    mult = 0.0 if freeze_backbone else 1.0
    opt = torch.optim.NAdam(
        [
            {"params": model.backbone.parameters(), "lr": base * mult},
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    w0 = model.backbone[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    bgrads: list[float] = []
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 38507),
        150,
        F.cross_entropy,
        classifier=True,
        inspect=lambda s: bgrads.append(float(model.backbone[0].weight.grad.norm())),
    )
    ctx.check("backbone moved under 1e-6", _rel_change(w0, model.backbone[0].weight) < 1e-6)
    ctx.check("head moved over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("backbone got gradients", min(bgrads) > 0)
    ctx.check("losses finite", _finite(ctx.losses))


def _top_eig(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return abs(lam)


@scenario(
    "tin_whistle_breath_pitch_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=100,
    note="Tanh regressor of tin-whistle pitch from breath pressure, plain SGD; StepLR's gamma "
    "is typed 10 for 0.1, so at step 100 the rate goes up tenfold and lr x top Hessian "
    "eigenvalue passes 2, the loss oscillates and blows up.",
)
def h385_tin_whistle_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(38508)
    model = Trunk(6, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 6, 38508))
    sharp: dict[int, float] = {}

    def before(step):
        if step in (99, 101):
            sharp[step] = opt.param_groups[0]["lr"] * _top_eig(model, *probe)

    _loop(
        ctx, model, opt, _readings(gen, 64, 6, 38508), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 before", sharp.get(99, 9.0) < 2)
    ctx.check("lr x sharpness over 2 after", sharp.get(101, 0.0) > 2)
    ctx.check(
        "loss blew up after step 100", not _finite(ls) or max(ls[100:]) > 100 * _mean(ls[90:100])
    )


@scenario(
    "pleacher_cut_hedge_regrowth_relu_regressor",
    "SGD momentum",
    "loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="ReLU regressor of hedge regrowth after pleacher cuts; SGD momentum's lr is typed 1.0 "
    "for 1e-2, the first large steps push act2's units negative for every input and they never "
    "come back; the output settles at a constant and the loss stays flat.",
)
def h385_pleacher_cut_sgd_lr_typo_dead_relu(ctx: Context) -> None:
    probe = next(_readings(torch.Generator().manual_seed(5), 512, 8, 38509))[0]

    def dead_share(model):
        with torch.no_grad():
            return float((model.features(probe) <= 0).all(0).float().mean())

    def run(lr, c):
        gen = seeded(38509)
        model = Trunk(8, 64)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        dead: list[float] = []
        _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 8, 38509),
            150,
            F.mse_loss,
            watch=lambda s, o, x, y: dead.append(dead_share(model)),
        )
        return dead, _mean(c.losses[-10:])

    dead, last = run(1.0, ctx)
    ok_dead, ok_last = run(1e-2, _Offline())
    ctx.check("over 80% of act2 dead (last 30 steps)", _mean(dead[-30:]) > 0.8)
    ctx.check("few dead at the intended lr", _mean(ok_dead[-30:]) < 0.1)
    ctx.check("worse than the intended lr", last > 3 * ok_last)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "salt_marsh_creek_stage_drift_target_regressor",
    "RAdam",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="GELU regressor of creek stage normalised by a running mean that is accumulated "
    "(mu += 0.01 * batch mean) instead of averaged, so the normalised target drifts step by "
    "step and the loss climbs slowly with no jump.",
)
def h385_salt_marsh_running_mean_accumulates(ctx: Context) -> None:
    gen = seeded(38510)
    model = Trunk(8, 48, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-4)
    raw = _readings(gen, 64, 8, 38510, offset=2.0)
    state = {"mu": 2.0, "sd": 1.0}

    def batches():
        while True:
            x, y = next(raw)
            state["mu"] += 0.01 * float(y.mean())  # meant: mu = 0.99 * mu + 0.01 * mean
            yield x, (y - state["mu"]) / state["sd"]

    _loop(ctx, model, opt, batches(), 250, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    jumps = max(b / max(a, 1e-9) for a, b in zip(ls[:-1], ls[1:], strict=False))
    ctx.check("loss climbs over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * low)
    ctx.check("no single jump over 2x", jumps < 2)
    ctx.check("target mean drifted", state["mu"] > 4.0)
    ctx.check("losses finite", _finite(ls))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "kora_harp_ostinato_qknorm_prenorm_transformer",
    "AdamW",
    "healthy",
    heldout=True,
    note="Pre-LN transformer with normalised queries and keys and a learnt temperature, "
    "classifying ostinato phrases; AdamW with a 20-step linear warm-up then cosine decay, "
    "a no-decay group for norms and biases, clipping at 1.0.",
)
def h385_kora_harp_ostinato_qknorm_control(ctx: Context) -> None:
    gen = seeded(38511)
    model = PhraseEncoder()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    ids = {id(p) for p in decay}
    other = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=2e-3
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / (steps - warm)))))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _phrases(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "sailmaker_grommet_stitch_conv1d_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="Conv1d classifier of grommet-stitch tension traces; Adam under OneCycleLR, label "
    "smoothing 0.1, clipping at 2.0.",
)
def h385_sailmaker_grommet_onecycle_control(ctx: Context) -> None:
    gen = seeded(38512)
    model = TraceNet(classes=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=160)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 6, 38512),
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "snow_roller_formation_fp16_silu_huber_regressor",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="SiLU Huber regressor of snow-roller size from wind and snowpack readings under fp16 "
    "autocast with a GradScaler; SGD Nesterov, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1.0.",
)
def h385_snow_roller_fp16_plateau_control(ctx: Context) -> None:
    gen = seeded(38513)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    held = next(_readings(torch.Generator().manual_seed(3), 256, 8, 38513))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 38513, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("losses finite", _finite(ctx.losses))
