"""Held-out set 179 (``h179_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a chinook snowmelt net with a running mean written as a
triangular matmul under fp16 autocast, a boomerang return-radius tanh MLP whose warm-up peaks
10x too high, a pickleball dink-depth regressor whose resume path skipped a manual loss
unscale, a djembe stroke classifier fed to F.nll_loss as raw logits, a shofar blast-sequence
transformer at a learning rate typed 100x, a bungee-cord Elman RNN with a unit-variance
recurrent init, a farrier shoe-size ReLU MLP fed raw millimetres (standardiser never applied), a
skydiving canopy Gaussian NLL regressor meeting an altimeter's -9999 sentinel, a table-tennis
spin-axis net normalising a zero vector, a trampoline spring-rate deep MLP with a layer-wise
learning-rate decay typed 0.1 for 0.9, and three controls (a carillon BatchNorm conv1d
classifier under fp16 autocast, a baseball pitch-type GRU with warm-up and cosine, a handball
throw-speed regressor with accumulation and ReduceLROnPlateau).

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
    backprop=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    after=None,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``backprop(step, loss)`` returns what is actually back-propagated (the logged loss is
    ``loss_fn(out, y)``), ``watch(step, out, x, y)`` records after the forward pass,
    ``after(step)`` after the optimizer step; ``accumulate`` micro-batches make a step. Stops
    after logging a NaN loss."""
    probe_batch = next(batches)

    def probe_loss(m, b):
        return loss_fn(m(b[0]), b[1])

    ctx.attach(model, opt, probe=(probe_loss, probe_batch), scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            if watch is not None:
                watch(step, out, x, y)
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
        if after is not None:
            after(step)
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


def _sensors(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    u = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        a = x @ w / math.sqrt(d_in)
        b = x @ v / math.sqrt(d_in)
        y = torch.tanh(a) + 0.5 * torch.sin(1.7 * b) + 0.3 * a * (x @ u / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings around two prototypes per class (a nonlinear boundary), overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(2 * classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        pick = y + classes * torch.randint(0, 2, (batch,), generator=gen)
        x = protos[pick] + spread * torch.randn(batch, d_in, generator=gen)
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=12) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- chinook: a running mean written as a triangular matmul, in float16 ----------------------------


class RunningMean(nn.Module):
    """Running mean over time written as (tril(ones) @ x) / count: one matmul for a cumsum."""

    def __init__(self, length):
        super().__init__()
        self.register_buffer("tri", torch.tril(torch.ones(length, length)))

    def forward(self, x):
        t = x.shape[1]
        total = self.tri[:t, :t] @ x
        self.last_max = float(total.detach().float().abs().max())
        count = torch.arange(1, t + 1, dtype=total.dtype)[:, None]
        return total / count


class ChinookNet(nn.Module):
    def __init__(self, length=336, hidden=32):
        super().__init__()
        self.running = RunningMean(length)
        self.register_buffer("unit", torch.tensor([1000.0, 10.0, 10.0]))
        self.fc1 = nn.Linear(6, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        feats = torch.cat([x, self.running(x)], -1) / self.unit.repeat(2)
        h = self.act2(self.fc2(self.act1(self.fc1(feats))))
        return self.head(h.mean(1)).squeeze(-1)


CHINOOK_LONG = 110


def _chinook_windows(gen, batch):
    """Hourly (shortwave W/m^2, air temperature C, wind m/s) windows before a chinook's melt
    reading; the label is the snowpack's melt (scaled). A length curriculum: 48-hour windows
    first, two-week (336-hour) windows from step 110 (the first batch drawn is the probe's)."""
    step = -1
    while True:
        hours = 48 if step < CHINOOK_LONG else 336
        t = torch.arange(hours).float()
        clear = 0.6 + 0.4 * torch.rand(batch, 1, generator=gen)
        sun = 950.0 * clear * torch.clamp(torch.sin(2 * math.pi * (t - 6) / 24), min=0.0)
        sun = sun * (0.85 + 0.15 * torch.rand(batch, hours, generator=gen))
        warm = -8.0 + 14.0 * torch.rand(batch, 1, generator=gen)
        temp = (
            warm
            + 4.0 * torch.sin(2 * math.pi * (t - 9) / 24)
            + torch.randn(batch, hours, generator=gen)
        )
        wind = 3.0 + 12.0 * torch.rand(batch, 1, generator=gen) + torch.rand(batch, hours)
        x = torch.stack([sun, temp, wind], -1)
        melt = 0.6 * (sun.mean(1) / 300.0) + 0.5 * torch.relu(temp).mean(1) * wind.mean(1) / 10
        step += 1
        yield x, melt - 1.0


@scenario(
    family="chinook_snowmelt_running_mean_fp16_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("running",),
    diverges=CHINOOK_LONG,
    heldout=True,
    onset=CHINOOK_LONG,
    note="A ReLU net predicting a chinook's snowmelt from hourly shortwave radiation (W/m^2), "
    "air temperature and wind, Adam at 1e-3, MSE, fp16 autocast with a torch.amp.GradScaler. "
    "A running mean of each channel is written as one matmul, tril(ones) @ x, divided by the "
    "count; under autocast the matmul runs in float16. A length curriculum feeds 48-hour "
    "windows first (radiation sums up to about 14000) and two-week windows from step 110: "
    "the running radiation sum passes 65504 after about ten sunny days and is inf, the loss is "
    "NaN at step 110. The same batch in float32 gives a finite loss.",
)
def h179_chinook_cumsum_matmul_fp16(ctx: Context) -> None:
    gen = seeded(17901)
    model = ChinookNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peaks = []
    seen = {}

    def watch(step, out, x, y):
        peaks.append(model.running.last_max)
        if step == CHINOOK_LONG:
            seen["x"], seen["y"] = x, y

    _loop(ctx, model, opt, _chinook_windows(gen, 32), 200, F.mse_loss, scaler=scaler, watch=watch)
    at = CHINOOK_LONG
    ctx.check("loss NaN or inf first at the two-week windows", _first_bad(ctx.losses) == at)
    ctx.check("running sum inf in float16 at that step", len(peaks) > at and peaks[at] == math.inf)
    ctx.check("running sums under 65504 before", max(peaks[:at]) < 65504)
    ctx.check("loss fell before the switch", _fell(ctx.losses[:at]))
    if "x" in seen:
        with torch.no_grad():
            full = F.mse_loss(model(seen["x"]), seen["y"])
        ctx.check("same batch finite in float32", math.isfinite(float(full)))
    else:
        ctx.check("same batch finite in float32", False)


# -- boomerang: a warm-up whose peak was typed 10x -------------------------------------------------


class BoomerangNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


BOOMERANG_PEAK = 1.5
BOOMERANG_WARM = 150
BOOMERANG_CROSS = 40


@scenario(
    family="boomerang_return_radius_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=BOOMERANG_CROSS,
    note="A tanh MLP (nn.Tanh modules) predicting a boomerang's return radius from 8 throw "
    "readings (launch speed, spin, layover, tilt, wind), plain SGD on batches of 256, MSE. "
    "A linear warm-up over 150 steps to a peak written 1.5 for 0.15: the learning rate "
    "crosses 2/sharpness (measured by power iteration every 5 steps) near step 40 and keeps "
    "rising; the run hovers at the edge of stability with an oscillating loss for about 50 "
    "steps, then blows up from step 90 (past 1e3 at step 95, inf at step 108).",
)
def h179_boomerang_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(17902)
    model = BoomerangNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _sensors(gen, 256, 8, seed=2)
    fixed = next(batches)
    edge = []

    def before(step):
        lr = BOOMERANG_PEAK * min(1.0, (step + 1) / BOOMERANG_WARM)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0:
            edge.append((step, lr * _sharpness(model, F.mse_loss, *fixed)))

    _loop(ctx, model, opt, batches, 220, F.mse_loss, before=before)
    ls = ctx.losses
    cross = next((s for s, v in edge if v > 2.0), None)
    ctx.check(
        "lr * sharpness under 2 for the first 30 steps", all(v < 2.0 for s, v in edge if s < 30)
    )
    ctx.check(
        "lr * sharpness crosses 2 within 10 steps of the onset",
        cross is not None and abs(cross - BOOMERANG_CROSS) <= 10,
    )
    ctx.check("loss fell before the crossing", _fell(ls[:BOOMERANG_CROSS]))
    bad = _first_bad(ls)
    top = max((v for v in ls if math.isfinite(v)), default=0.0)
    ctx.check(
        "loss blew up 100x its low or went non-finite", bad is not None or top > 100 * min(ls)
    )


# -- pickleball: a resume path that skipped a manual loss unscale, under Adam ----------------------

PICKLEBALL_SCALE = 2.0**16
PICKLEBALL_RESUME = 80
PICKLEBALL_LR = 3e-4
PICKLEBALL_STEPS = 240


class PickleballNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="pickleball_dink_depth_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=PICKLEBALL_RESUME,
    note="A SiLU MLP (nn.SiLU modules) predicting how deep a pickleball dink lands in the "
    "kitchen from 10 paddle-angle and swing readings, Adam at 3e-4, Huber loss. The code "
    "scales the loss by a static 2**16 (left from an fp16 experiment) and divides the "
    "gradients by 2**16 before optimizer.step(); at step 80 the job resumed from a checkpoint "
    "and the resume path stepped once before re-applying the unscale, so one step's gradients "
    "are 65536x. The update at that step is ordinary (Adam is scale-free), but exp_avg_sq now "
    "holds 1e-3 * (65536 g)^2, decaying by 0.999 a step: once the stale momentum has decayed "
    "(about 50 steps) every update is 100-200x smaller than an unbugged twin's and the loss, "
    "still falling at the resume, stays flat near 0.09 for the rest of the run (the twin "
    "reaches 0.045), finite.",
)
def h179_pickleball_resume_skipped_unscale(ctx: Context) -> None:
    def run(bug, ctx=None):
        gen = seeded(17903)
        model = PickleballNet()
        opt = torch.optim.Adam(model.parameters(), lr=PICKLEBALL_LR)
        batches = _sensors(gen, 64, 10, seed=3, noise=0.1)
        probe = next(batches)
        if ctx is not None:
            ctx.attach(model, opt, probe=(lambda m, b: F.huber_loss(m(b[0]), b[1]), probe))
        losses, vmax, moves = [], [], []
        for step in range(PICKLEBALL_STEPS):
            x, y = next(batches)
            was = torch.cat([p.detach().flatten() for p in model.parameters()])
            loss = F.huber_loss(model(x), y)
            (loss * PICKLEBALL_SCALE).backward()
            if not (bug and step == PICKLEBALL_RESUME):
                for p in model.parameters():
                    p.grad /= PICKLEBALL_SCALE
            if ctx is not None:
                ctx.grad_norms.append(grad_norm(model))
            opt.step()
            if ctx is not None:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            vmax.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.parameters()))
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            moves.append(float((now - was).norm() / was.norm()))
        return losses, vmax, moves

    ls, vmax, moves = run(True, ctx)
    twin, _, twin_moves = run(False)
    at = PICKLEBALL_RESUME
    ctx.check("second moment jumped 1e6x at the resume step", vmax[at] > 1e6 * vmax[at - 1])
    ctx.check(
        "relative updates 100x smaller than the twin's over the last 100 steps",
        _median(moves[-100:]) < 1e-2 * _median(twin_moves[-100:]),
    )
    ctx.check("loss falling before the resume", _mean(ls[at - 10 : at]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "loss fell under 20% after the resume",
        _mean(ls[-20:]) > 0.8 * _mean(ls[at + 1 : at + 21]),
    )
    ctx.check(
        "a twin run without the bug ends 25% lower", _mean(twin[-20:]) < 0.75 * _mean(ls[-20:])
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- djembe: F.nll_loss on raw logits --------------------------------------------------------------


class DjembeNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="djembe_stroke_type_gelu_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) naming a djembe stroke (bass, tone, slap) from 16 "
    "contact-microphone band energies, RMSprop at 1e-3. The model returns raw logits but the "
    "loss is F.nll_loss(logits, y), which expects log-probabilities: the objective is minus "
    "the target logit, unbounded below. The head's target logits climb without bound (the "
    "logged loss goes ever more negative): the largest |logit| grows from about 1 to over 4000 "
    "in 200 steps and the loss reaches -2000, finite.",
)
def h179_djembe_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(17904)
    model = DjembeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scale = []
    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 3, seed=4),
        200,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: scale.append(float(o.detach().abs().max())),
    )
    ls = ctx.losses
    ctx.check("largest |logit| grew 20x", _mean(scale[-10:]) > 20 * _mean(scale[:5]))
    ctx.check("logged loss below -10 at the end", _mean(ls[-10:]) < -10)
    ctx.check("still falling over the last 50 steps", _mean(ls[-10:]) < _mean(ls[-50:-40]) - 1)
    ctx.check("loss finite throughout", _finite(ls))


