"""Held-out set 465 (``h465_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sopilka fingering sliding-window attention classifier whose AdamW lr is typed 1e-1 for
1e-3 with no weight decay (the attention logits grow), an intaglio plate bite-depth tanh
regressor whose warm-up LambdaLR lacks its min(1, .) cap (full-batch SGD; the lr keeps rising
past 2 / sharpness and the loss blows up), a mouth-bow string-pitch net taking sqrt(T - T_slack)
with no clamp when a slack string reads under its threshold (NaN, Adamax), an enamelling kiln
firing-time regressor resumed from a checkpoint that saved the EMA shadow (decay 0.9999, still
near the init) as the model (a one-off loss spike, recovers, SGD momentum), a soap-carving knife
grade ReLU classifier whose Adam lr is typed 3e-1 for 3e-3 (fc2's ReLUs die, the loss stalls), a
saltpetre nitre-bed yield regressor fed one shard with -999 missing-value sentinels (RAdam), a
leather-tooling swivel-knife depth regressor whose layer-wise lr decay is typed 0.01 for 0.9
(the lower layers frozen, RMSprop), a repousse chasing-hammer dent-depth Huber regressor whose
loss-weight table reads 80 for 0.8 at one step (SGD Nesterov, clipped), an ELVES airglow-ring
cosine classifier whose logit scale is initialised to 10 instead of log(10) (softmax saturates,
NAdam) and a chalumeau reed-register regressor whose loss is divided on the resume step by a
stale config field of 1e-5 (one giant gradient fills Adam's second moment, the updates stall).

Controls: a smalti tessera-cut grade classifier with dropout 0.5 and label smoothing 0.2
(AdamW, OneCycleLR; the loss stays high and noisy), a tongkonan roof-saddle sag regressor
(ASGD, clipping, ReduceLROnPlateau), a lontar palm-leaf incision tied-weight autoencoder
(Adadelta, warm-up, accumulation over 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _params_norm(params) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in params))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data and a plain net ---------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


def _moved(model):
    """Return a hook recording the norm of each step's parameter update."""
    moves, prev = [], [p.detach().clone() for p in model.parameters()]

    def after(step):
        now = [p.detach().clone() for p in model.parameters()]
        moves.append(
            math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
        )
        prev[:] = now

    return moves, after


# -- 1. attention logits: a sliding-window classifier, AdamW lr typed 1e-1 for 1e-3 ---------------------


class _WindowAttention(nn.Module):
    """Self-attention where each frame token sees only frames within ``band`` of itself; the
    class token (position 0) sees and is seen by every token. Keeps the largest |q.k/sqrt(d)|
    over the allowed pairs."""

    def __init__(self, dim, heads, tokens, band=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        i = torch.arange(tokens)
        allowed = (i[:, None] - i[None, :]).abs() <= band
        allowed[0, :] = True
        allowed[:, 0] = True
        self.register_buffer("allowed", allowed)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().masked_fill(~self.allowed, 0).max())
        logits = logits.masked_fill(~self.allowed, float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _SopilkaReader(nn.Module):
    """Sixteen breath/finger-hole sensor frames as tokens plus a class token, one pre-LN block
    of sliding-window attention."""

    def __init__(self, d_in=6, frames=16, dim=32, heads=2, classes=6):
        super().__init__()
        self.frames, self.d_in = frames, d_in
        self.embed = nn.Linear(d_in, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, frames + 1, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, frames + 1)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.embed(x.reshape(-1, self.frames, self.d_in))
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h[:, 0])


