"""Held-out set 235 (``h235_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kumihimo braid-pattern classifier whose per-epoch
temperature annealing is stepped every batch, a marine-chronometer rate regressor whose manual
loss scale is left undivided on the resume step under Adam, a langeleik string-tension regressor
whose body warm-up lambda uses floor division, a tongue-drum note classifier with a hand-written
frame norm missing its eps, a dunun bell-pattern causal decoder whose attention scale is
sqrt(d) for 1/sqrt(d), a tent-pegging lance-strike ReLU RNN with an over-gained recurrent init, a
roll-cloud gust regressor fed one anemometer shard in cm/s, an equestrian-vaulting score
regressor whose shared loss module is left at sum reduction for one step, a netsuke
carving-hours regressor adding its log prior instead of subtracting it, a horn-comb tooth-defect
classifier whose OneCycleLR max_lr was typed 0.3, and three controls (a domra tremolo conv1d
classifier under AdamW with a long warm-up, a decoupage varnish-cure regressor under fp16
autocast with a GradScaler and OneCycleLR, a tenugui dye-bleed Gaussian-NLL regressor with
accumulation, clipping and ReduceLROnPlateau).

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


def _fit(
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
    total=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    unscale=None,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``total(step, loss)`` returns what is
    backpropagated, ``unscale(step)`` runs between backward and the optimizer step,
    ``after(step)`` runs after it; stops after logging a NaN."""
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
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            back = loss / accumulate
            if total is not None:
                back = total(step, back)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
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
        s = math.sqrt(d_in)
        y = torch.tanh(x @ w / s) + 0.5 * torch.sin(1.7 * x @ v / s) + 0.3 * (x[:, 0] * x[:, 1])
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.8):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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


# -- kumihimo: a per-epoch temperature annealing stepped every batch ------------------------------


class BraidNet(Stack):
    """Classifies the braid pattern on a marudai from 16 readings; logits divided by ``tau``."""

    def __init__(self):
        super().__init__(16, hidden=64, out=6)
        self.tau = 1.0

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    family="kumihimo_marudai_braid_pattern_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of six kumihimo braid patterns (kongo, yatsu, edo, ...) a marudai is making from 16 standardised readings of bobbin positions and cord tension, Adagrad at 0.02, cross-entropy on head(h) / tau. The recipe anneals the softmax temperature by 0.96 per epoch; the hook was registered on the batch loop, so tau = 0.96**step falls to about 1e-3 by step 160 with no floor. The head's own outputs stay moderate, but divided by tau the logits reach thousands: the float32 softmax gives the target exactly 1.0 for most rows (a saturated, collapsed softmax), the gradient vanishes on them, while the few misclassified rows get losses in the hundreds and the batch loss turns spiky; finite.",
)
def h235_kumihimo_temperature_per_batch(ctx: Context) -> None:
    gen = seeded(23501)
    steps = 160
    model = BraidNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    seen = {"collapsed": [], "raw": []}

    def before(step):
        model.tau = 0.96**step  # meant per epoch, called per batch

    def watch(step, out, x, y):
        with torch.no_grad():
            seen["collapsed"].append(collapsed_fraction(out.float(), y))
            seen["raw"].append(float((out * model.tau).abs().max()))

    _fit(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=1, noise=1.0),
        steps,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ls, col = ctx.losses, seen["collapsed"]
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("softmax not collapsed early (<5% rows at 1.0 over steps 0-20)", max(col[:20]) < 0.05)
    ctx.check(
        "softmax collapsed late (>50% rows exactly 1.0, last 20 steps)", _mean(col[-20:]) > 0.5
    )
    ctx.check("temperature fell below 0.01", model.tau < 0.01)
    ctx.check("head's own outputs stay moderate (max |z*tau| < 50)", max(seen["raw"]) < 50)


# -- marine chronometer: a manual loss scale left undivided on the resume step --------------------