# -- shofar: a transformer's learning rate typed 100x ----------------------------------------------


class ShofarAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, t, h, d // h).transpose(1, 2) for f in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        self.last_max = float(logits.detach().masked_fill(mask, 0.0).abs().max())
        att = torch.softmax(logits.masked_fill(mask, float("-inf")), -1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class ShofarBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = ShofarAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ShofarLM(nn.Module):
    """Token and position embeddings, pre-LN blocks, a head tied to the token embedding."""

    def __init__(self, vocab=12, dim=32, heads=2, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(ShofarBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _shofar_calls(gen, batch, length=32, vocab=12):
    """Blast calls: a caller's random phrase of 4-7 blasts (tekiah, shevarim, teruah, ...,
    with a separator) repeated by the blower; next-blast prediction."""
    while True:
        rows = []
        for _ in range(batch):
            n = int(torch.randint(4, 8, (1,), generator=gen))
            phrase = torch.randint(1, vocab, (n,), generator=gen)
            seq = torch.cat([phrase, torch.zeros(1, dtype=torch.long)])
            rows.append(seq.repeat(length // len(seq) + 2)[: length + 1])
        win = torch.stack(rows)
        yield win[:, :-1], win[:, 1:]


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="shofar_blast_call_tied_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written 2-block pre-LN transformer (scores q.k/sqrt(d) in its own attention "
    "module, head tied to the token embedding) predicting the next blast of a shofar call "
    "that repeats the caller's phrase, AdamW with no weight decay, cross-entropy. The "
    "learning rate was typed 3e-2 for 3e-4 and there is no warm-up and no QK-norm: the "
    "query/key weights grow and each block's largest attention logit climbs from 0.1 to "
    "400-850 over 200 steps, still rising, while the loss stalls near 2.3 (a twin at 3e-4 "
    "keeps its logits under 7 and reaches 2.0), finite.",
)
def h179_shofar_lr_typo_attention_growth(ctx: Context) -> None:
    def run(lr, ctx=None):
        gen = seeded(17905)
        model = ShofarLM()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        per = []
        batches = _shofar_calls(gen, 16)

        def watch(step, out, x, y):
            per.append([b.attn.last_max for b in model.blocks])

        if ctx is not None:
            _loop(ctx, model, opt, batches, SHOFAR_STEPS, _lm_loss, watch=watch)
            return per
        next(batches)
        for _ in range(SHOFAR_STEPS):
            x, y = next(batches)
            loss = _lm_loss(model(x), y)
            watch(0, None, x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return per

    per = run(SHOFAR_LR, ctx)
    twin = run(SHOFAR_INTENDED)
    last = [_mean([p[i] for p in per[-10:]]) for i in range(2)]
    mid = [_mean([p[i] for p in per[90:100]]) for i in range(2)]
    ctx.check("both blocks' largest attention logit above 100 at the end", min(last) > 100)
    ctx.check(
        "both still growing: 1.5x over the last 100 steps",
        all(a > 1.5 * b for a, b in zip(last, mid, strict=True)),
    )
    ctx.check(
        "a twin at the intended 3e-4 stays under 10",
        max(max(p) for p in twin) < 10,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


SHOFAR_LR = 3e-2
SHOFAR_INTENDED = 3e-4
SHOFAR_STEPS = 200


# -- bungee: an Elman RNN whose recurrent init forgot the 1/sqrt(hidden) ---------------------------


class BungeeRNN(nn.Module):
    """A hand-written Elman cell over a drop's tension trace, a head on the last state."""

    def __init__(self, d_in=3, hidden=48):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.rec.weight, std=BUNGEE_STD)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


BUNGEE_STD = 1.0


def _bungee_traces(gen, batch, steps=40):
    """Cord tension, jumper acceleration and height over the first 40 samples of a drop
    (standardised); the label: does the cord stretch past its rated length?"""
    t = torch.linspace(0, 1, steps)
    while True:
        mass = torch.rand(batch, 1, generator=gen)
        stiff = torch.rand(batch, 1, generator=gen)
        tension = torch.relu(t - 0.3 + 0.2 * stiff) * (1 + mass) * 3 - 1
        accel = torch.sin(6 * t * (1 + stiff)) * (0.5 + mass)
        height = 1 - t**2 * (1 + 0.5 * mass)
        x = torch.stack([tension, accel, height], -1) + 0.1 * torch.randn(
            batch, steps, 3, generator=gen
        )
        y = ((mass[:, 0] - 0.6 * stiff[:, 0]) > 0.2).float()
        yield x, y


@scenario(
    family="bungee_cord_overstretch_elman_rnn",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (tanh cell: inp, rec Linear layers) reading 40 samples of a "
    "bungee drop's cord tension, acceleration and height and predicting whether the cord "
    "stretches past its rated length, SGD Nesterov momentum 0.9 at 1e-3, BCE with logits, "
    "clip_grad_norm_(1.0) as usual for RNNs. The recurrent weights were initialised "
    "nn.init.normal_(std=1.0), the 1/sqrt(hidden) left out (spectral radius about 7): the "
    "gradient grows backward through time, the first state's gradient about 1e10x the last "
    "state's, the pre-clip gradient norm is 1e9 to 1e10 at every step; clipping keeps the "
    "weights finite but the loss never falls (about 0.75 throughout), finite.",
)
def h179_bungee_recurrent_init_std(ctx: Context) -> None:
    gen = seeded(17906)
    model = BungeeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratios = []
    batches = _bungee_traces(gen, 64)
    probe = next(batches)
    ctx.attach(
        model,
        opt,
        probe=(lambda m, b: F.binary_cross_entropy_with_logits(m(b[0]), b[1]), probe),
    )
    for _ in range(150):
        x, y = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ctx.check("first state's gradient 1e4x the last's at the start", _median(ratios[:10]) > 1e4)
    ctx.check("still 1e4x over the last 20 steps", _median(ratios[-20:]) > 1e4)
    ctx.check("pre-clip gradient norm above 1e4 (median)", _median(ctx.grad_norms) > 1e4)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- farrier: a standardiser fitted but never applied kills the ReLUs ------------------------------


class FarrierNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def features(self, x):
        h1 = self.act1(self.fc1(x))
        return h1, self.act2(self.fc2(h1))

    def forward(self, x):
        return self.head(self.features(x)[1])


FARRIER_LR = 0.1


def _hooves(gen, batch, raw, seed=7):
    """Twelve hoof measurements in millimetres (40-140 mm means, 5-15 mm spreads) and the
    shoe size (8 classes); ``raw=False`` applies the fitted standardiser."""
    g = torch.Generator().manual_seed(seed + 100)
    mu = 40 + 100 * torch.rand(12, generator=g)
    sd = 5 + 10 * torch.rand(12, generator=g)
    for x, y in _classes(gen, batch, 12, 8, seed=seed):
        yield (mu + sd * x, y) if raw else (x, y)


@scenario(
    family="farrier_shoe_size_relu_mlp",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) choosing a horseshoe size (8 classes) from 12 hoof "
    "measurements, Adagrad at 0.1, cross-entropy. The pipeline fits a standardiser but never "
    "applies it, so the inputs are raw millimetres (40-140, all positive): the first "
    "updates, large and of one sign across the batch, push most first-layer units negative "
    "for every hoof; over 85% of them never fire again and the loss stalls near 1.7, where "
    "the same model on standardised inputs reaches about 0.4, finite.",
)
def h179_farrier_unscaled_millimetres(ctx: Context) -> None:
    def run(raw, ctx=None):
        gen = seeded(17907)
        model = FarrierNet()
        opt = torch.optim.Adagrad(model.parameters(), lr=FARRIER_LR)
        dead = []
        batches = _hooves(gen, 128, raw)

        def watch(step, out, x, y):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(x)[0]))

        x0, _ = next(_hooves(seeded(17907), 128, raw))
        with torch.no_grad():
            at_init = dead_fraction(model.features(x0)[0])
        if ctx is None:
            losses = []
            for _ in range(200):
                x, y = next(batches)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            return losses, dead, at_init
        _loop(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, watch=watch)
        return ctx.losses, dead, at_init

    ls, dead, at_init = run(True, ctx)
    twin, _, _ = run(False)
    ctx.check("first layer under 50% dead at init", at_init < 0.5)
    ctx.check("first layer over 85% dead over the last 20 steps", _mean(dead[-20:]) > 0.85)
    ctx.check(
        "a twin on standardised inputs ends 40% lower", _mean(twin[-20:]) < 0.6 * _mean(ls[-20:])
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- skydiving: an altimeter's -9999 sentinel in one batch -----------------------------------------


class CanopyNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-3], -1)


def _canopy_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


SKYDIVE_SENTINEL = 150
SKYDIVE_ROWS = 12
SKYDIVE_CLIP = 5.0
SKYDIVE_ALT_MEAN, SKYDIVE_ALT_STD = 1200.0, 350.0


def _canopy_logs(gen, batch):
    """Nine canopy readings (altitude m, airspeed, wing loading, toggle, ...) standardised
    with the training set's statistics; the label is the descent rate (scaled). In the
    batch of step 150 the altimeter lost its fix and logged its -9999 sentinel for 12 rows
    (the first batch drawn is the probe's)."""
    inner = _sensors(gen, batch, 9, seed=8, noise=0.15)
    step = -1
    for x, y in inner:
        if step == SKYDIVE_SENTINEL:
            x = x.clone()
            x[:SKYDIVE_ROWS, 0] = (-9999.0 - SKYDIVE_ALT_MEAN) / SKYDIVE_ALT_STD
        step += 1
        yield x, y


@scenario(
    family="skydiving_canopy_descent_nll_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SKYDIVE_SENTINEL,
    note="A ReLU MLP (nn.ReLU modules) with mean and variance heads (Gaussian NLL) predicting "
    "a canopy's descent rate from nine logged readings standardised with the training "
    "statistics, SGD momentum 0.9 at 5e-3, clip_grad_norm_(5.0). In one batch (step 150) the "
    "altimeter had lost its GPS fix and logged its -9999 sentinel for 12 rows, which nobody "
    "filtered: standardised, the altitude is -32 sigma. The loss (about 1000 against -0.45) "
    "and the pre-clip gradient norm (2e4 against about 1) spike at that step; clipped, the "
    "run recovers within a few steps, finite.",
)
def h179_skydiving_altimeter_sentinel(ctx: Context) -> None:
    gen = seeded(17908)
    model = CanopyNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    inputs = []
    _loop(
        ctx,
        model,
        opt,
        _canopy_logs(gen, 64),
        300,
        _canopy_nll,
        clip=SKYDIVE_CLIP,
        watch=lambda s, o, x, y: inputs.append(float(x.abs().max())),
    )
    at = SKYDIVE_SENTINEL
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("input 5x the largest other reading at the onset", inputs[at] > 5 * max(inputs[:at]))
    ctx.check("gradient norm 30x the median at the onset", gn[at] > 30 * _median(gn[:at]))
    ctx.check(
        "loss 100 above the preceding 10 steps at the onset", ls[at] > _mean(ls[at - 10 : at]) + 100
    )
    ctx.check(
        "recovered: steps 10-30 after the onset within 0.3 of the level before",
        _mean(ls[at + 10 : at + 30]) < _mean(ls[at - 20 : at]) + 0.3,
    )
    ctx.check("loss fell before the onset", _mean(ls[at - 10 : at]) < _mean(ls[:10]) - 0.3)
    ctx.check("loss finite throughout", _finite(ls))


# -- table tennis: a spin axis normalised by hand, and a knuckle serve -----------------------------


class SpinAxis(nn.Module):
    """The spin vector's unit axis, written s / |s| by hand."""

    def forward(self, s):
        return s / s.norm(dim=-1, keepdim=True)


class SpinNet(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.axis = SpinAxis()
        self.fc1 = nn.Linear(3 + 1 + 4, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        spin, rest = x[:, :3], x[:, 3:]
        rate = torch.log1p(spin.norm(dim=-1, keepdim=True))
        feats = torch.cat([self.axis(spin), rate, rest], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(feats)))))


