"""Held-out set 253 (``h253_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a quena phrase language model (a rotary-position
transformer) whose warm-up lambda has no cap, a vuvuzela drone-pitch classifier whose hand-written
multiclass hinge lost its clamp, a tombolo spit-width tanh regressor switched to an lr-range test's
blow-up point, a tyre-retread tread-depth regressor fed one sample in micrometres, a
columnar-basalt joint-spacing deep tanh MLP whose orthogonal init gain was typed 4 for 5/3, an ice-jam
backwater net whose Manning feature takes sqrt of a reversed surface slope, a naginata
strike-speed net fed raw mm/s under fp16 autocast, a cordwood seasoning ReLU regressor whose
Adamax lr was typed 2e-1 for 2e-3, a rope-access anchor-load regressor whose trunk is never
unfrozen (the unfreeze writes opt.defaults), a kokyu bow-pressure regressor whose resume step
leaves a static loss scale undone, and three controls (a dombra strum classifier with dropout,
weight decay and mid-run evaluation passes, a washtub-bass pitch Huber net under fp16 autocast
with a GradScaler, a bolide brightness Gaussian-NLL net with ReduceLROnPlateau and
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
    dead_fraction,
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
    unscale=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` divides the gradients back (a manual loss
    scale), ``after(step)`` runs after the optimizer step; ``amp`` is the autocast dtype (None:
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
            loss = loss_fn(out, y)
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


def _moved(model, w0):
    return {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }


# -- quena phrase LM: a rotary transformer whose warm-up lambda has no cap ------------------------


def _rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on (batch, heads, time, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class RotaryAttention(nn.Module):
    """Causal self-attention with rotary positions on q and k; keeps its largest |q.k/sqrt(d)|."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        q, k = _rotate(q), _rotate(k)
        att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        keep = torch.ones(t, t, dtype=torch.bool).tril()
        self.max_logit = float(att.detach().masked_fill(~keep, 0.0).abs().max())
        att = att.masked_fill(~keep, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class RotaryBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class QuenaLM(nn.Module):
    """Token embedding, two pre-LN rotary blocks, final LayerNorm, untied head."""

    def __init__(self, vocab: int = 32, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(RotaryBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _quena_phrases(gen, batch=16, length=32, motif=8, vocab=32):
    """Quena tunes as note tokens: a random 8-note motif (notes of a pentatonic range plus
    ornaments) played four times, the player ornamenting one note in ten."""
    while True:
        m = torch.randint(0, vocab, (batch, motif), generator=gen)
        seq = m.repeat(1, length // motif + 1)[:, : length + 1]
        orn = torch.rand(batch, length + 1, generator=gen) < 0.1
        seq = torch.where(orn, torch.randint(0, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))


@scenario(
    family="quena_breath_phrase_rotary_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written decoder (token embedding, two pre-LN blocks of causal self-attention with rotary positions on q and k, GELU MLPs, untied head) predicting the next note of quena tunes (an 8-note motif repeated with ornaments), AdamW at 1e-3 with weight_decay 0 on every group, cross-entropy. The warm-up LambdaLR is written `lambda s: (s + 1) / warmup` without the `min(1.0, ...)` cap, so after warm-up the rate keeps growing linearly (to 30x the base by step 300). The q and k projections grow with it and the largest attention logit q.k/sqrt(d) grows over 20x from its early value, with rows going one-hot; the same run with the capped lambda keeps them several times smaller.",
)
def h253_quena_rotary_uncapped_warmup(ctx: Context) -> None:
    steps, warmup = 300, 10

    def run(c, capped):
        gen = seeded(25301)
        model = QuenaLM()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        if capped:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup)
        logits = []

        def watch(step, out, x, y):
            logits.append(max(b.attn.max_logit for b in model.blocks))

        _train(
            c,
            model,
            opt,
            _quena_phrases(gen),
            steps,
            _lm_loss,
            classifier=True,
            watch=watch,
            sched=sched,
        )
        return logits

    twin = run(_Quiet(), capped=True)
    logits = run(ctx, capped=False)
    ls = ctx.losses
    early = _mean(logits[:5])
    ctx.check("loss fell over the first 150 steps", _fell(ls[:150], ratio=0.7))
    ctx.check("the largest attention logit grew over 20x", max(logits[-20:]) > 20 * early)
    ctx.check(
        "the capped-warm-up twin ends with logits under half of it",
        max(twin[-20:]) < 0.5 * max(logits[-20:]),
    )


# -- vuvuzela drone pitch: the confidence penalty added with its sign flipped ---------------------


class GeluNet(nn.Module):
    """fc1 -> act1 (GELU) -> fc2 -> act2 (GELU) -> head."""

    def __init__(self, d_in, hidden=48, out=1, p_drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.drop1 = nn.Dropout(p_drop)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.drop2 = nn.Dropout(p_drop)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        h = self.drop1(self.act1(self.fc1(x)))
        out = self.head(self.drop2(self.act2(self.fc2(h))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@scenario(
    family="vuvuzela_drone_pitch_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 8 drone pitches a vuvuzela plays from 16 standardised spectral readings (overlapping classes), Adam at 3e-3, a hand-written multiclass hinge loss (Crammer-Singer: 1 - (z_target - max other z), meant to be clamped at 0) whose `.clamp(min=0)` was dropped in a refactor. The loss is now linear in the margin and unbounded below: the head's logits keep growing, over 20x their early size and still growing at the end, while the same run with the clamp keeps them a few units. The loss falls without limit (below zero); finite, no blow-up.",
)
def h253_vuvuzela_hinge_missing_clamp(ctx: Context) -> None:
    steps = 250

    def run(c, clamped):
        gen = seeded(25302)
        model = GeluNet(16, hidden=48, out=8)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        sizes = []

        def loss_fn(out, y):
            target = out.gather(1, y[:, None]).squeeze(1)
            other = out.masked_fill(F.one_hot(y, out.shape[1]).bool(), float("-inf")).amax(1)
            hinge = 1.0 - (target - other)
            return (hinge.clamp(min=0.0) if clamped else hinge).mean()

        def watch(step, out, x, y):
            sizes.append(float(out.detach().abs().max()))

        batches = _kinds(gen, 64, 16, 8, seed=5, noise=1.0)
        _train(c, model, opt, batches, steps, loss_fn, classifier=True, watch=watch)
        return sizes

    twin = run(_Quiet(), clamped=True)
    sizes = run(ctx, clamped=False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss went below zero (unbounded below)", _mean(ls[-10:]) < 0)
    ctx.check("the head's logits grew over 20x", _mean(sizes[-10:]) > 20 * _mean(sizes[:5]))
    ctx.check(
        "the head's logits still growing at the end",
        _mean(sizes[-10:]) > 1.3 * _mean(sizes[-70:-60]),
    )
    ctx.check(
        "the clamped twin ends with logits under 1/5 of it",
        _mean(twin[-10:]) < _mean(sizes[-10:]) / 5,
    )


# -- tombolo spit width: switched to an lr-range test's blow-up point -----------------------------

ONSET_TOMBOLO = 60


class TanhNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


TOMBOLO_LR = (0.05, 1.5)


@scenario(
    family="tombolo_spit_width_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_TOMBOLO,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the width of a tombolo's sand spit from 10 standardised readings (wave height and period, swell angle, island distance, tide range, ...), plain SGD, MSE. The run warms up for 60 steps at 0.05, then switches to the rate suggested by an lr-range test; the suggestion code took the rate where the test's loss was lowest just before it blew up (1.5) rather than a tenth of it. At step 60 lr x the top Hessian eigenvalue jumps from well under 2 to over 2: the loss oscillates and blows up.",
)
def h253_tombolo_lr_finder_blowup(ctx: Context) -> None:
    gen = seeded(25303)
    model = TanhNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=TOMBOLO_LR[0])
    batches = _readings(gen, 64, 10, seed=17)
    probe = next(batches)
    seen = {}

    def before(step):
        if step == ONSET_TOMBOLO:
            seen["sharp"] = _sharpness(model, F.mse_loss, probe)
            for g in opt.param_groups:
                g["lr"] = TOMBOLO_LR[1]
        if step == ONSET_TOMBOLO - 20:
            seen["sharp0"] = _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, batches, 140, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _mean(ls[ONSET_TOMBOLO - 10 : ONSET_TOMBOLO])
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TOMBOLO], ratio=0.7))
    ctx.check("lr x sharpness under 2 before the onset", TOMBOLO_LR[0] * seen.get("sharp0", 99) < 2)
    ctx.check("lr x sharpness over 2 at the onset", TOMBOLO_LR[1] * seen.get("sharp", 0) > 2)
    ctx.check(
        "the loss blew up after the onset (over 100x the pre-onset level or non-finite)",
        not _finite(ls[ONSET_TOMBOLO:]) or max(ls[ONSET_TOMBOLO:]) > 100 * pre,
    )


# -- tyre retread: one sample's tread depth in micrometres ----------------------------------------

ONSET_TYRE = 120


def _tyre_readings(gen, batch, bad_step, seed=23):
    """Twelve standardised readings of a retreading line (casing age, buffing depth, cure
    temperature and time, tread depth, ...) and the retread's wear life. At ``bad_step`` one
    depth gauge reports one casing's tread depth in micrometres (x1000, unstandardised)."""
    stream = _readings(gen, batch, 12, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step == bad_step:
            x = x.clone()
            x[7, 4] = 9000.0 + 1000.0 * x[7, 4]
        step += 1
        yield x, y


@scenario(
    family="tyre_retread_tread_life_silu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TYRE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a retreaded tyre's wear life from 12 standardised readings of the retreading line (casing age, buffing depth, cure temperature and time, tread depth, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. At step 120 one sample of one batch comes from a depth gauge that reports the tread depth in micrometres; the loader standardises millimetre readings only, so that one value is about 9000 where the others are within a few units. The batch's loss and gradient spike (over 50x the median gradient norm); clipping bounds the step and the run recovers.",
)
def h253_tyre_retread_micrometre_sample(ctx: Context) -> None:
    gen = seeded(25304)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    xs = {}

    def watch(step, out, x, y):
        xs[step] = (float(x.abs().max()), int((x.abs() > 100).sum()))

    _train(
        ctx,
        model,
        opt,
        _tyre_readings(gen, 64, ONSET_TYRE),
        220,
        F.mse_loss,
        watch=watch,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_TYRE - 20 : ONSET_TYRE])
    pre = _mean(ls[ONSET_TYRE - 10 : ONSET_TYRE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_TYRE], ratio=0.5))
    ctx.check("exactly one value over 100 at the onset", xs[ONSET_TYRE][1] == 1)
    ctx.check(
        "every other batch within |x| < 10",
        max(v[0] for s, v in xs.items() if s != ONSET_TYRE) < 10,
    )
    ctx.check("the gradient norm at the onset over 50x the median", gn[ONSET_TYRE] > 50 * before)
    ctx.check("the onset loss over 10x the level before", ls[ONSET_TYRE] > 10 * pre)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_TYRE + 50 : ONSET_TYRE + 60]) < 2 * pre,
    )