def _chronometer(gen, batch, seed=2):
    """Eight standardised readings of a marine chronometer on its rating (temperature, days since
    winding, mainspring torque, humidity, ...) and its daily rate, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="marine_chronometer_daily_rate_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a marine chronometer's daily rate from 8 standardised rating readings (temperature, days since winding, mainspring torque, ...), Adam at 1e-3 (betas 0.9, 0.999), MSE. The loop multiplies the loss by a static 2**16 (a leftover of manual fp16 training) and divides the gradients by it before the step; the resume path at step 60 skips the division once, so that step's gradient is 65536x the usual. Adam's own step stays bounded (the momentum carries the weights a little off, the loss rises a bit), but the squared gradient fills exp_avg_sq, which then decays by only 0.999 a step: from about 40 steps after the onset the updates are over 20x smaller than before it, and the loss stalls above its pre-onset level while a bug-free twin keeps falling; finite.",
)
def h235_chronometer_unscale_skipped_adam(ctx: Context) -> None:
    onset, steps, scale = 60, 220, 2.0**16

    def run(c, bug):
        gen = seeded(23502)
        model = Stack(8, hidden=64, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        seen = {"upd": [], "v": []}
        prev = {}

        def before(step):
            prev["w"] = [p.detach().clone() for p in model.parameters()]

        def total(step, loss):
            return loss * scale  # static loss scale, a leftover of manual fp16 training

        def unscale(step):
            if bug and step == onset:
                return  # the resume path skips the division once
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)

        def after(step):
            pairs = zip(model.parameters(), prev["w"], strict=True)
            seen["upd"].append(
                math.sqrt(sum(float(((p.detach() - w) ** 2).sum()) for p, w in pairs))
            )
            seen["v"].append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

        _fit(
            c,
            model,
            opt,
            _chronometer(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            total=total,
            unscale=unscale,
            after=after,
        )
        return seen

    seen = run(ctx, True)
    grads = ctx.grad_norms
    twin = _Twin()
    run(twin, False)
    ls, tw, upd = ctx.losses, twin.losses, seen["upd"]
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.6))
    ctx.check(
        "gradient at the onset over 1000x the median before",
        grads[onset] > 1000 * _median(grads[10:onset]),
    )
    ctx.check(
        "exp_avg_sq max jumps over 1e6x at the onset",
        seen["v"][onset] > 1e6 * seen["v"][onset - 1],
    )
    ctx.check(
        "updates over steps onset+40 to onset+140 over 20x smaller than over steps 20-60",
        _mean(upd[onset + 40 : onset + 140]) < _mean(upd[20:onset]) / 20,
    )
    ctx.check(
        "loss stalls: last 20 steps over 1.5x the bug-free twin's",
        _mean(ls[-20:]) > 1.5 * _mean(tw[-20:]),
    )


# -- langeleik: a warm-up lambda with floor division freezes the body ------------------------------


class TensionNet(nn.Module):
    def __init__(self, d_in=10, hidden=16):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


def _langeleik(gen, batch, seed=3):
    """Ten standardised readings of a langeleik's drone string (gauge, scale length, fret height,
    humidity, ...) and its tension at pitch, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="langeleik_drone_string_tension_tanh_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a langeleik drone string's tension from 10 standardised readings, RMSprop at 1e-3 with two param groups (body: fc1, fc2; head) and a LambdaLR whose body lambda is a linear warm-up over 500 steps written min(1, step // 500): floor division gives 0 for the whole 220-step run, so fc1 and fc2 get a learning rate of exactly 0 and never move (relative update 0) while the head moves every step. The loss falls a little, through the head on random features, and ends well above (over 1.5x) a twin with step / 500; finite.",
)
def h235_langeleik_warmup_floor_division(ctx: Context) -> None:
    steps = 220

    def run(c, bug):
        gen = seeded(23503)
        model = TensionNet()
        opt = torch.optim.RMSprop(
            [
                {"params": [*model.fc1.parameters(), *model.fc2.parameters()]},
                {"params": model.head.parameters()},
            ],
            lr=1e-3,
        )
        body = (lambda s: min(1.0, s // 500)) if bug else (lambda s: min(1.0, s / 500))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [body, lambda s: 1.0])
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        _fit(c, model, opt, _langeleik(gen, 64), steps, F.mse_loss, sched=sched)
        moved = {
            n: float((p.detach() - start[n]).norm() / start[n].norm())
            for n, p in model.named_parameters()
        }
        return moved

    moved = run(ctx, True)
    twin = _Twin()
    run(twin, False)
    ls, tw = ctx.losses, twin.losses
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check(
        "fc1 and fc2 weights never moved", moved["fc1.weight"] == 0 and moved["fc2.weight"] == 0
    )
    ctx.check("the head moved over 5% of its weights", moved["head.weight"] > 0.05)
    ctx.check("loss fell a little (through the head)", _fell(ls, k=20, ratio=0.95))
    ctx.check("ends over 1.5x the twin's loss", _mean(ls[-20:]) > 1.5 * _mean(tw[-20:]))


# -- tongue drum: a hand-written frame norm without eps meets silent frames ------------------------


class FrameNorm(nn.Module):
    """Per-frame standardisation written by hand (no eps)."""

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True, unbiased=False)


class TongueDrumNet(nn.Module):
    def __init__(self, bins=32, hidden=64, notes=8):
        super().__init__()
        self.frame_norm = FrameNorm()
        self.fc1 = nn.Linear(bins, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, notes)

    def forward(self, x):
        h = F.relu(self.fc1(self.frame_norm(x)))
        return self.head(F.relu(self.fc2(h)))


def _tongue_drum(gen, batch, silent_from=None):
    """32-bin magnitude spectra of steel tongue-drum strikes: each of eight notes has its
    fundamental and two partials at its own bins, with a random strike strength and a noise floor.
    From ``silent_from`` on, the shard comes from a recorder that writes gated (digitally silent,
    all-zero) frames between strikes; a few of them land in each batch."""
    bins = torch.arange(32.0)
    step = 0
    while True:
        y = torch.randint(0, 8, (batch,), generator=gen)
        f0 = 2.0 + 1.5 * y.float()
        spec = torch.zeros(batch, 32)
        for k, amp in ((1.0, 1.0), (2.0, 0.5), (3.0, 0.25)):
            spec += amp * torch.exp(-((bins - k * f0[:, None]) ** 2) / 1.5)
        spec = spec * (0.5 + torch.rand(batch, 1, generator=gen))
        spec = spec + 0.3 * torch.rand(batch, 32, generator=gen)
        if silent_from is not None and step >= silent_from:
            spec[:3] = 0.0
        step += 1
        yield spec, y


@scenario(
    family="steel_tongue_drum_note_relu_classifier",
    optimizer="AdamW",
    cause="nonfinite",
    where=("frame_norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A ReLU MLP (frame_norm, fc1, fc2, head) classifying which of eight notes a steel tongue drum sounds from a 32-bin magnitude spectrum, AdamW at 3e-3, cross-entropy with label smoothing 0.05. frame_norm is a hand-written per-frame standardisation (x - mean) / std with no eps. From step 90 the batches come from a recorder that gates silence to digital zero, so some frames are all zeros: their std is exactly 0 and frame_norm computes 0/0 = NaN, the logits and the loss are NaN at step 90. The same frames through the norm with an eps of 1e-5 are finite.",
)
def h235_tongue_drum_frame_norm_no_eps(ctx: Context) -> None:
    gen = seeded(23504)
    onset = 90
    model = TongueDrumNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    seen = {}

    def watch(step, out, x, y):
        if step == onset:
            with torch.no_grad():
                std = x.std(-1, unbiased=False)
                seen["zero_std"] = int((std == 0).sum())
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["norm_finite"] = bool(torch.isfinite(model.frame_norm(x)).all())
                fixed = (x - x.mean(-1, keepdim=True)) / (std[:, None] + 1e-5)
                seen["fixed_finite"] = bool(torch.isfinite(fixed).all())

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    _fit(
        ctx,
        model,
        opt,
        _tongue_drum(gen, 64, silent_from=onset),
        140,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite and falling before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("first non-finite loss at the onset", _first_bad(ls) == onset)
    ctx.check("the run stops on the NaN loss", len(ls) == onset + 1 and math.isnan(ls[-1]))
    ctx.check("all-zero frames (std exactly 0) at the onset", seen.get("zero_std", 0) > 0)
    ctx.check("the inputs are finite at the onset", seen.get("x_finite") is True)
    ctx.check("frame_norm's output is non-finite at the onset", seen.get("norm_finite") is False)
    ctx.check("with an eps the same frames normalise finitely", seen.get("fixed_finite") is True)


# -- dunun: a hand-written causal decoder whose attention scale is sqrt(d) for 1/sqrt(d) ----------


class DununAttention(nn.Module):
    def __init__(self, dim, heads, scale_bug):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # meant: self.head_dim ** -0.5
        self.scale = self.head_dim**0.5 if scale_bug else self.head_dim**-0.5
        self.max_logit = 0.0
        self.peaked = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * self.scale
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        with torch.no_grad():
            self.max_logit = float(att.masked_fill(mask, 0.0).abs().max())
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        with torch.no_grad():
            self.peaked = float((att[:, :, 4:].max(-1).values > 0.999).float().mean())
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class DununBlock(nn.Module):
    def __init__(self, dim, heads, scale_bug):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = DununAttention(dim, heads, scale_bug)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class DununDecoder(nn.Module):
    """Token + position embeddings, pre-LN blocks, the head tied to the token embedding."""

    def __init__(self, vocab=8, dim=32, heads=2, layers=2, context=32, scale_bug=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(DununBlock(dim, heads, scale_bug) for _ in range(layers))
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


def _dunun(gen, batch, length=32, seed=5):
    """Dunun and bell strokes (rest, open, muted, bell, bell+open, bell+muted, flam, roll): a
    repertoire of ten rhythms, cyclic patterns of period 4 to 9, each sequence one rhythm from a
    random phase, with 3% of strokes played differently."""
    g = torch.Generator().manual_seed(seed)
    rhythms = [
        torch.randint(0, 8, (int(p),), generator=g)
        for p in torch.randint(4, 10, (10,), generator=g)
    ]
    while True:
        rows = []
        for _ in range(batch):
            pat = rhythms[int(torch.randint(0, len(rhythms), (1,), generator=gen))]
            phase = int(torch.randint(0, len(pat), (1,), generator=gen))
            row = pat.roll(phase).repeat(length // len(pat) + 2)[: length + 1]
            slip = torch.rand(length + 1, generator=gen) < 0.03
            row = torch.where(slip, torch.randint(0, 8, (length + 1,), generator=gen), row)
            rows.append(row)
        win = torch.stack(rows)
        yield win[:, :-1], win[:, 1:]


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="dunun_bell_pattern_causal_decoder",
    optimizer="NAdam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written two-block pre-LN Transformer decoder (tok, pos, blocks.0-1 with a causal-masked attention attn and a GELU MLP, ln_f, head tied to tok) predicting the next stroke of dunun and bell patterns (8 strokes, a random cyclic pattern of period 5 to 12 per sequence, so each stroke must be copied from one period back), NAdam at 3e-3, cross-entropy. The attention scale was typed head_dim ** 0.5 for head_dim ** -0.5, so q.k is multiplied by 4 instead of divided by 4: as the copy heads form, the attention logits grow from about 1 to over 30 (over 20x, and over 3x a twin with the right scale) and a share of attention rows saturates to a single position (max probability over 0.999, none in the twin); the loss still falls, finite.",
)
def h235_dunun_attention_scale_inverted(ctx: Context) -> None:
    steps = 200

    def run(c, bug):
        gen = seeded(23505)
        model = DununDecoder(scale_bug=bug)
        opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
        seen = {"logit": [], "peaked": []}

        def watch(step, out, x, y):
            seen["logit"].append(max(b.attn.max_logit for b in model.blocks))
            seen["peaked"].append(max(b.attn.peaked for b in model.blocks))

        _fit(c, model, opt, _dunun(gen, 16), steps, _lm_loss, classifier=False, watch=watch)
        return seen

    seen = run(ctx, True)
    twin = _Twin()
    tseen = run(twin, False)
    ls, lg = ctx.losses, seen["logit"]
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check(
        "attention logits grew over 20x (last 20 vs first 5 steps)",
        _mean(lg[-20:]) > 20 * _mean(lg[:5]),
    )
    ctx.check("attention logits over 30 at the end", _mean(lg[-20:]) > 30)
    ctx.check(
        "over 3x the twin's attention logits at the end",
        _mean(lg[-20:]) > 3 * _mean(tseen["logit"][-20:]),
    )
    ctx.check(
        "over 10% of attention rows saturated (max prob > 0.999) at the end, under 1% in the twin",
        _mean(seen["peaked"][-20:]) > 0.1 and _mean(tseen["peaked"][-20:]) < 0.01,
    )


# -- tent pegging: a ReLU RNN whose recurrent init carries the wrong gain ----------------------------


class LanceRNN(nn.Module):
    """A hand-written ReLU recurrence over a lance tip's trajectory: h = relu(inp(x_t) + rec(h))."""

    def __init__(self, d_in=6, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _lance(gen, batch, steps=40):
    """40 samples of a tent-pegging lance tip (height, lateral offset, speed, pitch, roll, yaw,
    standardised) on the approach, and the strike offset on the peg, standardised."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(6, generator=g) / 6
    while True:
        drift = torch.randn(batch, 1, 6, generator=gen)
        x = 0.5 * drift + 0.3 * torch.randn(batch, steps, 6, generator=gen).cumsum(1) / math.sqrt(
            steps
        )
        y = torch.tanh(x[:, -10:].mean(1) @ w * 3) + 0.3 * torch.sin(x[:, :, 0].mean(1))
        yield x, y


@scenario(
    family="tent_pegging_lance_strike_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    onset=60,
    heldout=True,
    note="A hand-written ReLU RNN (inp, rec, head; h = relu(inp(x_t) + rec(h))) regressing a tent-pegging rider's strike offset on the peg from the lance tip's trajectory, plain SGD at 0.01, MSE, with a length curriculum: the last 10 samples of the approach for 60 steps, then all 40. The recurrent matrix is meant to be orthogonal with gain 1 (the identity-like recurrence of IRNNs); the init call was copied with gain=1.6 from a feed-forward ReLU layer. Over 10 steps the recurrence is tame and the loss falls; from step 60, over 40 steps, the gradient on the hidden state grows at over 80% of the steps back through time (over 30x from the last state to the first), the total gradient jumps 50x and then thousands of times, the SGD updates on rec and inp are huge and the loss blows up (over 100x, then inf/NaN by step 62).",
)
def h235_tent_pegging_recurrent_gain(ctx: Context) -> None:
    gen = seeded(23506)
    onset = 60
    model = LanceRNN(gain=1.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = {}

    def alter(step, x, y):
        return (x[:, -10:] if step < onset else x), y  # length curriculum: 10 samples, then 40

    def unscale(step):  # after backward: the gradient on each hidden state at the onset
        if step == onset:
            norms = [float(s.grad.norm()) for s in model.states]
            seen["ratio"] = norms[0] / max(norms[-1], 1e-30)
            pairs = zip(norms[:-1], norms[1:], strict=True)
            seen["grows"] = sum(a > b for a, b in pairs) / (len(norms) - 1)

    _fit(ctx, model, opt, _lance(gen, 32), 120, F.mse_loss, alter=alter, unscale=unscale)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("finite and falling before the onset", _fell(ls[:onset], ratio=0.7))
    ctx.check(
        "gradient on the first hidden state over 30x the last's at the onset",
        seen.get("ratio", 0.0) > 30,
    )
    ctx.check("the gradient grows back through over 80% of the steps", seen.get("grows", 0.0) > 0.8)
    ctx.check(
        "the loss goes non-finite within 10 steps of the onset",
        bad is not None and onset < bad <= onset + 10,
    )
    ctx.check(
        "loss blows up over 100x its pre-onset level first",
        max(v for v in ls[onset:] if math.isfinite(v)) > 100 * _median(ls[onset - 20 : onset]),
    )


# -- roll cloud: one anemometer shard logged in cm/s ----------------------------------------------


def _roll_cloud(gen, batch, seed=7):
    """Eight standardised readings ahead of a roll cloud (pressure jump, wind speed and
    direction, temperature drop, cloud-base height, ...) and the peak gust at its passage,
    standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="roll_cloud_passage_gust_silu_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the peak gust at a roll cloud's passage from 8 standardised readings, SGD at 0.02 with momentum 0.9, MSE, gradient norm clipped at 2. The batch at step 120 comes from a coastal station whose anemometer logs in cm/s: its wind-speed reading and its gust target are 100x the m/s the standardiser was fitted on. That one batch's loss is thousands of times the usual and its (pre-clip) gradient hundreds of times; clipping bounds the step, the next batches are ordinary and the loss is back near its level within 30 steps; finite.",
)
def h235_roll_cloud_cm_per_second_shard(ctx: Context) -> None:
    gen = seeded(23507)
    onset = 120
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, 1] = x[:, 1] * 100.0  # wind speed in cm/s
            y = y * 100.0  # gust in cm/s
        return x, y

    _fit(ctx, model, opt, _roll_cloud(gen, 64), 220, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[onset - 30 : onset])
    ctx.check("finite throughout", _finite(ls) and len(ls) == 220)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("loss at the onset over 1000x the median before", ls[onset] > 1000 * before)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[onset] > 100 * _median(gn[onset - 30 : onset]),
    )
    ctx.check("the next step's loss under 10x the median before", ls[onset + 1] < 10 * before)
    ctx.check("back within 2x within 30 steps", _median(ls[onset + 20 : onset + 40]) < 2 * before)


# -- equestrian vaulting: a shared loss module left at sum reduction for one step ------------------


def _vaulting(gen, batch, seed=8):
    """Twelve standardised readings of a vaulting exercise (horse canter rhythm, lunge circle
    diameter, vaulter height, element difficulty, ...) and the judges' score, standardised, with
    heavy-tailed judging noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = torch.tanh(x @ w / 3.5) + 0.5 * torch.sin(x @ v / 3.5)
        noise = torch.distributions.StudentT(3.0).sample((batch,)) * 0.1
        yield x, y + noise


@scenario(
    family="equestrian_vaulting_score_huber_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing an equestrian-vaulting score from 12 standardised readings, SGD Nesterov at 0.02 with momentum 0.9, a shared nn.HuberLoss module, gradient norm clipped at 1. At step 100 the evaluation helper switches the shared criterion to reduction='sum' to total the validation loss and is interrupted (its restore sits after a logging call that raises and is swallowed), so that one training step backpropagates a sum over the 128 samples: the gradient is about 128x the usual from an ordinary batch (its inputs and targets are in the usual range). The reduction is restored at the next step; clipping bounds the update and the loss carries on; finite.",
)
def h235_vaulting_shared_criterion_sum(ctx: Context) -> None:
    gen = seeded(23508)
    onset = 100
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    crit = nn.HuberLoss(delta=1.0)
    sizes = []

    def before(step):
        crit.reduction = "sum" if step == onset else "mean"

    def alter(step, x, y):
        sizes.append(float(x.abs().max()) + float(y.abs().max()))
        return x, y

    def loss_fn(out, y):
        return crit(out, y) / (len(y) if crit.reduction == "sum" else 1)  # the logged mean

    def total(step, loss):
        return loss * 128 if crit.reduction == "sum" else loss  # what backward really sees

    _fit(
        ctx,
        model,
        opt,
        _vaulting(gen, 128),
        200,
        loss_fn,
        before=before,
        alter=alter,
        total=total,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls) and len(ls) == 200)
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.8))
    ctx.check(
        "gradient at the onset over 50x the median before",
        gn[onset] > 50 * _median(gn[onset - 30 : onset]),
    )
    ctx.check(
        "the gradient is back to normal on the next step",
        gn[onset + 1] < 5 * _median(gn[onset - 30 : onset]),
    )
    ctx.check(
        "the batch at the onset is ordinary (its size under 1.5x the median)",
        sizes[onset] < 1.5 * _median(sizes[onset - 30 : onset]),
    )
    ctx.check(
        "the logged loss at the onset under 3x the median before",
        ls[onset] < 3 * _median(ls[onset - 30 : onset]),
    )


# -- netsuke: the Gaussian log prior added to the loss instead of subtracted -----------------------


def _netsuke(gen, batch, seed=9):
    """Ten standardised readings of a netsuke commission (boxwood or ivory-substitute, size,
    undercut depth, himotoshi holes, detail count, ...) and the carving hours, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.1)


@scenario(
    family="netsuke_carving_hours_map_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a netsuke's carving hours from 10 standardised readings, trained as a MAP estimate: RAdam at 5e-3, MSE plus a Gaussian prior on the weights. The objective should be nll - log_prior; the code adds log_prior (= -||w||^2 / (2 sigma^2), sigma^2 = 1), which rewards weight growth: the weights grow steadily, the tanh units saturate and the data loss, after falling for about 100 steps, climbs slowly for the rest of the 300-step run (to several times its lowest, the weight norm over 3x its start) without a spike or a NaN.",
)
def h235_netsuke_log_prior_sign(ctx: Context) -> None:
    gen = seeded(23509)
    steps = 300
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    norms = []

    def total(step, loss):
        log_prior = -sum((p**2).sum() for p in model.parameters()) / (2 * 1.0)
        return loss + log_prior  # meant: loss - log_prior

    def after(step):
        norms.append(float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))))

    _fit(ctx, model, opt, _netsuke(gen, 64), steps, F.mse_loss, total=total, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 20]) for i in range(0, steps - 19, 20)]
    low = min(range(len(smooth)), key=smooth.__getitem__)
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("loss fell first (lowest 20-step mean in the first 120 steps)", low * 20 < 120)
    ctx.check("the last 20 steps over 2x the lowest 20-step mean", smooth[-1] > 2 * smooth[low])
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "a slow climb: no 20-step mean over 3x the one before",
        all(b < 3 * a for a, b in zip(smooth, smooth[1:], strict=False)),
    )