TT_KNUCKLE = 130


def _serves(gen, batch):
    """A serve's spin vector (rev/s, tracked from the logo), speed, height, contact point and
    angle; the label: the bounce's sideways and forward kick (scaled). From step 130 the
    loader reaches a defender's serves, some of them knuckle serves with no spin at all (the
    tracker writes exact zeros; the first batch drawn is the probe's)."""
    step = -1
    while True:
        axis = F.normalize(torch.randn(batch, 3, generator=gen), dim=-1)
        rate = 5 + 45 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 4, generator=gen)
        if step >= TT_KNUCKLE:
            rate = torch.where(torch.rand(batch, 1, generator=gen) < 0.1, 0.0, rate)
        spin = axis * rate
        kick = torch.stack(
            [
                axis[:, 2] * rate[:, 0] / 25 + 0.3 * rest[:, 0],
                -axis[:, 1] * rate[:, 0] / 25 + 0.5 * rest[:, 1] * rest[:, 2],
            ],
            -1,
        )
        step += 1
        yield torch.cat([spin, rest], -1), kick + 0.05 * torch.randn(batch, 2, generator=gen)


@scenario(
    family="table_tennis_spin_axis_kick_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("axis",),
    diverges=TT_KNUCKLE,
    heldout=True,
    onset=TT_KNUCKLE,
    note="A SiLU net (nn.SiLU modules) predicting a table-tennis serve's bounce kick from its "
    "tracked spin vector and four serve readings, NAdam at 2e-3, MSE. The spin axis is "
    "computed by a hand-written module as s / s.norm() with no epsilon. From step 130 the "
    "loader reaches a defender's serves, some of them knuckle serves whose spin vector is "
    "exactly zero: 0/0 gives NaN and the loss is NaN at step 130.",
)
def h179_table_tennis_knuckle_zero_spin(ctx: Context) -> None:
    gen = seeded(17909)
    model = SpinNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    zero_rows = []
    _loop(
        ctx,
        model,
        opt,
        _serves(gen, 64),
        200,
        F.mse_loss,
        watch=lambda s, o, x, y: zero_rows.append(int((x[:, :3].norm(dim=-1) == 0).sum())),
    )
    at = TT_KNUCKLE
    ctx.check("loss NaN first at the knuckle serves' step", _first_bad(ctx.losses) == at)
    ctx.check("a zero spin vector in that batch", len(zero_rows) > at and zero_rows[at] > 0)
    ctx.check("no zero spin vector before", sum(zero_rows[:at]) == 0)
    ctx.check("loss fell before", _fell(ctx.losses[:at]))