# -- columnar basalt: a deep tanh MLP whose orthogonal init gain was typed 4 for 5/3 --------------


class DeepTanh(nn.Module):
    """``depth`` Linear layers (layers.0 ... layers.{depth-1}) with tanh between them."""

    def __init__(self, d_in, hidden=64, depth=12, gain=5.0 / 3.0):
        super().__init__()
        sizes = [d_in] + [hidden] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x).squeeze(-1)


@scenario(
    family="columnar_basalt_joint_spacing_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 ... layers.11) regressing the joint spacing of columnar basalt from 10 standardised readings of a lava flow (thickness, cooling rate, water ingress, ...), SGD with momentum 0.9 at 1e-2, MSE. The orthogonal init gain was typed 4.0 for calculate_gain('tanh') = 5/3: the net starts deep in the chaotic regime, the tanh activations stay bounded but each layer multiplies the backward signal, so the weight gradient grows over 20x from layers.10 back to layers.0 and stays far larger there through the run; the loss stalls far above the 5/3 twin's. Finite, no blow-up.",
)
def h253_columnar_basalt_init_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(25305)
        model = DeepTanh(10, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        grads = []

        def unscale(step):
            grads.append([float(layer.weight.grad.norm()) for layer in model.layers])

        _train(c, model, opt, _readings(gen, 64, 10, seed=29), 150, F.mse_loss, unscale=unscale)
        return grads

    twin = _Quiet()
    twin_g = run(twin, 5.0 / 3.0)
    grads = run(ctx, 4.0)
    g = grads[0]
    ls = ctx.losses
    ratios = [r[0] / max(r[10], 1e-30) for r in grads]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 20x layers.10's at step 0", g[0] > 20 * g[10])
    ctx.check(
        "the gradient grows towards the input (layers.0 > layers.5 > layers.10)",
        g[0] > g[5] > g[10],
    )
    ctx.check("the median layers.0/layers.10 ratio over the run over 5", _median(ratios) > 5)
    ctx.check(
        "the gain 5/3 twin's ratio at step 0 under 1/10 of it",
        twin_g[0][0] / twin_g[0][10] < 0.1 * g[0] / g[10],
    )
    ctx.check(
        "the twin ends under 1/3 of its loss",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- ice jam backwater: Manning's sqrt of a surface slope that reverses --------------------------

ONSET_JAM = 90


class ManningVelocity(nn.Module):
    """Manning's mean velocity R^(2/3) sqrt(S) / n from hydraulic radius (m), surface slope
    (m/m) and roughness n, scaled to about unit size; no clamp on S."""

    def forward(self, radius, slope, rough):
        return radius.pow(2.0 / 3.0) * torch.sqrt(slope) / rough / 3.0


class IceJamNet(nn.Module):
    def __init__(self, extra=6, hidden=40):
        super().__init__()
        self.manning = ManningVelocity()
        self.fc1 = nn.Linear(extra + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        v = self.manning(x[:, 0], x[:, 1], x[:, 2])
        z = torch.cat([v[:, None], x[:, 3:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _jam_readings(gen, batch, jam_from, seed=31):
    """A river gauge's hydraulic radius (1-3 m), water-surface slope (2e-4 to 1e-3), Manning n
    (0.03-0.05), six standardised readings (air temperature, ice cover, discharge upstream, ...)
    and the stage rise. From ``jam_from`` an ice jam forms downstream: backwater reverses the
    surface slope at some gauges (the gauge reads it as it is, negative)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    step = 0
    while True:
        r = 1.0 + 2.0 * torch.rand(batch, generator=gen)
        s = 2e-4 + 8e-4 * torch.rand(batch, generator=gen)
        n = 0.03 + 0.02 * torch.rand(batch, generator=gen)
        e = torch.randn(batch, 6, generator=gen)
        v = r.pow(2.0 / 3.0) * s.sqrt() / n / 3.0
        y = 0.8 * v + torch.tanh(e @ w / math.sqrt(6)) + 0.05 * torch.randn(batch, generator=gen)
        if step >= jam_from:
            back = torch.rand(batch, generator=gen) < 0.25
            s = torch.where(back, -s, s)
        step += 1
        yield torch.cat([r[:, None], s[:, None], n[:, None], e], 1), y


@scenario(
    family="ice_jam_backwater_manning_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("manning",),
    diverges=ONSET_JAM,
    heldout=True,
    onset=ONSET_JAM,
    note="A river-stage net: a `manning` module computing Manning's mean velocity R^(2/3) sqrt(S) / n from a gauge's hydraulic radius, water-surface slope and roughness (no clamp on S), concatenated with six standardised readings into a SiLU MLP (fc1, act1, fc2, act2, head), Adagrad at 3e-2, MSE. From step 90 an ice jam forms downstream and backwater reverses the surface slope at some gauges; the loader passes the negative slope through and sqrt of it is NaN in `manning`: the loss is NaN at step 90.",
)
def h253_ice_jam_reversed_slope_sqrt(ctx: Context) -> None:
    gen = seeded(25306)
    model = IceJamNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_JAM:
            with torch.no_grad():
                seen["neg"] = int((x[:, 1] < 0).sum())
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["v_nan"] = bool(torch.isnan(model.manning(x[:, 0], x[:, 1], x[:, 2])).any())

    _train(ctx, model, opt, _jam_readings(gen, 64, ONSET_JAM), 150, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_JAM], ratio=0.5))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_JAM)
    ctx.check("negative slopes in the onset batch", seen.get("neg", 0) > 0)
    ctx.check("the onset inputs are finite", seen.get("x_finite") is True)
    ctx.check("manning's output has NaN at the onset", seen.get("v_nan") is True)


# -- naginata strike speed: a new IMU's raw mm/s under fp16 autocast ------------------------------

ONSET_NAGINATA = 100


def _naginata_readings(gen, batch, raw_from, seed=37):
    """Twenty-four readings of a naginata's blade-tip IMU (angular and linear speeds along the
    swing, standardised m/s) and the judged strike speed. From ``raw_from`` a replacement IMU
    streams its linear speeds as raw mm/s (about 55000, representable in fp16), which the loader
    passes on unscaled."""
    stream = _readings(gen, batch, 24, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step >= raw_from:
            x = (55000.0 + 3000.0 * x).clamp(0.0, 65000.0)
        step += 1
        yield x, y


@scenario(
    family="naginata_strike_speed_fp16_silu_mlp",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_NAGINATA,
    heldout=True,
    onset=ONSET_NAGINATA,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a naginata strike's judged speed from 24 readings of a blade-tip IMU, RAdam at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 100 a replacement IMU streams its linear speeds as raw mm/s (about 55000 each, finite in fp16) and the loader, which standardises m/s, passes them on. fc1's fp16 matmul sums 24 such readings past 65504 to inf under autocast: the prediction is non-finite and the loss NaN at step 100, while the same batch through the same weights in float32 stays finite.",
)
def h253_naginata_raw_mms_fp16(ctx: Context) -> None:
    gen = seeded(25307)
    model = Stack(24, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_NAGINATA:
            seen["x_max"] = float(x.abs().max())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                seen["x_fp16_finite"] = bool(torch.isfinite(x.half()).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1_finite"] = bool(torch.isfinite(model.fc1(x)).all())
                seen["out_finite"] = bool(torch.isfinite(out).all())

    def loss_fn(out, y):
        return F.mse_loss(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _naginata_readings(gen, 64, ONSET_NAGINATA),
        130,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_NAGINATA], ratio=0.5))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_NAGINATA)
    ctx.check("inputs at the onset raw (max over 10000)", seen.get("x_max", 0.0) > 10000)
    ctx.check("the onset inputs are finite in fp16", seen.get("x_fp16_finite") is True)
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- cordwood seasoning: Adamax lr typed 2e-1 for 2e-3 kills the ReLUs ---------------------------


@scenario(
    family="cordwood_stack_seasoning_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the moisture a cordwood stack reaches after a season from 12 standardised readings (species, split size, stack orientation, rainfall, sun hours, ...), Adamax with lr typed 2e-1 for 2e-3, MSE. The first large updates push most of fc2's units negative on every input: over half of act2 is dead within the first 30 steps and stays dead to the end, and those units' rows of fc2 get exactly zero gradient on every batch: they have stopped learning for good (the 2e-3 twin keeps under 10% dead). The surviving units still fit the easy target, so the loss stays finite; no blow-up.",
)
def h253_cordwood_adamax_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lr):
        gen = seeded(25308)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adamax(model.parameters(), lr=lr)
        batches = _readings(gen, 64, 12, seed=41)
        probe = next(batches)[0]
        dead, silent = [], []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        def unscale(step):
            rows = model.fc2.weight.grad.norm(dim=1)
            silent.append(float((rows == 0).float().mean()))

        _train(c, model, opt, batches, steps, F.mse_loss, after=after, unscale=unscale)
        return dead, silent

    twin_dead, _ = run(_Quiet(), 2e-3)
    dead, silent = run(ctx, 2e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2 dead by step 30", dead[30] > 0.5)
    ctx.check("over half of act2 still dead at the end", dead[-1] > 0.5)
    ctx.check(
        "over 40% of fc2's rows get exactly zero gradient over the last 50 steps",
        min(silent[-50:]) > 0.4,
    )
    ctx.check("the 2e-3 twin keeps under 10% of act2 dead", twin_dead[-1] < 0.1)


# -- rope access anchor load: the unfreeze writes opt.defaults, the trunk stays at lr 0 -----------

UNFREEZE_ROPE = 30


@scenario(
    family="rope_access_anchor_load_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    onset=UNFREEZE_ROPE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the peak load on a rope-access anchor from 14 standardised readings (rope angle, worker mass, edge friction, descent speed, ...), NAdam with two param groups: the trunk (fc1, fc2) at lr 0 for a 30-step head warm-up, then unfrozen to 3e-3. The unfreeze code writes `opt.defaults['lr'] = 3e-3`, which no existing param group reads, so the trunk stays at lr 0 for the whole run: fc1 and fc2 never move while the head moves by tens of percent. The head learns on the random trunk features, so the loss still falls and stays finite; no blow-up.",
)
def h253_rope_access_unfreeze_defaults(ctx: Context) -> None:
    steps = 200

    def run(c, correct):
        gen = seeded(25309)
        model = Stack(14, hidden=48, act=nn.SiLU)
        trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
        opt = torch.optim.NAdam(
            [
                {"params": trunk, "lr": 0.0},
                {"params": model.head.parameters(), "lr": 3e-3},
            ]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

        def before(step):
            if step == UNFREEZE_ROPE:
                if correct:
                    opt.param_groups[0]["lr"] = 3e-3
                else:
                    opt.defaults["lr"] = 3e-3

        _train(c, model, opt, _readings(gen, 64, 14, seed=43), steps, F.mse_loss, before=before)
        return _moved(model, w0)

    twin = _Quiet()
    twin_moved = run(twin, correct=True)
    moved = run(ctx, correct=False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.8))
    ctx.check("fc1's weight moved under 1e-7 of its norm", moved["fc1.weight"] < 1e-7)
    ctx.check("fc2's weight moved under 1e-7 of its norm", moved["fc2.weight"] < 1e-7)
    ctx.check("the head's weight moved over 5% of its norm", moved["head.weight"] > 0.05)
    ctx.check("the correctly unfrozen twin moves fc1 over 1%", twin_moved["fc1.weight"] > 0.01)


# -- kokyu bow pressure: the resume step leaves a static loss scale undone ----------------------

ONSET_KOKYU = 110


def _kokyu_frames(gen, batch, seed=47):
    """Sixteen frames of a kokyu player's bow (bow speed, contact point, string, standardised)
    and the bow pressure on the last frame: a smooth function of a weighted frame average."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    decay = torch.linspace(0.2, 1.0, 16)
    while True:
        x = torch.randn(batch, 16, 3, generator=gen)
        z = (x * decay[None, :, None]).sum(1) @ w / 4.0
        y = torch.tanh(z) + 0.3 * torch.sin(2.0 * x[:, -1, 0])
        yield x.reshape(batch, 48), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="kokyu_bow_pressure_frame_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KOKYU,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a kokyu player's bow pressure from 16 frames of bow readings (speed, contact point, string; 48 standardised values), ASGD at 5e-2, MSE, gradient clipping at 5.0 (logged before clipping). The job was pre-empted and resumes at step 110; the team's resume path was written for their fp16 runs and multiplies the loss by a static scale of 128 before backward, but the matching division of the gradients sits in the fp16 branch only, so in this float32 run the first step after the resume backpropagates a gradient 128x that of the steps around it. The batches are ordinary; clipping bounds the update and the run continues; finite.",
)
def h253_kokyu_resume_static_scale(ctx: Context) -> None:
    gen = seeded(25310)
    model = Stack(48, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    xs = []

    def scale_loss(step, total):
        return total * 128.0 if step == ONSET_KOKYU else total

    def watch(step, out, x, y):
        if ONSET_KOKYU - 5 <= step <= ONSET_KOKYU:
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kokyu_frames(gen, 64),
        200,
        F.mse_loss,
        scale_loss=scale_loss,
        watch=watch,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_KOKYU - 20 : ONSET_KOKYU])
    pre = _mean(ls[ONSET_KOKYU - 10 : ONSET_KOKYU])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KOKYU], ratio=0.7))
    ctx.check("the gradient norm at the onset over 50x the median", gn[ONSET_KOKYU] > 50 * before)
    ctx.check("the gradient norm 10 steps later back under 5x", gn[ONSET_KOKYU + 10] < 5 * before)
    ctx.check("the onset batch's loss is ordinary (under 2x)", ls[ONSET_KOKYU] < 2 * pre)
    ctx.check("the batches around the onset are ordinary (max |x| under 6)", max(xs) < 6)


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="dombra_strum_pattern_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP with dropout 0.2 after each hidden layer (fc1, act1, drop1, fc2, act2, drop2, head) classifying which of 6 strum patterns a dombra player uses from 20 standardised readings of the two strings (overlapping classes), AdamW at 2e-3 with weight_decay 0.05 on the weight matrices and 0 on biases (two param groups), cross-entropy, and an evaluation pass every 40 steps (model.eval(), no_grad, a held-out batch, then model.train()). Trains normally.",
)
def h253_dombra_dropout_eval_control(ctx: Context) -> None:
    gen = seeded(25311)
    model = GeluNet(20, hidden=64, out=6, p_drop=0.2)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    held = next(_kinds(torch.Generator().manual_seed(253), 256, 20, 6, seed=53, noise=0.8))
    accs = []

    def after(step):
        if step % 40 == 0 or step == 199:
            model.eval()
            with torch.no_grad():
                accs.append(float((model(held[0]).argmax(1) == held[1]).float().mean()))
            model.train()

    batches = _kinds(gen, 64, 20, 6, seed=53, noise=0.8)
    _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, after=after)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.5x the first 10)", _fell(ls, ratio=0.5))
    ctx.check("held-out accuracy rose over 0.2", accs[-1] > accs[0] + 0.2)
    ctx.check("held-out accuracy ends over 0.6", accs[-1] > 0.6)