# -- horn comb: OneCycleLR's max_lr typed 0.3 for 3e-3 kills the ReLUs -----------------------------


def _horn_comb(gen, batch, seed=10):
    """Twenty standardised readings of a horn comb's tooth row (tooth widths, gaps, taper, sheen,
    ...), labelled with one of five defects (none, split tooth, uneven gap, burr, warp)."""
    return _kinds(gen, batch, 20, 5, seed, noise=1.2)


@scenario(
    family="horn_comb_tooth_defect_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    onset=30,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a horn comb's tooth-row defect from 20 standardised readings, Adam under OneCycleLR, cross-entropy. The recipe's max_lr of 3e-3 was typed 0.3: the rate climbs from 0.012 to 0.3 by step 60, and from about step 30 on the huge Adam steps push fc2's pre-activations negative for every input: act2's dead share goes from under 10% to about 90% and stays there when the rate anneals back down (the twin keeps nearly all its units). The loss turns spiky while the rate is high, does not blow up, and stalls far above (over 2x) a twin with max_lr 3e-3; finite.",
)
def h235_horn_comb_onecycle_max_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, max_lr):
        gen = seeded(23510)
        model = Stack(20, hidden=64, out=5)
        opt = torch.optim.Adam(model.parameters(), lr=max_lr / 25)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=steps, pct_start=0.3
        )
        dead = []

        def watch(step, out, x, y):
            with torch.no_grad():
                dead.append(dead_fraction(model.act2(model.fc2(model.act1(model.fc1(x))))))

        _fit(
            c,
            model,
            opt,
            _horn_comb(gen, 128),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
            sched=sched,
        )
        return dead

    dead = run(ctx, 0.3)
    twin = _Twin()
    tdead = run(twin, 3e-3)
    ls, tw = ctx.losses, twin.losses
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("few dead act2 units up to step 20 (<10%)", max(dead[:20]) < 0.1)
    ctx.check("over 60% of act2's units dead at the end", _mean(dead[-20:]) > 0.6)
    ctx.check("the twin keeps its units (<20% dead at the end)", _mean(tdead[-20:]) < 0.2)
    ctx.check("ends over 2x the twin's loss", _mean(ls[-20:]) > 2 * _mean(tw[-20:]))