# -- trampoline: a layer-wise learning-rate decay typed 0.1 for 0.9 --------------------------------


class TrampolineNet(nn.Module):
    def __init__(self, d_in=14, width=64, depth=7):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.blocks = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin, norm in zip(self.blocks, self.norms, strict=True):
            x = F.silu(norm(lin(x)))
        return self.head(x).squeeze(-1)


TRAMPOLINE_DECAY = 0.1


@scenario(
    family="trampoline_bed_spring_rate_llrd_mlp",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"),
    diverges=None,
    heldout=True,
    note="A 7-block SiLU MLP with LayerNorm predicting a trampoline bed's spring rate from 14 "
    "frame and mat readings, AdamW at 1e-3 with layer-wise learning-rate decay: one param "
    "group per block with lr = 1e-3 * decay**(depth - i). The decay was typed 0.1 for 0.9, "
    "so blocks.0-4 run at 1e-10 to 1e-6 (700x to 5e6x below the intended rates): their "
    "updates are 1e-11 to 6e-6 of their weights per step (the top block's and head's 5e-4 "
    "to 4e-3) and they are frozen in effect; the head and top blocks learn and the loss "
    "falls, finite.",
)
def h179_trampoline_llrd_decay_typo(ctx: Context) -> None:
    gen = seeded(17910)
    model = TrampolineNet()
    depth = len(model.blocks)
    groups = [
        {
            "params": list(model.blocks[i].parameters()) + list(model.norms[i].parameters()),
            "lr": 1e-3 * TRAMPOLINE_DECAY ** (depth - i),
        }
        for i in range(depth)
    ]
    groups.append({"params": list(model.head.parameters()), "lr": 1e-3})
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-2)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    ratios = {}
    prev = {}

    def before(step):
        for n, p in model.named_parameters():
            if n.endswith("weight"):
                prev[n] = p.detach().clone()

    def after(step):
        for n, p in model.named_parameters():
            if n in prev and not n.startswith("norms"):
                r = float((p.detach() - prev[n]).norm() / prev[n].norm())
                ratios.setdefault(n, []).append(r)

    _loop(
        ctx, model, opt, _sensors(gen, 64, 14, seed=10), 200, F.mse_loss, before=before, after=after
    )
    low = max(_median(ratios[f"blocks.{i}.weight"]) for i in range(5))
    top = _median(ratios["blocks.6.weight"] + ratios["head.weight"])
    now = dict(model.named_parameters())
    moved = max(
        float((now[n].detach() - start[n]).norm() / start[n].norm())
        for n in (f"blocks.{i}.weight" for i in range(5))
    )
    ctx.check("blocks.0-4 updates under 1e-5 of their weights", low < 1e-5)
    ctx.check("top block and head updates over 1e-4", top > 1e-4)
    ctx.check("blocks.0-4 moved under 2e-3 over the run", moved < 2e-3)
    ctx.check("loss fell", _fell(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


class CarillonNet(nn.Module):
    """Conv1d + BatchNorm1d + ReLU twice, average pooling, a linear head."""

    def __init__(self, channels=16, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 7, padding=3)
        self.bn1 = nn.BatchNorm1d(channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, 2 * channels, 5, padding=2, stride=2)
        self.bn2 = nn.BatchNorm1d(2 * channels)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x[:, None])))
        h = self.act2(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _bell_strikes(gen, batch, length=96, classes=6):
    """A carillon bell's strike: its hum, prime, tierce and nominal partials with random
    phases and decay, plus room noise; which of six bells?"""
    ratios = torch.tensor([0.5, 1.0, 1.2, 1.5, 2.0])
    base = torch.linspace(0.03, 0.2, classes)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = (
            base[y][:, None, None]
            * ratios[None, :, None]
            * (1 + 0.02 * torch.randn(batch, 1, 1, generator=gen))
        )
        ph = 2 * math.pi * torch.rand(batch, 5, 1, generator=gen)
        amp = torch.rand(batch, 5, 1, generator=gen)
        decay = torch.exp(-t / (40 + 40 * torch.rand(batch, 1, 1, generator=gen)))
        x = (amp * torch.sin(2 * math.pi * f * t + ph) * decay).sum(1)
        yield x + 0.15 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="carillon_bell_partial_bn_conv1d",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A Conv1d + BatchNorm1d classifier naming which of six carillon bells was struck "
    "from 96 samples of the strike (partials with random phase and decay, room noise), fp16 "
    "autocast with a torch.amp.GradScaler, AdamW with OneCycleLR (max 1e-2), clip_grad_norm_ "
    "(1.0) after unscale_, cross-entropy: an ordinary mixed-precision run.",
)
def h179_carillon_bn_conv_fp16_control(ctx: Context) -> None:
    gen = seeded(17911)
    model = CarillonNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.detach().argmax(-1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _bell_strikes(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        watch=watch,
    )
    ctx.check("loss fell 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over 60% at the end (chance 17%)", _mean(acc[-20:]) > 0.6)
    ctx.check("loss scale never under 1", min(ctx.scales) >= 1.0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


class PitchGRU(nn.Module):
    def __init__(self, d_in=6, hidden=48, classes=5):
        super().__init__()
        self.rnn = nn.GRU(d_in, hidden, batch_first=True)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1]))


