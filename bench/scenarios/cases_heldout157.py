"""Held-out set 157 (``h157_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: three hand-written transformers (a causal decoder with
rotary positions and a hand softmax over q.k, an encoder through ``scaled_dot_product_attention``
and one through ``nn.MultiheadAttention``), a GRU over packed variable-length sequences, a
depthwise-separable 2-D CNN with BatchNorm, a mixture-of-experts MLP with a softmax gate, 1-D
conv nets (one under fp16 autocast with a GradScaler) and plain MLPs.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _call(model, x):
    return model(*x) if isinstance(x, tuple) else model(x)


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
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step (each loss divided by the count),
    ``alter(step, x, y)`` changes a batch, ``before(step)`` runs first, ``watch(step, out, x,
    y)`` records, ``scale_loss(step, loss)`` changes the loss that is back-propagated,
    ``after(step)`` runs after the update. A batch's ``x`` may be a tuple of model arguments."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = _call(model, x)
                loss = loss_fn(out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach().float())
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
                sched.step(shown)
            else:
                sched.step()
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# -- erhu bowing: a causal decoder whose attention temperature was read as a divisor -------------


def _rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over the last dim of (batch, heads, time, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * freq[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class BowAttention(nn.Module):
    """Causal self-attention with rotary q/k and a hand softmax over q.k; ``temperature`` divides
    the scores. Records the largest |logit| the softmax saw."""

    def __init__(self, dim, heads, temperature):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.temperature = temperature
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        q, k = _rotate(q), _rotate(k)
        scores = (q @ k.transpose(-1, -2)) / self.temperature
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        with torch.no_grad():
            self.last_max = float(scores.masked_fill(mask, 0.0).abs().amax())
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class BowBlock(nn.Module):
    def __init__(self, dim, heads, temperature):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BowAttention(dim, heads, temperature)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class ErhuBowingLM(nn.Module):
    """Predicts the next bowing token (direction x string x pressure, 16 symbols) of an erhu
    passage from the ones before."""

    def __init__(self, vocab=16, dim=32, heads=4, layers=2, temperature=None):
        super().__init__()
        hd = dim // heads
        temp = math.sqrt(hd) if temperature is None else temperature
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(BowBlock(dim, heads, temp) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x):
        h = self.tok(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def _bowing(gen, batch, vocab=16, length=24):
    """Passages repeat a phrase of 3 to 6 strokes with an occasional ornament."""
    while True:
        rows = []
        for _ in range(batch):
            n = int(torch.randint(3, 7, (1,), generator=gen))
            phrase = torch.randint(0, vocab, (n,), generator=gen)
            row = phrase.repeat(length // n + 2)[: length + 1].clone()
            orn = torch.rand(length + 1, generator=gen) < 0.05
            row[orn] = torch.randint(0, vocab, (int(orn.sum()),), generator=gen)
            rows.append(row)
        win = torch.stack(rows)
        yield win[:, :-1], win[:, 1:]


def _lm_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="erhu_bowing_causal_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A two-block causal decoder (rotary q/k, hand softmax over q.k with a causal mask). The "
    "port read the reference config's 'attn_temperature: 0.125' (the multiplier 1/sqrt(64) of "
    "the original head size) as a divisor, so the scores are q.k/0.125 = 8 q.k instead of "
    "q.k/sqrt(8); with AdamW at lr 5e-3 and no weight decay the q.k logits the softmax sees "
    "grow more than 10x, past 100.",
)
def h157_erhu_bowing_temperature_divisor(ctx: Context) -> None:
    gen = seeded(15701)
    model = ErhuBowingLM(temperature=0.125)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    seen = []

    def watch(step, out, x, y):
        seen.append(max(b.attn.last_max for b in model.blocks))

    _train(ctx, model, opt, _bowing(gen, 32), 200, _lm_ce, classifier=True, watch=watch)
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 100", seen[-1] > 100)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- korfball passes: a Crammer-Singer hinge written without its clamp -------------------------


class KorfballPassNet(nn.Module):
    """Names the pass (chest, overhead, bounce, hand-off) from 16 tracking features of the
    thrower and the nearest defender."""

    def __init__(self, features=16, hidden=64, passes=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, passes)

    def forward(self, x):
        return self.head(self.body(x))


def _passes(gen, batch, features=16, passes=4):
    centres = torch.randn(passes, features, generator=torch.Generator().manual_seed(157))
    while True:
        y = torch.randint(0, passes, (batch,), generator=gen)
        yield centres[y] + 1.5 * torch.randn(batch, features, generator=gen), y


def _hinge_no_clamp(out, y):
    """Crammer-Singer multiclass hinge, as committed: the clamp(min=0) was dropped."""
    right = out.gather(1, y[:, None]).squeeze(1)
    others = out.masked_fill(F.one_hot(y, out.shape[1]).bool(), float("-inf")).amax(1)
    return (1.0 + others - right).mean()


@scenario(
    family="korfball_pass_type_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A multiclass hinge (Crammer-Singer) written by hand as mean(1 + max_other - right) "
    "with its clamp(min=0) left out in a refactor: the loss has no floor once every pass is "
    "classified, so with Adamax at lr 2e-3 the head's logits are pushed apart without bound "
    "(the logit norm grows more than 20x and is still growing at the end) while the loss runs "
    "ever more negative.",
)
def h157_korfball_hinge_without_clamp(ctx: Context) -> None:
    gen = seeded(15702)
    model = KorfballPassNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    norms = []
    _train(
        ctx,
        model,
        opt,
        _passes(gen, 64),
        250,
        _hinge_no_clamp,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-60])
    ctx.check("the loss went below -10", ctx.losses[-1] < -10)


# -- embroidery stitches: a contrastive temperature copied into a classifier ---------------------


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.depth = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.point = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn2(self.point(F.relu(self.bn1(self.depth(x))))))


class StitchNet(nn.Module):
    """Names the embroidery stitch (satin, stem, chain, cross, seed, herringbone) from a 12x12
    close-up of the fabric; ``temperature`` divides the logits."""

    def __init__(self, stitches=6, temperature=1.0):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.block1 = DepthwiseSeparable(16, 32)
        self.block2 = DepthwiseSeparable(32, 32)
        self.head = nn.Linear(32, stitches)
        self.temperature = temperature

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.max_pool2d(self.block1(h), 2)
        h = self.block2(h).mean((2, 3))
        return self.head(h) / self.temperature


def _stitches(gen, batch, stitches=6, size=12):
    g = torch.Generator().manual_seed(1571)
    protos = []
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    protos.append(((i % 2) == 0).float())  # satin: horizontal rows
    protos.append((((i + j) % 4) == 0).float())  # stem: diagonals
    protos.append((((i % 4) - 1.5).abs() + ((j % 4) - 1.5).abs() < 2).float())  # chain loops
    protos.append(((i - j) % 4 == 0).float().maximum(((i + j) % 4 == 0).float()))  # cross
    protos.append((torch.rand(size, size, generator=g) < 0.15).float())  # seed
    protos.append(((i + (j % 4 - 2).abs()) % 3 == 0).float())  # herringbone
    protos = torch.stack(protos)
    while True:
        y = torch.randint(0, stitches, (batch,), generator=gen)
        shift = int(torch.randint(0, 2, (1,), generator=gen))
        x = protos[y].roll(shift, dims=2) + 0.4 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


@scenario(
    family="embroidery_stitch_depthwise_cnn",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A depthwise-separable CNN with BatchNorm on 12x12 fabric close-ups. The training "
    "config was cloned from the team's contrastive pre-training run and kept its "
    "'temperature: 0.01', which the classifier divides its logits by (NAdam, lr 3e-3): once the stitches are "
    "learnt, the float32 softmax gives the target exactly 1.0 on most rows (their gradient is "
    "exactly zero) while the few wrong rows get gradients 100x too large.",
)
def h157_embroidery_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(15703)
    model = StitchNet(temperature=0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _stitches(gen, 48),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half the rows give the target exactly 1.0", _mean(frac[-10:]) > 0.5)
    ctx.check("none did at the start", frac[0] < 0.1)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- caber toss: a warm-up-then-decay LambdaLR with the decay's sign flipped ---------------------


class CaberTossNet(nn.Module):
    """Predicts the caber's landing angle score from the athlete's run-up and release readings
    (8 features)."""

    def __init__(self, features=8, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _caber_set(n=256, features=8):
    g = torch.Generator().manual_seed(15704)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, generator=g)
    y = torch.sin(x @ w / 2) + 0.3 * x[:, 0] * x[:, 1] + 0.05 * torch.randn(n, generator=g)
    return x, y


def _full_batch(x, y):
    while True:
        yield x, y


def _sharpness(model, x, y, iters=20) -> float:
    """Largest Hessian eigenvalue of the full-batch MSE, by power iteration on HVPs."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="caber_toss_score_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="A tanh MLP regressor trained full-batch with plain SGD at lr 0.1 under a LambdaLR "
    "meant as 20 warm-up steps then a linear decay, max(0, 1 - (s - 20) / 130); a hurried "
    "edit left the decay as 1 + (s - 20) / 10 (sign flipped, length lost), so after the "
    "warm-up the multiplier climbs by 0.1 a step instead of falling. The learning rate passes "
    "2/sharpness (measured in the run by power iteration on Hessian-vector products) near "
    "step 40 and the loss blows up some 25 steps later.",
)
def h157_caber_decay_sign_flipped(ctx: Context) -> None:
    seeded(15704)
    model = CaberTossNet()
    x, y = _caber_set()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 1 + (s - warm) / 10
    )
    probe = CaberTossNet()
    seen = []

    def before(step):
        if step % 10 == 0 and _finite(ctx.losses):
            probe.load_state_dict(model.state_dict())
            seen.append((step, _sharpness(probe, x, y), opt.param_groups[0]["lr"]))

    _train(ctx, model, opt, _full_batch(x, y), 150, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    low = min(ls[:40])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1000 * low), None)
    ctx.check("the loss fell by half in the first 40 steps", low < 0.5 * ls[0])
    ctx.check("the loss blew up 1000x after step 40", blow is not None and blow > 40)
    before_blow = [(s, lam, lr) for s, lam, lr in seen if blow is not None and s < blow]
    ctx.check("lr was below 2/sharpness at the end of warm-up", seen[2][2] < 2 / seen[2][1])
    ctx.check(
        "lr was above 2/sharpness before the blow-up",
        bool(before_blow) and before_blow[-1][2] > 2 / before_blow[-1][1],
    )