# -- controls ---------------------------------------------------------------------------------------


class TremoloNet(nn.Module):
    """A conv1d classifier of domra pick-tremolo articulations from 64-sample envelopes."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2, stride=2)
        self.head = nn.Linear(16 * 32, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x[:, None]))))
        return self.head(h.flatten(1))


def _tremolo(gen, batch):
    """Amplitude envelopes of domra pick tremolo (even, accelerating, decelerating, accented), with
    a random pick rate, amplitude and noise."""
    t = torch.linspace(0, 1, 64)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        rate = 8 + 6 * torch.rand(batch, 1, generator=gen)
        warp = torch.stack([t, t**0.7, t**1.4, t]).index_select(0, y)
        env = 0.5 + 0.5 * torch.cos(2 * math.pi * rate * warp)
        accent = (y == 3).float()[:, None] * (torch.sin(2 * math.pi * rate * t / 4) > 0.7).float()
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        yield amp * (env + accent) + 0.15 * torch.randn(batch, 64, generator=gen), y


@scenario(
    family="domra_pick_tremolo_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A conv1d classifier (conv1, conv2, head) of domra pick-tremolo articulations (even, accelerating, decelerating, accented) from 64-sample amplitude envelopes, AdamW at 2e-3 with weight decay 0.05 on the weights only (biases in a no-decay group), a long linear warm-up over the first 100 of 260 steps then cosine decay, cross-entropy with label smoothing 0.1, noisy envelopes. An ordinary run: the loss falls and stays finite.",
)
def h235_domra_adamw_long_warmup(ctx: Context) -> None:
    gen = seeded(23511)
    steps, warm = 260, 100
    model = TremoloNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _fit(ctx, model, opt, _tremolo(gen, 64), steps, loss_fn, classifier=True, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("loss fell (last 20 under 0.5x first 20)", _fell(ls, k=20, ratio=0.5))


def _varnish(gen, batch, seed=12):
    """Twelve standardised readings of a decoupage piece's varnish coat (layer count, paper
    weight, glue dilution, humidity, temperature, ...) and the cure time, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.1)