def _pitch_tracks(gen, batch, steps=20, classes=5):
    """Twenty radar samples of a pitch (speed, spin rate, spin axis, vertical and horizontal
    break, release height, noisy); which of five pitch types? Labels are 5% wrong."""
    g = torch.Generator().manual_seed(12)
    start = torch.randn(classes, 6, generator=g)
    drift = 0.1 * torch.randn(classes, 6, generator=g)
    t = torch.arange(steps).float()[None, :, None]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = (
            start[y][:, None]
            + drift[y][:, None] * t
            + 0.8 * torch.randn(batch, steps, 6, generator=gen)
        )
        flip = torch.rand(batch, generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="baseball_pitch_type_gru_classifier",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A GRU classifier naming a baseball pitch type from 20 noisy radar samples (5% of "
    "labels wrong), RAdam at 3e-3 with 20 steps of linear warm-up then cosine decay "
    "(SequentialLR), clip_grad_norm_(1.0), dropout, cross-entropy with label smoothing 0.1: "
    "an ordinary run.",
)
def h179_baseball_gru_warmup_cosine_control(ctx: Context) -> None:
    gen = seeded(17912)
    model = PitchGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - 20),
        ],
        milestones=[20],
    )
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.detach().argmax(-1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _pitch_tracks(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        watch=watch,
    )
    ctx.check("loss fell 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over 70% at the end (chance 20%)", _mean(acc[-20:]) > 0.7)
    ctx.check("loss finite throughout", _finite(ctx.losses))


class HandballNet(nn.Module):
    def __init__(self, d_in=11, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _throws(gen, batch):
    """Eleven standardised motion-capture readings of a handball jump shot and its ball speed
    (scaled); 3% of the speed labels are radar glitches (off by 2-4 units)."""
    for x, y in _sensors(gen, batch, 11, seed=13, noise=0.1):
        glitch = torch.rand(batch, generator=gen) < 0.03
        y = torch.where(glitch, y + 2 + 2 * torch.rand(batch, generator=gen), y)
        yield x, y


@scenario(
    family="handball_jump_shot_speed_regressor",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) regressing a handball jump shot's ball speed from 11 "
    "motion-capture readings, 3% of labels radar glitches, Adamax at 4e-3, Huber loss, "
    "gradient accumulation over 4 micro-batches of 32, ReduceLROnPlateau (factor 0.5, "
    "patience 10): an ordinary run.",
)
def h179_handball_accumulated_plateau_control(ctx: Context) -> None:
    gen = seeded(17913)
    model = HandballNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(ctx, model, opt, _throws(gen, 32), 150, F.huber_loss, accumulate=4, sched=sched)
    ctx.check("loss fell 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))