def _fingerings(gen, batch, classes=6, frames=16, d_in=6):
    """Noisy frames; a three-frame fingering pattern (its first channel a breath marker) sits
    at a random place and names the class."""
    g = torch.Generator().manual_seed(4651)
    shapes = 1.2 * torch.randn(classes, 3, d_in - 1, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.7 * torch.randn(batch, frames, d_in, generator=gen)
        at = torch.randint(0, frames - 3, (batch,), generator=gen)
        rows = torch.arange(batch)
        for j in range(3):
            x[rows, at + j, 0] = 2.5
            x[rows, at + j, 1:] += shapes[y, j]
        yield x.reshape(batch, -1), y


@scenario(
    family="sopilka_fingering_sliding_window_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Sopilka fingering classifier (sixteen finger-hole and breath sensor frames as tokens, "
    "a global class token, one hand-written block of sliding-window attention where each frame "
    "attends only to frames within two of it, cross-entropy, AdamW). The lr is typed 1e-1 for "
    "1e-3 with weight decay 0: q and k grow and the attention logits q.k/sqrt(d) grow many-fold.",
)
def h465_sopilka_window_attention_lr_typo(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4651)
        model = _SopilkaReader()
        data = _fingerings(gen, 64)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        seen = []
        losses, _ = _loop(
            ctx,
            model,
            opt,
            data,
            200,
            F.cross_entropy,
            classifier=True,
            after=lambda s: seen.append(model.attn.max_logit),
            attach=attach,
        )
        return losses, seen

    ref_losses, ref = run(1e-3, False)
    losses, seen = run(1e-1, True)
    ctx.check("max attention logit over 100x its first step's", max(seen[-20:]) > 100 * seen[0])
    ctx.check("max attention logit over 5x the 1e-3 run's", max(seen[-20:]) > 5 * max(ref[-20:]))
    ctx.check("the 1e-3 run trains", _fell(ref_losses))
    ctx.check("finite", _finite(losses))


# -- 2. sharpness: a warm-up without its cap ---------------------------------------------------------

INTAGLIO_WARM = 20


@scenario(
    family="intaglio_plate_acid_bite_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=INTAGLIO_WARM,
    note="Intaglio etching plate bite-depth regressor (tanh MLP on acid strength, temperature, "
    "ground and immersion features, MSE, full-batch SGD). The warm-up LambdaLR is written "
    "(s + 1) / 20 without its min(1, .) cap: after step 20 the lr keeps rising linearly, "
    "lr * sharpness crosses 2 and the loss oscillates and blows up.",
)
def h465_intaglio_uncapped_warmup(ctx) -> None:
    gen = seeded(4652)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4652)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=INTAGLIO_BASE)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / INTAGLIO_WARM)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step >= INTAGLIO_WARM and step % 10 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 240, F.mse_loss, before=before, sched=sched)
    low = min(losses[: INTAGLIO_WARM + 20])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    over = next((s for s in sorted(sharp) if lrs[s] * sharp[s] > 2.0), None)
    ctx.check("lr * sharpness under 2 at the end of warm-up", lrs[20] * sharp[20] < 2.0)
    ctx.check("lr * sharpness over 2 later", over is not None)
    ctx.check(
        "the loss blows up over 100x its lowest after that",
        blow is not None and over is not None and blow >= over,
    )
    ctx.check("trained during warm-up", losses[INTAGLIO_WARM] < 0.7 * losses[0])


INTAGLIO_BASE = 0.1


# -- 3. nonfinite: sqrt of a slack string's tension ------------------------------------------------


class _TensionSqrt(nn.Module):
    """sqrt(T - T_slack): the physics feature (pitch goes as the root of tension above slack),
    with no clamp; passes the other readings through."""

    def forward(self, x):
        feat = torch.sqrt(x[:, :1] - x[:, 1:2])
        return torch.cat([feat, x[:, 2:]], 1)


class _MouthBowNet(nn.Module):
    def __init__(self, d_in=7):
        super().__init__()
        self.tension_sqrt = _TensionSqrt()
        self.fc1 = nn.Linear(d_in - 1, 32)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.fc1(self.tension_sqrt(x))
        return self.head(self.act2(self.fc2(self.act1(h)))).squeeze(-1)


MOUTH_BOW_STEP = 120


@scenario(
    family="mouth_bow_string_pitch_sqrt_tension_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("tension_sqrt",),
    diverges=MOUTH_BOW_STEP,
    heldout=True,
    onset=MOUTH_BOW_STEP,
    note="Mouth-bow string-pitch net (sqrt of the string tension above its slack threshold as "
    "a feature, SiLU MLP, MSE, Adamax). The sqrt has no clamp; at step 120 a bow whose string "
    "went slack reads a tension just under its threshold, sqrt of a negative is NaN and the "
    "loss is NaN.",
)
def h465_mouth_bow_slack_string_sqrt(ctx) -> None:
    gen = seeded(4653)
    g = torch.Generator().manual_seed(4653)
    w = torch.randn(5, generator=g)

    def data():
        while True:
            slack = 2.0 + torch.rand(64, 1, generator=gen)
            tension = slack + 0.2 + 3.0 * torch.rand(64, 1, generator=gen)
            rest = torch.randn(64, 5, generator=gen)
            pitch = 0.6 * torch.sqrt(tension - slack).squeeze(1) + 0.3 * torch.tanh(rest @ w / 2)
            yield torch.cat([tension, slack, rest], 1), pitch

    model = _MouthBowNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step == MOUTH_BOW_STEP:
            x = x.clone()
            x[11, 0] = x[11, 1] - 0.05
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    k = MOUTH_BOW_STEP
    ctx.check("finite before the step", _finite(losses[:k]))
    ctx.check("loss NaN at the step", len(losses) > k and math.isnan(losses[k]))
    ctx.check("trained before it", _mean(losses[k - 10 : k]) < 0.5 * _mean(losses[:5]))