# -- felting shrinkage: He init typed 2/sqrt(fan_in) in a deep ReLU MLP --------------------------


class FeltingShrinkageNet(nn.Module):
    """Predicts the area shrinkage of a wet-felted piece from fibre micron, layers, soap pH,
    water temperature, rolling count and the like (10 readings), with a deep ReLU MLP."""

    def __init__(self, features=10, hidden=48, depth=14):
        super().__init__()
        layers = []
        sizes = [features] + [hidden] * depth
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=2.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _felting(gen, batch, features=10):
    w = torch.randn(features, generator=torch.Generator().manual_seed(1575))
    while True:
        x = torch.randn(batch, features, generator=gen)
        yield x, 0.3 * torch.tanh(x @ w / 3) + 0.05 * torch.randn(batch, generator=gen)


def _hidden_grads(model, x, y) -> list[float]:
    """Norm of dL/dh at each hidden ReLU output, input side first (on a hook-free copy)."""
    hs = []
    h = x
    for m in model.net:
        h = m(h)
        if isinstance(m, nn.ReLU):
            hs.append(h)
    loss = F.mse_loss(h.squeeze(-1), y)
    return [float(g.norm()) for g in torch.autograd.grad(loss, hs)]


@scenario(
    family="felting_shrinkage_deep_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("net.0", "net.2"),
    diverges=None,
    heldout=True,
    note="A 12-hidden-layer ReLU MLP whose hand-written He init was typed std=2/sqrt(fan_in) "
    "instead of sqrt(2/fan_in): every layer doubles the signal's variance, so the gradient "
    "with respect to the hidden units grows about sqrt(2) a layer towards the input (over 20x "
    "from the last hidden layer to the first) and the whole gradient starts thousands of times "
    "larger than under the right init. Clipping at 1.0 (SGD momentum, lr 1e-3) keeps the run "
    "from blowing up, but the raw gradient norm stays in the hundreds to thousands for the "
    "whole run and the loss stays hundreds of times above the target's variance.",
)
def h157_felting_he_init_typo(ctx: Context) -> None:
    gen = seeded(15705)
    model = FeltingShrinkageNet(depth=12)
    batches = _felting(gen, 64)
    x0, y0 = next(batches)
    probe = FeltingShrinkageNet(depth=12)
    probe.load_state_dict(model.state_dict())
    grads = _hidden_grads(probe, x0, y0)
    right = FeltingShrinkageNet(depth=12)
    for m in right.net:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    right_loss = F.mse_loss(right(x0), y0)
    right_loss.backward()
    probe_loss = F.mse_loss(probe(x0), y0)
    probe_loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    _train(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    ctx.check("dL/dh grew 20x from the last hidden layer to the first", grads[0] > 20 * grads[-1])
    ctx.check(
        "the first gradient is 1000x the right init's", grad_norm(probe) > 1000 * grad_norm(right)
    )
    ctx.check("the raw gradient norm stayed above 100", min(ctx.grad_norms) > 100)
    ctx.check(
        "the loss stayed 50x above the target variance", min(ctx.losses) > 50 * float(y0.var())
    )


# -- quoits: SGD's learning rate kept when the optimizer was switched to RMSprop -----------------


class QuoitsThrowNet(nn.Module):
    """Names the outcome of a quoits throw (ringer, leaner, miss) from the pitch readings: hob
    distance in cm, release height in cm, spin in rpm, and the like (10 readings, raw units)."""

    def __init__(self, features=10, hidden=128, outcomes=3):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, outcomes)

    def forward(self, x):
        h1 = self.act1(self.fc1(x))
        self.last_h1 = h1.detach()
        return self.head(self.act2(self.fc2(h1)))