@scenario(
    family="decoupage_varnish_cure_fp16_silu_regressor",
    optimizer="SGD (momentum)",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a decoupage varnish coat's cure time from 12 standardised readings, SGD with momentum 0.9 under OneCycleLR (max_lr 0.05), MSE, fp16 autocast with a torch.amp.GradScaler (init scale 2**12). An ordinary mixed-precision run: the loss falls, stays finite, and the scale never backs off to a skipped step storm.",
)
def h235_decoupage_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(23512)
    steps = 200
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _fit(
        ctx, model, opt, _varnish(gen, 64), steps, F.mse_loss, sched=sched, scaler=scaler, amp=True
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("loss fell (last 20 under 0.5x first 20)", _fell(ls, k=20, ratio=0.5))
    ctx.check("the loss scale never fell below its start", min(ctx.scales) >= 2.0**12)


class BleedNet(Stack):
    """Predicts the mean and log-variance of a tenugui's dye bleed."""

    def __init__(self):
        super().__init__(10, hidden=64, out=2, act=nn.GELU)

    def forward(self, x):
        return self.head(self.features(x))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _tenugui(gen, batch, seed=13):
    """Ten standardised readings of a chusen-dyed tenugui (paste resist width, dye pour volume,
    cotton weave, pour count, ...) and the dye bleed past the resist, with noise whose spread
    depends on the readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        sd = 0.1 + 0.3 * torch.sigmoid(x @ v / 3)
        yield x, torch.tanh(x @ w / 3) + sd * torch.randn(batch, generator=gen)


@scenario(
    family="tenugui_chusen_dye_bleed_gaussian_nll_net",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting the mean and log-variance of a chusen-dyed tenugui's dye bleed from 10 standardised readings, Adamax at 2e-3, Gaussian NLL, gradient accumulation over 2 batches, gradient norm clipped at 1, ReduceLROnPlateau (patience 20) on the training loss; heteroscedastic noise. An ordinary run: the loss falls (through 0, as an NLL may) and stays finite.",
)
def h235_tenugui_gaussian_nll_accumulation(ctx: Context) -> None:
    gen = seeded(23513)
    steps = 200
    model = BleedNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _fit(ctx, model, opt, _tenugui(gen, 32), steps, _gauss_nll, sched=sched, clip=1.0, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls) and len(ls) == steps)
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-20:]) < _mean(ls[:20]) - 0.5)