# -- 4. loss spike: a resume that loads the EMA shadow -----------------------------------------------

ENAMEL_STEP = 150


@scenario(
    family="enamelling_kiln_firing_time_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ENAMEL_STEP,
    note="Enamelling kiln firing-time regressor (GELU MLP on frit, layer thickness and kiln "
    "temperature, MSE, SGD momentum). The checkpoint written for the resume at step 150 saved "
    "the EMA shadow (decay 0.9999, meant for a long run, still close to the init) under the "
    "model key: the resumed weights are nearly untrained, the loss jumps back up once and the "
    "run recovers.",
)
def h465_enamelling_ema_resume(ctx) -> None:
    gen = seeded(4654)
    model = _Net(9, 48, 1, act=nn.GELU)
    data = _readings(gen, 64, 9, seed=4654)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ema = [p.detach().clone() for p in model.parameters()]

    def before(step):
        if step == ENAMEL_STEP:
            with torch.no_grad():
                for p, e in zip(model.parameters(), ema, strict=True):
                    p.copy_(e)

    def after(step):
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema, strict=True):
                e.mul_(0.9999).add_(p, alpha=1e-4)

    losses, _ = _loop(ctx, model, opt, data, 300, F.mse_loss, before=before, after=after)
    k = ENAMEL_STEP
    base = _median(losses[k - 20 : k])
    ctx.check("loss over 3x the median before at the step", losses[k] > 3 * base)
    ctx.check(
        "back under 1.5x within 100 steps",
        min(_mean(losses[i : i + 5]) for i in range(k, k + 100)) < 1.5 * base,
    )
    ctx.check("trained before it", base < 0.5 * _mean(losses[:5]))
    ctx.check("finite", _finite(losses))


# -- 5. plasticity: an Adam lr typed 3e-1 for 3e-3 -----------------------------------------------


@scenario(
    family="soap_carving_knife_stroke_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Soap-carving knife-stroke grade classifier (ReLU MLP on blade angle, pressure and bar "
    "hardness features, cross-entropy, Adam, no warm-up). The lr is typed 3e-1 for 3e-3: "
    "Adam's first steps move every weight by about the lr, nearly all of fc2's ReLUs are pushed "
    "negative for every input, stay dead, and the loss stalls at chance.",
)
def h465_soap_carving_adam_lr_typo(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4655)
        model = _Net(12, 64, 6)
        data = _grades(gen, 64, 12, 6, seed=4655, spread=1.0)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses, _ = _loop(
            ctx, model, opt, data, 200, F.cross_entropy, classifier=True, attach=attach
        )
        x = torch.cat([next(data)[0] for _ in range(8)])
        with torch.no_grad():
            dead = dead_fraction(model.features(x))
        return losses, dead

    ref_losses, ref_dead = run(3e-3, False)
    losses, dead = run(3e-1, True)
    ctx.check("over 90% of fc2's units dead at the end", dead > 0.9)
    ctx.check("under 10% dead at lr 3e-3", ref_dead < 0.1)
    ctx.check(
        "loss at the end over 1.5x the lr 3e-3 run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard with -999 sentinels -------------------------------------------------

SALTPETRE_STEP = 110


@scenario(
    family="saltpeter_nitre_bed_yield_relu_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SALTPETRE_STEP,
    note="Saltpetre nitre-bed yield regressor (ReLU MLP on dung, lime, moisture and turning "
    "features, MSE, RAdam). One shard from another works' ledger writes missing moisture "
    "readings as -999: the batch at step 110 carries the sentinel in half its rows, the loss "
    "and gradient jump, the run recovers.",
)
def h465_saltpeter_sentinel_shard(ctx) -> None:
    gen = seeded(4656)
    model = _Net(9, 48, 1)
    data = _readings(gen, 64, 9, seed=4656)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == SALTPETRE_STEP:
            x = x.clone()
            x[::2, 3] = -999.0
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    k = SALTPETRE_STEP
    ctx.check("loss over 20x the median at the step", losses[k] > 20 * _median(losses[k - 20 : k]))
    ctx.check(
        "gradient over 10x the median at the step", norms[k] > 10 * _median(norms[k - 20 : k])
    )
    ctx.check(
        "recovers: last 20 under 3x the 20 before the step",
        _mean(losses[-20:]) < 3 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- 7. update ratio: a layer-wise lr decay typed 0.01 for 0.9 --------------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))
        return self.head(h).squeeze(-1)


