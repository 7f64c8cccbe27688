"""Held-out set 395 (``h395_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a flag-hoist signal-letter GRU language model (gates written out, truncated BPTT with the
hidden state carried between chunks) whose recurrent weights are initialised with std 1.0 for
1/sqrt(hidden) (gradients grow through time), a perry-pear mill log-feature net whose log
transform has no clamp (an idle pressing logs 0: log 0), a coracle paddle-stroke BCE net fed one
shard in millimetres (one corrupted batch), a sliotar stitching-seam ReLU Huber regressor whose
NAdam lr is typed 1e-1 for 1e-3 (ReLUs die), a forcola oarlock-carving two-group classifier
whose body group's lr is typed 1e-9 for 1e-1 (frozen), a saltern crystalliser brine tanh
regressor whose MultiStepLR gamma is typed 10 for 0.1 (past 2/sharpness), a koto ji-bridge
placement classifier whose softmax temperature is typed 1e-3 for 1.0 (softmax saturates), an
ice-axe pick-sharpening Laplace-NLL net whose loss-weight table has 60.0 for 0.60 at one step (one
gradient burst), a clog toe-tap classifier whose hand-written cross-entropy lost its logsumexp
(head logits grow without bound) and a fumarole silica-sinter tanh regressor whose hand-written
decoupled weight decay has its sign flipped (a slow climb).

Controls: a heliograph Morse-character GRU language model (hidden state detached between chunks,
clipping at 0.5, Adam), a glass gaffer jack-tool SiLU Huber regressor (fp16 autocast with a
GradScaler, AdamW with a no-decay bias group under OneCycleLR, accumulation over 2, clipping) and
a sanxian snakeskin-pluck ReLU Conv1d classifier (SGD Nesterov under ReduceLROnPlateau, label
smoothing 0.1, 10% noisy labels, clipping).

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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (divided by the accumulation count by the caller's loss),
    ``after(step)`` runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            if watch is not None:
                watch(step, out, x, y)
            out = out.float()
            loss = loss_fn(out, y)
            total = loss if backprop is None else backprop(step, loss)
            total = total / accumulate
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.0):
    """Readings labelled by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.sin(2 * x[:, 0]) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    """Readings scattered around one prototype per class (``flip`` of the labels random)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)


def _traces(gen, batch, classes, seed, length=40, channels=2, flip=0.0):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        noisy = torch.rand(batch, generator=gen) < flip
        y = torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- a hand-written GRU language model over generated character streams ---------------------------


class _GRUCell(nn.Module):
    """A GRU cell with its gates written out: r, z = sigmoid(.), n = tanh(x_n + r * h_n)."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(d_in, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden)

    def forward(self, x, h):
        xr, xz, xn = self.ih(x).chunk(3, -1)
        hr, hz, hn = self.hh(h).chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class _CharGRULM(nn.Module):
    def __init__(self, vocab=24, dim=16, hidden=48, rec_std=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.cell = _GRUCell(dim, hidden)
        self.head = nn.Linear(hidden, vocab)
        std = hidden**-0.5 if rec_std is None else rec_std
        nn.init.normal_(self.cell.hh.weight, std=std)
        nn.init.zeros_(self.cell.hh.bias)

    def forward(self, idx, h, keep=None):
        """Logits for every position; ``keep`` (a list) receives each step's hidden state."""
        e = self.emb(idx)
        outs = []
        for t in range(idx.shape[1]):
            h = self.cell(e[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
            outs.append(h)
        return self.head(torch.stack(outs, 1)), h


def _char_streams(gen, batch, seed, vocab=24):
    """Endless character streams from a sparse generated Markov chain (a signal code book)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((vocab, vocab), -6.0)
    for a in range(vocab):
        nxt = torch.randperm(vocab, generator=g)[:3]
        logits[a, nxt] = torch.tensor([2.0, 1.0, 0.3])
    probs = torch.softmax(logits, -1)
    state = torch.randint(0, vocab, (batch,), generator=gen)
    while True:
        state = torch.multinomial(probs[state], 1, generator=gen).squeeze(1)
        yield state


def _chunks(gen, batch, length, seed):
    """(input, target) chunks of ``length`` characters that continue each stream."""
    stream = _char_streams(gen, batch, seed)
    prev = next(stream)
    while True:
        seq = [prev] + [next(stream) for _ in range(length)]
        prev = seq[-1]
        win = torch.stack(seq, 1)
        yield win[:, :-1], win[:, 1:]


def _through_time(model, x, y, h):
    """||dL/dh_1|| / ||dL/dh_T|| for one chunk (L: the chunk's mean cross-entropy)."""
    keep: list[torch.Tensor] = []
    logits, _ = model(x, h.detach(), keep)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    first, last = keep[0].grad.norm(), keep[-1].grad.norm()
    model.zero_grad(set_to_none=True)
    return float(first / last.clamp_min(1e-30))


def _lm_run(ctx, model, opt, chunks, steps, *, clip, batch, hidden, probe_every=None):
    """Truncated BPTT: the hidden state is carried from chunk to chunk, detached at the edge."""
    ctx.attach(model, opt)
    h = torch.zeros(batch, hidden)
    ratios = []
    for step in range(steps):
        x, y = next(chunks)
        if probe_every is not None and step % probe_every == 0:
            ratios.append(_through_time(model, x, y, h))
        ctx.targets(y.reshape(-1))
        logits, h_new = model(x, h)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        h = h_new.detach()
        if not math.isfinite(float(loss.detach())):
            break
    return ratios


@scenario(
    "flag_hoist_signal_letter_gru_tbptt_lm",
    "SGD",
    "exploding_gradients",
    "cell",
    None,
    heldout=True,
    note="a character language model over generated flag-hoist signal streams: embedding, a "
    "hand-written GRU cell (gates written out), a linear head; truncated BPTT over 24-character "
    "chunks with the hidden state carried (detached) from chunk to chunk; the recurrent weight "
    "is initialised with std 1.0 (a config default read as the std) for 1/sqrt(48), so "
    "dL/dh_1 is over 20x dL/dh_24 at the start and the median over the run stays over 10x "
    "against under 5x at the intended init; plain SGD with clipping at 1.0",
)
def h395_flag_hoist_gru_recurrent_init(ctx: Context) -> None:
    gen = seeded(3951)
    batch, hidden = 32, 48
    ref = _CharGRULM(hidden=hidden)
    ref_ratio = _through_time(
        ref, *next(_chunks(seeded(39510), batch, 24, 395)), torch.zeros(batch, hidden)
    )
    gen = seeded(3951)
    model = _CharGRULM(hidden=hidden, rec_std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ratios = _lm_run(
        ctx,
        model,
        opt,
        _chunks(gen, batch, 24, 395),
        120,
        clip=1.0,
        batch=batch,
        hidden=hidden,
        probe_every=10,
    )
    ctx.check("dL/dh_1 over 20x dL/dh_24 at the start", ratios[0] > 20)
    ctx.check("median ratio over the run over 10x", _median(ratios) > 10)
    ctx.check("under 5x at the intended init", ref_ratio < 5)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "heliograph_morse_char_detached_gru_lm",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="a character language model over generated heliograph Morse streams: embedding, a "
    "hand-written GRU cell, a linear head; truncated BPTT over 24-character chunks with the "
    "hidden state detached between chunks, clipping at 0.5, Adam (control)",
)
def h395_heliograph_gru_lm_control(ctx: Context) -> None:
    gen = seeded(3952)
    batch, hidden = 32, 48
    model = _CharGRULM(hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    _lm_run(
        ctx,
        model,
        opt,
        _chunks(gen, batch, 24, 3952),
        150,
        clip=0.5,
        batch=batch,
        hidden=hidden,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("losses finite", _finite(ctx.losses))


# -- nonfinite: a log transform with no clamp ------------------------------------------------------


class _LogFeature(nn.Module):
    """Log-transforms the skewed mill readings (juice flow, press load): log(x), no clamp."""

    def forward(self, x):
        return torch.log(x)


class _PerryNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x)))))
        return self.head(z).squeeze(-1)


def _mill_readings(gen, batch, seed, d_in=6):
    """Positive, log-normal mill readings; target: sugar yield from their logs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        z = 0.6 * torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(z @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield z.exp(), y


@scenario(
    "perry_pear_mill_sugar_log_feature_net",
    "Adam",
    "nonfinite",
    "logfeat",
    95,
    heldout=True,
    onset=95,
    note="a SiLU regressor of perry sugar yield whose first module log-transforms the skewed "
    "mill readings with torch.log(x) and no clamp or log1p; from step 95 an idle press logs a "
    "juice flow of exactly 0.0 for four rows (a real reading, finite), log 0 = -inf and the "
    "loss is non-finite at step 95",
)
def h395_perry_mill_log_zero(ctx: Context) -> None:
    gen = seeded(3953)
    model = _PerryNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step >= 95:
            x = x.clone()
            x[:4, 0] = 0.0
        return x, y

    def watch(step, out, x, y):
        if step == 95:
            seen["input_finite"] = bool(torch.isfinite(x).all())
            seen["log_nonfinite"] = bool((~torch.isfinite(model.logfeat(x))).any())

    _loop(ctx, model, opt, _mill_readings(gen, 64, 395), 200, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("loss finite and falling before step 95", _fell(ls[:95]))
    ctx.check("loss non-finite first at step 95", _first_bad(ls) == 95)
    ctx.check("the batch at step 95 is finite", seen.get("input_finite", False))
    ctx.check("the log feature is non-finite at step 95", seen.get("log_nonfinite", False))


# -- data_outlier: one shard in millimetres --------------------------------------------------------


@scenario(
    "coracle_paddle_stroke_capsize_bce_net",
    "SGD momentum",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="a ReLU BCE net of coracle capsize risk from standardised paddle-stroke readings; the "
    "step-110 batch comes from one river club's shard whose three blade-depth columns were "
    "logged in millimetres (x1000): loss and gradient over 20x the run's median, clipped at "
    "5.0, the run recovers; SGD momentum",
)
def h395_coracle_mm_shard(ctx: Context) -> None:
    gen = seeded(3954)
    model = _MLP(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 2:5] *= 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, 3954, flip=0.05),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    base_l, base_g = _median(ls[60:110]), _median(gs[60:110])
    ctx.check("loss over 20x at step 110", ls[110] > 20 * base_l)
    ctx.check("gradient over 20x at step 110", gs[110] > 20 * base_g)
    ctx.check(
        "recovers: last 30 steps under 1.5x the pre-onset level", _mean(ls[-30:]) < 1.5 * base_l
    )
    ctx.check("losses finite", _finite(ls))


# -- loss_of_plasticity: an RMSprop lr typo kills the ReLUs ----------------------------------------


def _dead_share(model, x) -> float:
    with torch.no_grad():
        a = model.act2(model.fc2(model.act1(model.fc1(x))))
    return float((a <= 0).all(0).float().mean())


def _sliotar_run(lr, seed, steps, ctx=None):
    gen = seeded(seed)
    model = _MLP(12, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 12, seed)
    probe = next(_readings(torch.Generator().manual_seed(7), 512, 12, seed))[0]
    dead = []

    def after(step):
        dead.append(_dead_share(model, probe))

    if ctx is not None:
        _loop(ctx, model, opt, batches, steps, F.huber_loss, after=after)
    else:
        for _ in range(steps):
            x, y = next(batches)
            F.huber_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            dead.append(_dead_share(model, probe))
    return dead


@scenario(
    "sliotar_stitching_seam_relu_huber_regressor",
    "NAdam",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="a ReLU Huber regressor of sliotar seam strength; NAdam's lr typed 1e-1 for 1e-3: "
    "the first steps push fc2's pre-activations negative and over half of act2's units are "
    "dead (never positive on a 512-row probe) over the last 50 steps, against under 20% at "
    "the intended rate",
)
def h395_sliotar_nadam_lr_typo(ctx: Context) -> None:
    ref = _sliotar_run(1e-3, 3955, 200)
    dead = _sliotar_run(1e-1, 3955, 200, ctx)
    ctx.check("over half of act2 dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("under 20% dead at the intended lr", max(ref[-50:]) < 0.2)
    ctx.check("losses finite", _finite(ctx.losses))


# -- update_ratio_out_of_range: a param-group lr typo freezes the body -----------------------------


@scenario(
    "forcola_oarlock_carving_two_group_classifier",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a ReLU classifier of forcola oarlock carving grade with two param groups, the body "
    "(fc1, fc2) and the head; the body's lr is typed 1e-9 for 1e-1: the body moves under 1e-6 "
    "of its norm while receiving gradients, the head moves over 5%; Adagrad",
)
def h395_forcola_body_lr_typo(ctx: Context) -> None:
    gen = seeded(3956)
    model = _MLP(16, 48, 6)
    body = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-1}]
    )
    b0 = torch.cat([p.detach().reshape(-1) for p in body]).clone()
    h0 = model.head.weight.detach().clone()
    grads = []
    orig_step = opt.step

    def step_and_record(*a, **k):
        grads.append(float(model.fc1.weight.grad.norm()))
        return orig_step(*a, **k)

    opt.step = step_and_record
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3956, spread=1.5),
        150,
        F.cross_entropy,
        classifier=True,
    )
    b1 = torch.cat([p.detach().reshape(-1) for p in body])
    ctx.check("body moves under 1e-6 of its norm", _rel_change(b0, b1) < 1e-6)
    ctx.check("head moves over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("body receives gradients", _median(grads) > 1e-4)
    ctx.check("losses finite", _finite(ctx.losses))


# -- sharpness_above_limit: a MultiStepLR gamma typo -----------------------------------------------


class _TanhNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
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


@scenario(
    "saltern_crystalliser_brine_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=80,
    note="a tanh regressor of saltern crystalliser brine density, plain SGD at lr 0.1 with "
    "MultiStepLR(milestones=[80], gamma=10.0) where the decay was meant as 0.1: at step 80 the "
    "lr becomes 1.0, lr x top Hessian eigenvalue (power iteration) goes from under 2 to over "
    "2 and the loss blows up",
)
def h395_saltern_multistep_gamma(ctx: Context) -> None:
    gen = seeded(3957)
    model = _TanhNet(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 8, 3957))
    seen = {}

    def before(step):
        if step in (0, 79, 80):
            seen[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3957), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 before the milestone", seen.get(79, 9.0) < 2)
    ctx.check("lr x sharpness over 2 at step 80", seen.get(80, 0.0) > 2)
    ctx.check("loss fell before step 80", _fell(ls[:80]))
    after = [v if math.isfinite(v) else 1e30 for v in ls[80:]]
    ctx.check("loss blows up past 100x its pre-onset level", max(after) > 100 * _mean(ls[70:80]))


# -- softmax_collapse: a temperature typo ----------------------------------------------------------


@scenario(
    "koto_ji_bridge_placement_temperature_classifier",
    "RMSprop",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="a GELU classifier of koto ji-bridge placement (which of 8 string positions) whose "
    "logits are divided by a softmax temperature typed 1e-3 for 1.0: over half the rows' "
    "target probability is exactly 1.0 in float32 over the last 30 steps, against under 5% "
    "at temperature 1.0 on the same logits; RMSprop",
)
def h395_koto_temperature_typo(ctx: Context) -> None:
    gen = seeded(3958)
    model = _MLP(16, 48, 8, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    temperature = 1e-3
    collapsed, intended = [], []

    def watch(step, out, x, y):
        if step >= 120:
            logits = out.detach().float()
            p = torch.softmax(logits / temperature, -1).gather(1, y[:, None])
            q = torch.softmax(logits, -1).gather(1, y[:, None])
            collapsed.append(float((p == 1.0).float().mean()))
            intended.append(float((q == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 3958, spread=1.2),
        150,
        lambda out, y: F.cross_entropy(out / temperature, y),
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows at p = 1.0 over the last 30 steps", _mean(collapsed) > 0.5)
    ctx.check("under 5% at temperature 1.0", _mean(intended) < 0.05)
    ctx.check("losses finite", _finite(ctx.losses))


# -- gradient_spike: a loss-weight table typo at one step ------------------------------------------


def _laplace_nll(out, y):
    """Laplace negative log-likelihood of y under (location, log-scale) = out[:, 0], out[:, 1]."""
    mu, logb = out[:, 0], out[:, 1]
    return (logb + (y - mu).abs() / logb.exp()).mean()


class _TwoHead(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "ice_axe_pick_sharpening_laplace_nll_net",
    "ASGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=120,
    note="a SiLU Laplace-NLL net (location and log-scale heads) of ice-axe pick bite after "
    "sharpening; the per-step loss-weight table read from a CSV has 60.0 for 0.60 at step "
    "120, the backpropagated loss is 100x the usual weight on a clean batch: the gradient is "
    "over 20x the run's median while the logged loss is ordinary, clipped at 5.0, recovers; "
    "ASGD",
)
def h395_ice_axe_weight_table_typo(ctx: Context) -> None:
    gen = seeded(3959)
    model = _TwoHead(10)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    weights = [0.60] * 220
    weights[120] = 60.0

    def backprop(step, loss):
        return weights[step] * loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3959),
        220,
        _laplace_nll,
        backprop=backprop,
        clip=5.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 20x the median at step 120", gs[120] > 20 * _median(gs[80:120]))
    ctx.check("logged loss at step 120 ordinary", ls[120] < 1.5 * _mean(ls[110:120]))
    ctx.check("loss fell before step 120", ls[119] < ls[0] and _fell(ls[:120]))
    ctx.check(
        "recovers: last 30 steps under the pre-onset level + 0.2",
        _mean(ls[-30:]) < _mean(ls[100:120]) + 0.2,
    )
    ctx.check("losses finite", _finite(ls))


# -- output_logit_divergence: a cross-entropy without its logsumexp ---------------------------------


def _ce_without_lse(logits, y):
    """The refactored 'cross-entropy': -logit[y] + mean(logits); the logsumexp was dropped."""
    return (-logits.gather(1, y[:, None]).squeeze(1) + logits.mean(1)).mean()


@scenario(
    "clog_toe_tap_raw_margin_classifier",
    "Adam",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a ReLU classifier of clog toe-tap kinds whose hand-written cross-entropy lost its "
    "logsumexp in a refactor (-logit[y] + mean(logits)): the loss has no floor, the head's "
    "largest |logit| grows over 20x its start and is still growing at the end; Adam",
)
def h395_clog_tap_ce_no_lse(ctx: Context) -> None:
    gen = seeded(39510)
    model = _MLP(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    peak = []

    def watch(step, out, x, y):
        peak.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 39510),
        200,
        _ce_without_lse,
        classifier=True,
        watch=watch,
    )
    ctx.check("largest |logit| over 20x its start", peak[-1] > 20 * peak[0])
    ctx.check(
        "still growing over the last 50 steps", _mean(peak[-10:]) > 1.2 * _mean(peak[-60:-50])
    )
    ctx.check("losses finite", _finite(ctx.losses))


# -- loss_divergence: a decoupled weight decay with its sign flipped --------------------------------


@scenario(
    "fumarole_silica_sinter_tanh_regressor",
    "AdamW",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a tanh regressor of fumarole silica-sinter growth; AdamW runs with weight_decay=0 "
    "and a shared training utility applies decoupled decay (wd 4.0) by hand as p *= (1 + lr * wd) for "
    "(1 - lr * wd): the weights grow over 2x, the loss climbs slowly to over 3x its lowest "
    "20-step mean with no jump over 2x between 10-step means, finite",
)
def h395_fumarole_decay_sign(ctx: Context) -> None:
    gen = seeded(39511)
    model = _TanhNet(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    wd = 4.0
    w0 = float(_params(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + opt.param_groups[0]["lr"] * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 39511), 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    tens = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    ctx.check("weights grew over 2x", float(_params(model).norm()) > 2 * w0)
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * min(means))
    ctx.check(
        "no jump over 2x between 10-step means",
        all(b < 2 * a for a, b in zip(tens[:-1], tens[1:], strict=True)),
    )
    ctx.check("losses finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    "glass_gaffer_jack_tool_fp16_huber_mlp",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="a SiLU Huber regressor of a gaffer's jack-tool neck diameter: fp16 autocast with a "
    "GradScaler, AdamW with a no-decay bias group under OneCycleLR, accumulation over 2, "
    "clipping at 1.0 (control)",
)
def h395_glass_gaffer_fp16_control(ctx: Context) -> None:
    gen = seeded(39512)
    model = _MLP(12, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 39512),
        steps,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("losses finite", _finite(ctx.losses))
    ctx.check("loss scale finite", _finite(ctx.scales))


class _PluckConv(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        z = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(z.mean(-1))


@scenario(
    "sanxian_snakeskin_pluck_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    (),
    None,
    heldout=True,
    note="a ReLU Conv1d classifier of sanxian pluck kinds from generated two-channel traces, "
    "10% noisy labels, label smoothing 0.1, SGD Nesterov with weight decay under "
    "ReduceLROnPlateau on a held-out batch, clipping at 1.0 (control)",
)
def h395_sanxian_conv1d_control(ctx: Context) -> None:
    gen = seeded(39513)
    model = _PluckConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_traces(torch.Generator().manual_seed(11), 256, 5, 39513))

    def plateau():
        with torch.no_grad():
            return float(F.cross_entropy(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 39513, flip=0.1),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("held-out loss under 1.0", plateau() < 1.0)
    ctx.check("losses finite", _finite(ctx.losses))