def _quoits(gen, batch, features=10):
    scale = torch.tensor([1100.0, 150.0, 300.0, 40.0, 20.0, 5.0, 90.0, 60.0, 2.0, 10.0])
    w = torch.randn(features, 3, generator=torch.Generator().manual_seed(1576))
    while True:
        z = torch.randn(batch, features, generator=gen)
        y = (z @ w + 0.5 * torch.randn(batch, 3, generator=gen)).argmax(1)
        yield scale * (1 + 0.3 * z), y


@scenario(
    family="quoits_throw_outcome_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP fed the raw pitch readings (centimetres, rpm: the loader's "
    "standardisation was switched off for a units check and never switched back on). The "
    "team switched from SGD to RMSprop and kept SGD's lr 0.02 (RMSprop wants ~1e-3 here): "
    "the first updates are huge and drive the first hidden layer's units negative on every "
    "input; within 40 steps over 90% of them never fire again, no gradient reaches them, and "
    "the loss sits at chance (ln 3) for the rest of the run.",
)
def h157_quoits_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(15706)
    model = QuoitsThrowNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.02)
    dead = []

    def watch(step, out, x, y):
        dead.append(dead_fraction(model.last_h1))

    _train(ctx, model, opt, _quoits(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    tail = ctx.losses[-50:]
    ctx.check("over 90% of the fc1 units died", _mean(dead[-10:]) > 0.9)
    ctx.check("most were alive at the start", dead[0] < 0.5)
    ctx.check("the loss sits at chance", abs(_mean(tail) - math.log(3)) < 0.15)


# -- millinery: a per-group LambdaLR warm-up written with integer division -----------------------


class BrimBlockingNet(nn.Module):
    """Predicts the set angle of a felt hat brim from its 48-sample steam-and-press profile
    (steam temperature, press force) with a 1-D conv backbone and a small head."""

    def __init__(self, channels=2, width=16):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(2 * width, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.head(self.backbone(x).mean(-1)).squeeze(-1)


def _brims(gen, batch, length=48):
    t = torch.linspace(0, 1, length)
    while True:
        peak = torch.rand(batch, 1, generator=gen)
        width = 0.05 + 0.15 * torch.rand(batch, 1, generator=gen)
        steam = torch.exp(-((t - peak) ** 2) / (2 * width**2))
        force = (t > peak).float() * torch.rand(batch, 1, generator=gen)
        x = torch.stack([steam, force], 1) + 0.05 * torch.randn(batch, 2, length, generator=gen)
        y = 2.0 * peak.squeeze(1) - 1.0 + 3.0 * width.squeeze(1) * force[:, -1]
        yield x, y


@scenario(
    family="millinery_brim_blocking_conv1d",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("backbone.0", "backbone.2", "backbone.4"),
    diverges=None,
    heldout=True,
    note="A 1-D conv regressor with two Adagrad param groups (backbone, head) and a LambdaLR "
    "with one warm-up lambda per group. The backbone's lambda, ported from a C++ trainer, "
    "was written min(1, step // 500) (integer division) instead of min(1, step / 500): it is "
    "0 for the whole 150-step run, so the backbone's learning rate is exactly 0 and its "
    "weights never move while the head trains normally.",
)
def h157_millinery_integer_warmup(ctx: Context) -> None:
    gen = seeded(15707)
    model = BrimBlockingNet()
    opt = torch.optim.Adagrad(
        [
            {"params": model.backbone.parameters(), "lr": 0.02},
            {"params": model.head.parameters(), "lr": 0.02},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1, s // 500), lambda s: min(1.0, (s + 1) / 20)]
    )
    w0 = model.backbone[0].weight.detach().clone()
    h0 = model.head[2].weight.detach().clone()
    _train(ctx, model, opt, _brims(gen, 64), 150, F.mse_loss, sched=sched)
    moved = float((model.backbone[0].weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head[2].weight.detach() - h0).norm() / h0.norm())
    ctx.check("the backbone never moved", moved < 1e-7)
    ctx.check("the head moved over 10%", head_moved > 0.1)
    ctx.check("the backbone's lr was 0 at the end", opt.param_groups[0]["lr"] == 0.0)


# -- permafrost active layer: a GRU over packed thaw seasons with one shard in centimetres -------


class ActiveLayerGRU(nn.Module):
    """Predicts the end-of-season active-layer thickness (m) from a variable-length series of
    weekly (air temperature, snow depth) readings, with a GRU over packed sequences."""

    def __init__(self, inputs=2, hidden=32):
        super().__init__()
        self.gru = nn.GRU(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1]).squeeze(-1)


def _thaw(gen, batch, longest=30):
    while True:
        lengths = torch.randint(8, longest + 1, (batch,), generator=gen)
        warm = 0.5 + torch.rand(batch, 1, generator=gen)
        t = torch.arange(longest)[None].float()
        air = warm * torch.sin(math.pi * t / longest) + 0.2 * torch.randn(
            batch, longest, generator=gen
        )
        snow = torch.rand(batch, 1, generator=gen) * torch.exp(-t / 8)
        mask = t < lengths[:, None]
        x = torch.stack([air * mask, snow * mask], -1)
        thaw = (air.clamp(min=0) * mask).sum(1) / longest
        y = 0.3 + 1.5 * thaw - 0.4 * snow[:, 0]
        yield (x, lengths), y


@scenario(
    family="permafrost_active_layer_gru",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A GRU regressor over packed variable-length thaw seasons (MSE, ASGD at lr 0.05, "
    "clipping at 1.0). One "
    "shard of the probe archive (from a station that logs in centimetres) was never converted "
    "to metres: the batch at step 120 has targets 100x too large, its loss is thousands of "
    "times the running loss and its raw gradient hundreds of times the usual, once; the run "
    "recovers.",
)
def h157_permafrost_centimetre_shard(ctx: Context) -> None:
    gen = seeded(15708)
    model = ActiveLayerGRU()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    bad = 120
    seen = {}

    def alter(step, x, y):
        if step == bad:
            y = y * 100.0
        seen[step] = float(y.abs().max())
        return x, y

    _train(ctx, model, opt, _thaw(gen, 32), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss fell before the shard", _mean(ls[100:120]) < 0.5 * _mean(ls[:10]))
    ctx.check("the shard's loss is 1000x the running loss", ls[bad] > 1000 * _median(ls[100:120]))
    ctx.check("the shard's gradient is 100x the usual", gs[bad] > 100 * _median(gs[100:120]))
    ctx.check("the shard's targets are in centimetres", seen[bad] > 50 * seen[bad - 1])
    ctx.check("the run recovered", _mean(ls[-20:]) < 3 * _mean(ls[100:120]))


# -- hornussen: the auxiliary loss weight restored unnormalised for one step after a resume ------


class HornussenStrikeNet(nn.Module):
    """From the swing readings of a hornussen strike (12 features: whip flex, swing speed,
    contact height...) predicts the Nouss's launch speed and its flight distance."""

    def __init__(self, features=12, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.speed = nn.Linear(hidden, 1)
        self.distance = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.speed(h), self.distance(h)], -1)


def _strikes(gen, batch, features=12):
    w = torch.randn(features, 2, generator=torch.Generator().manual_seed(1579))
    while True:
        x = torch.randn(batch, features, generator=gen)
        z = x @ w / math.sqrt(features)
        y = torch.stack([torch.tanh(z[:, 0]), z[:, 0] * torch.sigmoid(z[:, 1])], -1)
        yield x, y + 0.05 * torch.randn(batch, 2, generator=gen)


@scenario(
    family="hornussen_strike_two_head_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A two-head regressor (launch speed, flight distance) trained with SGD, Nesterov "
    "momentum 0.9, lr 0.01, loss = speed MSE + 0.5 x distance MSE. The run was resumed at "
    "step 90, and the resume path restores the loss weights one step late: on that first "
    "step the distance term carries the unnormalised weight 400 (the sum of the per-field "
    "weights) instead of 0.5. The batch is ordinary, but its gradient is hundreds of times "
    "the usual, once; the run then settles back.",
)
def h157_hornussen_resume_loss_weight(ctx: Context) -> None:
    gen = seeded(15709)
    model = HornussenStrikeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    resume = 90
    state = {"step": 0}

    def before(step):
        state["step"] = step

    def loss_fn(out, y):
        w = 400.0 if state["step"] == resume else 0.5
        return F.mse_loss(out[:, 0], y[:, 0]) + w * F.mse_loss(out[:, 1], y[:, 1])

    _train(ctx, model, opt, _strikes(gen, 64), 200, loss_fn, before=before)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the gradient spiked 100x at the resume", gs[resume] > 100 * _median(gs[70:90]))
    ctx.check("only once", max(gs[resume + 5 :]) < 10 * _median(gs[70:90]))
    ctx.check("the loss fell before", _mean(ls[80:90]) < 0.5 * _mean(ls[:10]))
    ctx.check("the run settled back", _mean(ls[-20:]) < 2 * _mean(ls[80:90]))


# -- alphorn overtones: one batch's sample weights left as raw recording counts ------------------


class OvertoneEncoder(nn.Module):
    """Self-attention over the 16 partials of an alphorn note (amplitude, detuning) through
    ``scaled_dot_product_attention``; mean-pooled into the horn's bore length."""

    def __init__(self, dim=32, heads=4, partials=16):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(2, dim)
        self.pos = nn.Embedding(partials, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.embed(x) + self.pos(torch.arange(t))
        q, k, v = self.qkv(self.ln1(h)).split(h.shape[-1], dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1)).squeeze(-1)


def _alphorn(gen, batch, partials=16):
    n = torch.arange(1, partials + 1).float()
    while True:
        length = 2.5 + 1.5 * torch.rand(batch, 1, generator=gen)
        bright = torch.rand(batch, 1, generator=gen)
        amp = torch.exp(-n / (2 + 6 * bright)) * (
            1 + 0.1 * torch.randn(batch, partials, generator=gen)
        )
        detune = 0.1 * (length - 3.25) * n / partials + 0.01 * torch.randn(
            batch, partials, generator=gen
        )
        x = torch.stack([amp, 10 * detune], -1)
        weights = torch.ones(batch)
        yield x, (length.squeeze(1) - 3.25, weights)


def _weighted_mse(out, y):
    target, weights = y
    return (weights * (out - target) ** 2).mean()


@scenario(
    family="alphorn_overtone_sdpa_transformer",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="A one-block transformer encoder over 16 partials (scaled_dot_product_attention, "
    "learned positions), weighted MSE, Adam at lr 1e-3 (beta2 0.999). One batch (step 80) "
    "came from a shard whose per-recording weights were never normalised: they are the raw "
    "audio sample counts of each take (about a million) instead of ~1. That one gradient is "
    "some 100,000 times the usual; Adam's second moment takes its square and, with beta2 "
    "0.999, keeps it for thousands of steps. The momentum of that step carries the model off "
    "its fit (the loss rises hundreds of times), and from then on every update is tiny for "
    "the gradient it follows (over 30x smaller per unit of gradient than before): the loss "
    "stays hundreds of times above where it was for the rest of the run.",
)
def h157_alphorn_raw_take_counts(ctx: Context) -> None:
    gen = seeded(15710)
    model = OvertoneEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bad = 80
    prev = {"w": _flat(model)}
    moves = []

    def alter(step, x, y):
        if step == bad:
            y = (y[0], 48000.0 * (15 + 10 * torch.rand(len(y[1]), generator=gen)))
        return x, y

    def after(step):
        w = _flat(model)
        moves.append(float((w - prev["w"]).norm()))
        prev["w"] = w

    _train(ctx, model, opt, _alphorn(gen, 64), 220, _weighted_mse, alter=alter, after=after)
    ls, gs = ctx.losses, ctx.grad_norms
    eff = [mv / max(g, 1e-12) for mv, g in zip(moves, gs, strict=True)]
    ctx.check("the gradient spiked 1000x at the shard", gs[bad] > 1000 * _median(gs[60:80]))
    ctx.check(
        "update per unit gradient shrank 30x afterwards",
        _mean(eff[-60:]) < _mean(eff[60:80]) / 30,
    )
    ctx.check("the loss fell before the shard", _mean(ls[70:80]) < 0.5 * _mean(ls[:10]))
    ctx.check(
        "the loss stayed 100x above its level before", _mean(ls[-20:]) > 100 * _mean(ls[70:80])
    )


# -- katabatic gusts: a Poisson rate taken straight from a Linear, then logged -------------------


class GustCountNet(nn.Module):
    """Predicts how many katabatic gusts above 20 m/s an ice-sheet station logs in an hour from
    10 readings (slope, surface temperature deficit, pressure gradient, ...)."""

    def __init__(self, features=10, hidden=32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, hidden), nn.Tanh())
        self.rate = nn.Linear(hidden, 1)
        nn.init.constant_(self.rate.bias, 3.0)

    def forward(self, x):
        return self.rate(self.trunk(x)).squeeze(-1)


def _gusts(gen, batch, features=10):
    w = torch.randn(features, generator=torch.Generator().manual_seed(15711))
    while True:
        x = torch.randn(batch, features, generator=gen)
        lam = torch.exp(0.8 * (x @ w) / math.sqrt(features) + 0.5)
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(rate, y):
    """Poisson NLL written out by hand, with the rate used as it comes (no softplus, no clamp)."""
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="katabatic_gust_count_regressor",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate",),
    diverges=116,
    heldout=True,
    onset=116,
    note="A gust-count regressor with a hand-written Poisson NLL, rate - y log(rate). The "
    "rate comes straight from the last Linear (bias initialised at the mean count, 3): the "
    "softplus that should keep it positive was dropped when the head was rewritten. Adam at "
    "lr 1e-3 pushes the rate of the calm hours towards zero; at step 116 a rate in the batch "
    "is non-positive for the first time, log of it is NaN and so is the loss.",
)
def h157_katabatic_rate_without_softplus(ctx: Context) -> None:
    gen = seeded(15711)
    model = GustCountNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lows = []
    _train(
        ctx,
        model,
        opt,
        _gusts(gen, 64),
        200,
        _poisson_nll,
        watch=lambda s, o, x, y: lows.append(float(o.detach().min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN at step 116", bad == 116)
    ctx.check("a rate was non-positive at that step", bad is not None and lows[bad] <= 0.0)
    ctx.check("every rate was positive before", bad is not None and min(lows[:bad]) > 0.0)


# -- cimbalom hammer strikes: a mode-energy sum computed in float16 under autocast ---------------


class ModeEnergy(nn.Module):
    """Sums the squared mode amplitudes into the string's energy, in the input's dtype."""

    def forward(self, h):
        return (h * h).sum(-1)


class CimbalomStrikeNet(nn.Module):
    """Predicts the vibration energy (microjoules) a cimbalom hammer strike puts into a string
    course from 8 strike readings, through 16 predicted mode amplitudes."""

    def __init__(self, features=8, hidden=64, modes=16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.modes = nn.Linear(hidden, modes)
        self.energy = ModeEnergy()

    def forward(self, x):
        amps = self.modes(self.trunk(x))
        self.last_amps = amps.detach()
        return self.energy(amps)


def _strikes_uj(gen, batch, features=8):
    w = torch.randn(features, generator=torch.Generator().manual_seed(15712))
    while True:
        x = torch.randn(batch, features, generator=gen)
        y = 8000.0 * torch.exp(0.9 * (x @ w) / math.sqrt(features))
        yield x, y


def _scaled_mse(out, y):
    """MSE in units of 10^4 microjoules (the energy itself is predicted in microjoules)."""
    return F.mse_loss(out.float() / 1e4, y / 1e4)


@scenario(
    family="cimbalom_strike_energy_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=94,
    heldout=True,
    onset=94,
    note="A strike-energy regressor under fp16 autocast with a GradScaler (Adam, lr 3e-3). The "
    "energy is the sum of squared mode amplitudes, computed by the ModeEnergy module on the "
    "float16 output of the last Linear and left in float16; the targets are in microjoules "
    "and the loudest strikes pass 65504. Once the fit reaches them (first at step 94) the "
    "sum overflows to inf on every batch holding such a strike, the loss is inf there, the "
    "GradScaler skips the step and halves its scale each time: by step 250 it has fallen "
    "over 100,000-fold.",
)
def h157_cimbalom_fp16_energy_sum(ctx: Context) -> None:
    gen = seeded(15712)
    model = CimbalomStrikeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = []

    def watch(step, out, x, y):
        h = model.last_amps.float()  # the float16 amplitudes, summed again in float32
        seen.append((float(out.detach().float().max()), float((h * h).sum(-1).max())))

    _train(ctx, model, opt, _strikes_uj(gen, 64), 250, _scaled_mse, scaler=scaler, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss first went inf at step 94", bad == 94)
    ctx.check(
        "the float16 energy was inf there, the same sum in float32 finite above 65504",
        bad is not None and math.isinf(seen[bad][0]) and 65504 < seen[bad][1] < 1e6,
    )
    ctx.check("ten or more steps overflowed", sum(not math.isfinite(v) for v in ls) >= 10)
    ctx.check("the scale fell 100,000-fold", ctx.scales[-1] < 1e-5 * ctx.scales[0])


# -- controls -------------------------------------------------------------------------------------


class KoraBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class KoraTuningNet(nn.Module):
    """Names the kora tuning (tomora ba, hardino, sauta, tomora mesengo) from a phrase of 16
    plucked string numbers (1-21), with nn.MultiheadAttention blocks."""

    def __init__(self, strings=22, dim=32, heads=4, layers=2, length=16, tunings=4):
        super().__init__()
        self.embed = nn.Embedding(strings, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(KoraBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tunings)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


def _kora(gen, batch, length=16, tunings=4):
    g = torch.Generator().manual_seed(15713)
    favoured = torch.stack([torch.randperm(21, generator=g)[:7] + 1 for _ in range(tunings)])
    while True:
        y = torch.randint(0, tunings, (batch,), generator=gen)
        pick = torch.randint(0, 7, (batch, length), generator=gen)
        x = favoured[y].gather(1, pick)
        stray = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(stray, torch.randint(1, 22, (batch, length), generator=gen), x)
        yield x, y


@scenario(
    family="kora_tuning_mha_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A two-block transformer over nn.MultiheadAttention trained as practitioners do: AdamW "
    "with two param groups (weight decay 0.05 on matrices, none on norms, biases and "
    "positions), lr 2e-3 with 20 warm-up steps then cosine decay (LambdaLR), clipping at 1.0 "
    "and label smoothing 0.1; a quarter of the plucks in every phrase are stray notes.",
)
def h157_kora_tuning_control(ctx: Context) -> None:
    gen = seeded(15713)
    model = KoraTuningNet()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "pos"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    _train(
        ctx,
        model,
        opt,
        _kora(gen, 32),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))


class LimbExpert(nn.Module):
    def __init__(self, features, hidden):
        super().__init__()
        self.fc = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(F.gelu(self.fc(x)))


class BowLimbMoE(nn.Module):
    """Predicts a longbow's draw weight at 28 inches from 12 stave measurements (yew, ash or
    osage, heartwood share, tiller...) with four MLP experts mixed by a softmax gate."""

    def __init__(self, features=12, hidden=32, experts=4):
        super().__init__()
        self.gate = nn.Linear(features, experts)
        self.experts = nn.ModuleList(LimbExpert(features, hidden) for _ in range(experts))

    def forward(self, x):
        weights = torch.softmax(self.gate(x), dim=-1)
        outs = torch.cat([e(x) for e in self.experts], -1)
        return (weights * outs).sum(-1)


def _staves(gen, batch, features=12):
    g = torch.Generator().manual_seed(15714)
    w = torch.randn(3, features, generator=g)
    while True:
        x = torch.randn(batch, features, generator=gen)
        wood = x[:, :3].argmax(1)
        y = 3 * (w[wood] * x).sum(1) / math.sqrt(features) + 0.2 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="bowyer_limb_draw_moe",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A mixture of four MLP experts with a softmax gate, Huber loss, RAdam under OneCycleLR "
    "(max lr 3e-2) and gradient accumulation over 4 micro-batches of 16, each micro-batch's "
    "loss divided by the accumulation count.",
)
def h157_bowyer_moe_accumulation_control(ctx: Context) -> None:
    gen = seeded(15714)
    model = BowLimbMoE()
    steps = 200
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _staves(gen, 16),
        steps,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        sched=sched,
        accumulate=4,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))


class BalafonKeyNet(nn.Module):
    """Flags the faults of a balafon key (flat, sharp, buzzing gourd, cracked) from the 64-sample
    envelope of its strike, with a 1-D conv net."""

    def __init__(self, faults=4, width=16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, width, 7, padding=3),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, faults)

    def forward(self, x):
        return self.head(self.conv(x).amax(-1))


def _balafon(gen, batch, length=64, faults=4):
    t = torch.linspace(0, 1, length)
    while True:
        y = (torch.rand(batch, faults, generator=gen) < 0.3).float()
        freq = 8 + 2 * y[:, :1] - 2 * y[:, 1:2]
        decay = 3 + 4 * y[:, 3:4]
        buzz = y[:, 2:3] * 0.5 * torch.sin(2 * math.pi * 29 * t)
        x = torch.exp(-decay * t) * torch.sin(2 * math.pi * freq * t) + buzz
        x = x + 0.1 * torch.randn(batch, length, generator=gen)
        yield x[:, None], y


@scenario(
    family="balafon_key_fault_conv1d",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="A 1-D conv net with BatchNorm flagging four key faults at once (multi-label BCE with "
    "logits) under fp16 autocast with a GradScaler, SGD with Nesterov momentum 0.9 at lr 0.05, "
    "clipping at 5.0 (on the unscaled gradients).",
)
def h157_balafon_fp16_control(ctx: Context) -> None:
    gen = seeded(15715)
    model = BalafonKeyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(
        ctx,
        model,
        opt,
        _balafon(gen, 64),
        150,
        lambda o, y: F.binary_cross_entropy_with_logits(o.float(), y),
        scaler=scaler,
        clip=5.0,
    )
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scale never collapsed", min(ctx.scales) >= 2.0**6)


class HaboobVisibilityNet(nn.Module):
    """Forecasts the visibility (km, log-scaled) an hour ahead of a haboob front from 14 surface
    readings (gust speed, pressure jump, dew point, outflow boundary distance...)."""

    def __init__(self, features=14, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


def _haboob(gen, batch, features=14):
    w = torch.randn(features, generator=torch.Generator().manual_seed(15716))
    while True:
        x = torch.randn(batch, features, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(features)) + 0.3 * x[:, 0] * x[:, 1]
        noise = 0.1 + 0.3 * torch.rand(1, generator=gen)
        yield x, y + noise * torch.randn(batch, generator=gen)


@scenario(
    family="haboob_visibility_forecaster",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="An MLP regressor on noisy batches (each batch's noise level drawn from 0.1 to 0.4), "
    "MSE, Adadelta at lr 1.0 with ReduceLROnPlateau (factor 0.5, patience 15) and clipping "
    "at 1.0.",
)
def h157_haboob_adadelta_control(ctx: Context) -> None:
    gen = seeded(15716)
    model = HaboobVisibilityNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _haboob(gen, 64), 250, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