@scenario(
    family="leather_tooling_swivel_knife_depth_llrd_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Leather-tooling swivel-knife cut-depth regressor (four Linear layers, ReLU, MSE, "
    "RMSprop with layer-wise lr decay: lr * decay ** depth-from-the-head per param group). The "
    "decay is typed 0.01 for 0.9: fc1 trains at 1e-6 and fc2 at 1e-4 of the head's lr and "
    "barely move, while the head trains normally.",
)
def h465_leather_tooling_llrd_typo(ctx) -> None:
    gen = seeded(4657)
    model = _DeepNet(10)
    data = _readings(gen, 64, 10, seed=4657)
    decay, base = 0.01, 1e-3
    layers = [model.fc1, model.fc2, model.fc3, model.head]
    opt = torch.optim.RMSprop(
        [
            {"params": m.parameters(), "lr": base * decay ** (len(layers) - 1 - i)}
            for i, m in enumerate(layers)
        ],
        alpha=0.99,
    )
    start = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)

    def rel(n):
        return float((getattr(model, n).weight.detach() - start[n]).norm() / start[n].norm())

    ctx.check("fc1 moves under 1e-5 of its norm", rel("fc1") < 1e-5)
    ctx.check("fc2 moves under 1e-3 of its norm", rel("fc2") < 1e-3)
    ctx.check("the head moves over 5% of its norm", rel("head") > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a loss-weight table entry typed 80 for 0.8 ----------------------------------

CHASING_STEP = 140


@scenario(
    family="chasing_hammer_repousse_dent_depth_tanh_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHASING_STEP,
    note="Repousse chasing-hammer dent-depth regressor (tanh MLP on punch shape, hammer weight "
    "and pitch-bowl hardness, Huber, SGD Nesterov, clipping at 1). The per-step loss-weight "
    "table (0.8 throughout) has the entry for step 140 typed 80: one gradient 100x too large "
    "on an ordinary logged loss; the clip bounds the step and the run recovers.",
)
def h465_chasing_hammer_weight_table_typo(ctx) -> None:
    gen = seeded(4658)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 128, 8, seed=4658)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    table = [0.8] * 260
    table[CHASING_STEP] = 80.0

    losses, norms = _loop(
        ctx,
        model,
        opt,
        data,
        260,
        F.huber_loss,
        backprop=lambda s, loss: table[s] * loss,
        clip=1.0,
    )
    k = CHASING_STEP
    ctx.check(
        "gradient over 50x the median at the step", norms[k] > 50 * _median(norms[k - 30 : k])
    )
    ctx.check("the logged loss is ordinary there", losses[k] < 2 * _median(losses[k - 30 : k]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[k - 20 : k]))
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: a logit scale initialised to 10 for log(10) -------------------------------