@scenario(
    family="washtub_bass_pitch_fp16_huber_mlp",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the pitch a washtub bass sounds from 12 standardised readings (string tension from the stick angle, tub size, pluck position, ...) with heavy-tailed noise, Adadelta at lr 1.0, warm-up then cosine (LambdaLR), Huber loss, gradient clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h253_washtub_bass_fp16_control(ctx: Context) -> None:
    gen = seeded(25312)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    steps, warm = 220, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def noisy(gen):
        stream = _readings(gen, 64, 12, seed=59, noise=0.0)
        while True:
            x, y = next(stream)
            t = torch.distributions.StudentT(3.0).sample((64,)) * 0.1
            yield x, y + t

    def loss_fn(out, y):
        return F.huber_loss(out.float(), y, delta=0.5)

    _train(
        ctx,
        model,
        opt,
        noisy(gen),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ls, ratio=0.6))
    ctx.check("the loss scale never fell below 1", min(ctx.scales) >= 1.0)


@scenario(
    family="bolide_fireball_brightness_gaussian_nll_net",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU trunk (fc1, act1, fc2, act2) with mean and log-variance heads (mean, logvar) predicting a bolide's peak brightness and its uncertainty from 10 standardised readings of an all-sky camera network (entry angle, speed, track length, ...) with input-dependent noise, Gaussian negative log-likelihood, RMSprop at 1e-3 with ReduceLROnPlateau, gradient accumulation over 2. Trains normally.",
)
def h253_bolide_gaussian_nll_control(ctx: Context) -> None:
    class Bolide(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 48)
            self.act1 = nn.SiLU()
            self.fc2 = nn.Linear(48, 48)
            self.act2 = nn.SiLU()
            self.mean = nn.Linear(48, 1)
            self.logvar = nn.Linear(48, 1)

        def forward(self, x):
            h = self.act2(self.fc2(self.act1(self.fc1(x))))
            return torch.cat([self.mean(h), self.logvar(h)], 1)

    def batches(gen):
        stream = _readings(gen, 32, 10, seed=61, noise=0.0)
        while True:
            x, y = next(stream)
            sd = 0.05 + 0.3 * torch.sigmoid(x[:, 0])
            yield x, y + sd * torch.randn(32, generator=gen)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp(), full=True)

    gen = seeded(25313)
    model = Bolide()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, batches(gen), 220, loss_fn, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