class _CosineHead(nn.Module):
    """Cosine classifier: normalised features against normalised class weights, times a learnt
    scale kept in log space."""

    def __init__(self, dim, classes, log_scale_init):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale_init)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _ElvesNet(nn.Module):
    def __init__(self, log_scale_init, d_in=14, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = _CosineHead(64, classes, log_scale_init)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="elves_airglow_ring_photometer_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="ELVES / sprite / halo transient-luminous-event classifier (GELU MLP on photometer "
    "channel features, a cosine head with a learnt scale stored as log_scale and used as "
    "exp(log_scale), cross-entropy, NAdam). The scale is initialised as 10.0 instead of "
    "log(10): the logits are exp(10) = 22026 times the cosines and most rows' softmax rounds "
    "the target to exactly 1.0 in float32.",
)
def h465_elves_log_scale_init(ctx) -> None:
    def run(init, attach):
        gen = seeded(4659)
        model = _ElvesNet(init)
        data = _grades(gen, 64, 14, 5, seed=4659, spread=0.9)
        opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
        losses, _ = _loop(
            ctx, model, opt, data, 150, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(data)
        with torch.no_grad():
            return losses, collapsed_fraction(model(x), y)

    _, ref = run(math.log(10.0), False)
    losses, frac = run(10.0, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% with log_scale = log(10)", ref < 0.05)


# -- 10. Adam's second moment: a loss divided by a stale config field -------------------------------

CHALUMEAU_STEP = 80


@scenario(
    family="chalumeau_reed_register_break_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CHALUMEAU_STEP,
    note="Chalumeau reed register-break regressor (GELU MLP on reed, ligature and breath "
    "features, MSE, Adam). The loss is divided by the accumulation count; on the resume at "
    "step 80 that count is read from the wrong config field (the lr, 1e-5): one gradient 1e5x "
    "too large fills Adam's second moment and the updates stall for hundreds of steps.",
)
def h465_chalumeau_resume_divisor(ctx) -> None:
    def run(bug, attach):
        gen = seeded(4660)
        model = _Net(10, 48, 1, act=nn.GELU)
        data = _readings(gen, 64, 10, seed=4660)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves, after = _moved(model)
        losses, norms = _loop(
            ctx,
            model,
            opt,
            data,
            260,
            F.mse_loss,
            backprop=lambda s, loss: loss / 1e-5 if bug and s == CHALUMEAU_STEP else loss,
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(False, False)
    losses, norms, moves = run(True, True)
    k = CHALUMEAU_STEP
    ctx.check("gradient over 1e4x the median at the step", norms[k] > 1e4 * _median(norms[:k]))
    ctx.check(
        "updates 40-140 steps later under 1/20 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 40 : k]) / 20,
    )
    ctx.check(
        "loss at the end over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- controls ---------------------------------------------------------------------------------------


class _DropNet(nn.Module):
    def __init__(self, d_in, hidden, classes, p):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop1(F.relu(self.fc1(x)))
        return self.head(self.drop2(F.relu(self.fc2(h))))


@scenario(
    family="smalti_tessera_cut_grade_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Smalti tessera cut-grade classifier (ReLU MLP with dropout 0.5 on hardie-and-hammer "
    "cut features, cross-entropy with label smoothing 0.2, AdamW under OneCycleLR, small noisy "
    "batches of overlapping classes): the training loss stays high and noisy while held-out "
    "accuracy is well above chance. A healthy control.",
)
def h465_smalti_dropout_smoothing_control(ctx) -> None:
    gen = seeded(4661)
    model = _DropNet(12, 96, 8, 0.5)
    data = _grades(gen, 32, 12, 8, seed=4661, spread=1.3)
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.2),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(_grades(torch.Generator().manual_seed(99), 512, 12, 8, seed=4661, spread=1.3))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    tail = losses[-50:]
    sd = math.sqrt(_mean([(v - _mean(tail)) ** 2 for v in tail]))
    ctx.check("loss fell under 85% of its start", _fell(losses, ratio=0.85))
    ctx.check("held-out accuracy over 3x chance", acc > 3 / 8)
    ctx.check("the loss stays high: last 50 over 0.9", _mean(tail) > 0.9)
    ctx.check("the loss stays noisy: sd of the last 50 over 0.05", sd > 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="tongkonan_roof_saddle_sag_asgd_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tongkonan boat-roof saddle-sag regressor (tanh MLP on bamboo-layer, span and rafter "
    "features, MSE, ASGD with clipping at 1 and ReduceLROnPlateau on the training loss). A "
    "healthy control.",
)
def h465_tongkonan_asgd_control(ctx) -> None:
    gen = seeded(4662)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 8, seed=4662, noise=0.1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.mse_loss,
        clip=1.0,
        after=lambda s: plateau.step(ctx.losses[-1]),
    )
    ctx.check("loss fell under 50% of its start", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=24, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _incisions(gen, batch, d_in=24, rank=4):
    """Stylus-pressure profiles of palm-leaf incisions: a few smooth strokes plus noise."""
    g = torch.Generator().manual_seed(4663)
    basis = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        x = torch.randn(batch, rank, generator=gen) @ basis
        x = x + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="lontar_palm_leaf_incision_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lontar palm-leaf manuscript incision-profile autoencoder (decoder tied to the "
    "encoder's weight, tanh code, MSE, Adadelta lr 1.0 with a 20-step warm-up, accumulation "
    "over 2). A healthy control.",
)
def h465_lontar_adadelta_control(ctx) -> None:
    gen = seeded(4663)
    model = _TiedAutoencoder()
    data = _incisions(gen, 32)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, sched=sched, accumulate=2)
    ctx.check("loss fell under 50% of its start", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
