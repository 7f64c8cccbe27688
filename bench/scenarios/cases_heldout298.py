"""Held-out set 298 (``h298_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a launeddas drone-phrase bidirectional ReLU RNN tagger with
a softmax head whose identity recurrent init was left scaled 1.1 (gradients grow through time,
NaN), a vielle bow-stroke classifier whose z-loss was ported with its sign flipped (the head's
logits grow together without bound), a sieve-maker mesh-tension
regressor whose input layer's lr multiplier was read from a misspelt config key (fc1 frozen at
lr 0), a limner vellum-pigment classifier whose resume reloaded the checkpoint with strict=False
and left the renamed head at its init (one loss spike, recovered), a sumac drupe-ripeness BCE
detector with hand-written log-probabilities (log 0, NaN), a French-polish shellac coat regressor
fed one shard in micrometres (data outlier), a sennit braid breaking-load Huber regressor whose
epoch-end partial-batch branch sums the loss (one gradient spike), a proa shunting hull-speed
regressor whose label jitter is added in place to the cached targets (slow climb), a pulka sled
snow-kind cosine classifier whose temperature is applied squared (softmax collapse), a
cloud-street spacing ReLU classifier whose Adam lr was typed 3e-1 for 3e-4 (ReLUs die), and three
controls (a spindrift plume-length Huber regressor with RMSprop, clipping and
ReduceLROnPlateau, a firefall glow-stage fp16 classifier with a GradScaler, OneCycleLR, label
smoothing, accumulation and AdamW param groups, a ripple-mark profile tied-weight autoencoder
with SGD Nesterov and a warm-up cosine schedule).

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backward_of=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``after(step)`` runs after the optimizer step, ``backward_of(step, out, y, loss)``
    gives the loss actually backpropagated (the reported loss stays ``loss_fn``'s); stops after
    a non-finite loss. Returns the step it stopped at."""
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
                ctx.targets(y.reshape(-1))
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            total = backward_of(step, out, y, loss) if backward_of is not None else loss
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
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping unless noise is small."""
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


# -- launeddas: a bidirectional ReLU RNN tagger, its identity recurrent init scaled 1.1 --------

T_LAUN = 40
LR_LAUN, SCALE_LAUN = 1e-2, 1.1  # identity_scale: meant 1.0


class BiTagger(nn.Module):
    """A hand-written bidirectional Elman tagger: ``fwd`` reads left to right, ``bwd`` right to
    left (both ReLU RNNCells with the IRNN identity recurrent init), the head tags every step
    from [fwd state, bwd state] by softmax."""

    def __init__(self, d_in=6, hidden=32, tags=5, identity_scale=1.0):
        super().__init__()
        self.fwd = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.bwd = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(2 * hidden, tags)
        for cell in (self.fwd, self.bwd):
            with torch.no_grad():
                cell.weight_hh.copy_(identity_scale * torch.eye(hidden))
            nn.init.zeros_(cell.bias_hh)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.fwd.hidden_size)
        fs = []
        for i in range(t):
            h = self.fwd(x[:, i], h)
            fs.append(h)
        h = x.new_zeros(b, self.bwd.hidden_size)
        bs = [None] * t
        for i in reversed(range(t)):
            h = self.bwd(x[:, i], h)
            bs[i] = h
        self.states = fs
        return self.head(torch.cat([torch.stack(fs, 1), torch.stack(bs, 1)], -1))


def _phrases(gen, batch, t, d_in=6, tags=5, seed=0):
    """Drone-phrase readings; each step's tag depends on its neighbours on both sides."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3 * d_in, tags, generator=g)
    while True:
        x = torch.randn(batch, t, d_in, generator=gen)
        pad = F.pad(x, (0, 0, 1, 1))
        ctxt = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], -1)
        yield x, (ctxt @ w).argmax(-1)


def _tag_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="launeddas_drone_phrase_bidirectional_relu_rnn_tagger",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("fwd", "bwd"),
    diverges="auto",
    heldout=True,
    note="A hand-written bidirectional Elman tagger (fwd and bwd ReLU RNNCells, a softmax head over [fwd, bwd] states, no CRF) tagging each of 40 steps of a launeddas (Sardinian triple clarinet) phrase with one of 5 fingering figures from 6 standardised readings (drone pressure, chanter pitch, breath noise). SGD momentum 0.9 at 1e-2, cross-entropy, no clipping, up to 200 steps. The recurrent weights get the IRNN identity init, but the builder's `identity_scale` was left at 1.1 from an experiment (meant 1.0): every step of the recurrence multiplies the active state by 1.1, the gradient reaching the first steps of the phrase is over 100x the last's at init, the first updates push the recurrence further and the loss climbs to NaN at step 19.",
)
def h298_launeddas_identity_scale_recurrence(ctx: Context) -> None:
    gen = seeded(29801)
    model = BiTagger(identity_scale=SCALE_LAUN)
    opt = torch.optim.SGD(model.parameters(), lr=LR_LAUN, momentum=0.9)
    probe = next(_phrases(torch.Generator().manual_seed(3), 32, T_LAUN, seed=801))
    out = model(probe[0])
    for h in model.states:
        h.retain_grad()
    _tag_loss(out, probe[1]).backward()
    ratio = float(model.states[0].grad.norm()) / max(float(model.states[-1].grad.norm()), 1e-30)
    model.zero_grad(set_to_none=True)
    model.states = []

    _train(
        ctx,
        model,
        opt,
        _phrases(gen, 32, T_LAUN, seed=801),
        200,
        _tag_loss,
        classifier=True,
    )
    ls = ctx.losses
    ctx.check("the loss is NaN by step 19", _first_bad(ls) is not None and _first_bad(ls) <= 19)
    ctx.check("the first state's gradient is over 100x the last's at init", ratio > 100)
    ctx.check(
        "the loss blows up (non-finite or over 10x its start)",
        _first_bad(ls) is not None or max(ls) > 10 * _mean(ls[:5]),
    )


# -- vielle: a z-loss with its sign flipped, the head's logits grow together without bound -----

Z_VIELLE, LR_VIELLE = 1e-3, 1e-3


@scenario(
    family="vielle_bow_stroke_kind_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of 6 bow strokes a vielle (medieval fiddle) player used from 16 standardised bow-sensor readings (overlapping strokes), Adam at 1e-3, cross-entropy, 300 steps, plus the z-loss regulariser meant to keep log-sum-exp of the logits near 0 (`+ 1e-3 * lse ** 2`), ported with its sign flipped (`- 1e-3 * lse ** 2`). Softmax does not see a common shift, so the cross-entropy trains normally while the auxiliary term rewards raising every logit together: the head's peak logit grows over 20x from init and past 30 and is still growing at the end. Finite, no blow-up; the reported loss is the cross-entropy.",
)
def h298_vielle_zloss_sign(ctx: Context) -> None:
    gen = seeded(29802)
    model = Stack(16, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=LR_VIELLE)
    probe = next(_kinds(torch.Generator().manual_seed(7), 256, 16, 6, seed=802, noise=0.8))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    def backward_of(step, out, y, loss):
        return loss - Z_VIELLE * (torch.logsumexp(out, -1) ** 2).mean()  # meant: +

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=802, noise=0.8),
        300,
        F.cross_entropy,
        classifier=True,
        after=after,
        backward_of=backward_of,
    )
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the head's peak logit passed 30", peaks[-1] > 30.0)
    ctx.check("the peak logit still grows in the last third", peaks[-1] > 1.2 * peaks[20])
    ctx.check("the cross-entropy fell", _fell(ctx.losses))


# -- sieve maker: the input layer's lr multiplier read from a misspelt key, fc1 frozen ----------

CFG_SIEVE = {"lr": 3e-3, "input_lr_mul": 0.3}  # the code reads "input_lr_mult"


@scenario(
    family="sieve_maker_mesh_tension_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the tension a sieve maker's woven wire mesh settles at from 12 standardised readings (wire gauge, mesh count, rim diameter, weave tightness), Adamax, MSE, 240 steps, two param groups: fc1 at lr * cfg.get('input_lr_mult', 0.0) (a discriminative lower rate for the input layer) and the rest at lr 3e-3. The config spells the key 'input_lr_mul', so the lookup falls back to 0.0 and fc1 never moves: its weights are bit-identical at the end, while fc2 and the head train on and the loss falls on the random features.",
)
def h298_sieve_maker_misspelt_group_lr(ctx: Context) -> None:
    gen = seeded(29803)
    model = Stack(12, 64, act=nn.SiLU)
    lr = CFG_SIEVE["lr"]
    first = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adamax(
        [
            {"params": first, "lr": lr * CFG_SIEVE.get("input_lr_mult", 0.0)},
            {"params": rest, "lr": lr},
        ]
    )
    w0, r0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=803), 240, F.mse_loss)
    ctx.check("fc1 never moved", bool(torch.equal(w0, _flat(model.fc1))))
    ctx.check("fc2 moved", float((_flat(model.fc2) - r0).norm()) > 0.05 * float(r0.norm()))
    ctx.check("the loss fell", _fell(ctx.losses))


# -- limner: a resume with strict=False leaves the renamed head at its init ---------------------

ONSET_LIMN = 150
STEP_SUMAC, LR_SUMAC = 106, 2e-3


@scenario(
    family="limner_vellum_pigment_grade_gelu_classifier",
    optimizer="AdamW",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=ONSET_LIMN,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading the pigment a limner (portrait-miniature painter) ground for vellum into 5 grades from 14 standardised readings (particle size, binder ratio, opacity), AdamW at 3e-3, cross-entropy, 300 steps. The job is pre-empted and resumes at step 150 from a checkpoint saved by an older version of the code whose head was called `classifier`; the loader uses `load_state_dict(..., strict=False)`, so the trunk is restored but the head keeps the fresh init of the new process: the loss jumps back to about chance for one step and the run recovers within a few dozen steps, with nothing else wrong.",
)
def h298_limner_resume_head_reinit(ctx: Context) -> None:
    gen = seeded(29804)
    model = Stack(14, 64, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def before(step):
        if step == ONSET_LIMN:
            torch.manual_seed(4)
            model.head.reset_parameters()  # the head missing from the checkpoint: fresh init

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, seed=804, noise=0.3),
        300,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ls = ctx.losses
    pre = _mean(ls[ONSET_LIMN - 10 : ONSET_LIMN])
    ctx.check("the loss at the resume step is over 3x the loss before", ls[ONSET_LIMN] > 3 * pre)
    ctx.check(
        "the loss is back within 1.5x of before 60 steps later",
        _mean(ls[ONSET_LIMN + 50 : ONSET_LIMN + 60]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- sumac: hand-written log-probabilities, log(1 - sigmoid) = log 0 -----------------------------


class LogProbs(nn.Module):
    """Hand-written (log p, log (1 - p)) of a sigmoid, instead of F.logsigmoid."""

    def forward(self, z):
        p = torch.sigmoid(z)
        return torch.stack([torch.log(p), torch.log(1 - p)], -1)


class Detector(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.logp = LogProbs()

    def forward(self, x):
        return self.logp(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _bce_from_logp(lp, y):
    return -(y * lp[..., 0] + (1 - y) * lp[..., 1]).mean()


def _ripe(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w > 0).float()


@scenario(
    family="sumac_drupe_ripeness_bce_detector",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logp",),
    diverges=STEP_SUMAC,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) detecting whether a sumac drupe cluster is ripe for harvest (sour coating formed) from 10 standardised readings (colour, acidity, weather), NAdam at 1e-2, binary cross-entropy written by hand from a LogProbs module (logp) that returns log(sigmoid(z)) and log(1 - sigmoid(z)) instead of F.logsigmoid. The classes are separable, the logits grow, and once a ripe cluster's logit passes about 17, sigmoid rounds to exactly 1.0 in float32, log(1 - p) = log 0 = -inf and (1 - y) * -inf = 0 * -inf = NaN: the loss is NaN at the step given.",
)
def h298_sumac_handwritten_log(ctx: Context) -> None:
    gen = seeded(29805)
    model = Detector()
    opt = torch.optim.NAdam(model.parameters(), lr=LR_SUMAC)
    stop = _train(ctx, model, opt, _ripe(gen, 64, 10, seed=805), 300, _bce_from_logp)
    ctx.check(f"the loss is first NaN at step {STEP_SUMAC}", _first_bad(ctx.losses) == STEP_SUMAC)
    ctx.check("the run stopped there", stop == STEP_SUMAC)
    ctx.check("finite before it", _finite(ctx.losses[:STEP_SUMAC]))


# -- French polish: one shard's coat thickness in micrometres ------------------------------------

ONSET_POLISH = 90


@scenario(
    family="french_polish_shellac_coat_thickness_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_POLISH,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the shellac coat thickness a French polisher builds per session from 10 standardised readings (cut of the shellac, pad pressure, stroke count, room humidity), plain SGD at 2e-2, MSE, clipping at 1.0, 200 steps. One shard of the logs, merged from another workshop, records thickness in micrometres instead of millimetres: the batch at step 90 has targets 1000x too large, its loss is about a million times the usual and its gradient is clipped; the run recovers on the next batches.",
)
def h298_french_polish_micrometre_shard(ctx: Context) -> None:
    gen = seeded(29806)
    model = Stack(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == ONSET_POLISH else (x, y)

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=806), 200, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_POLISH - 10 : ONSET_POLISH])
    ctx.check("the bad shard's loss is over 1000x the usual", ls[ONSET_POLISH] > 1000 * pre)
    ctx.check(
        "its gradient is over 100x the usual",
        g[ONSET_POLISH] > 100 * _median(g[ONSET_POLISH - 20 : ONSET_POLISH]),
    )
    ctx.check(
        "the loss recovers within 2x of before",
        _mean(ls[ONSET_POLISH + 20 : ONSET_POLISH + 30]) < 2 * pre,
    )
    ctx.check("the loss fell overall", _fell(ls))


# -- sennit: the epoch-end partial-batch branch sums the loss ------------------------------------

ONSET_SENNIT = 80


@scenario(
    family="sennit_braid_breaking_load_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SENNIT,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the breaking load of a sennit braid (coconut-fibre cordage) from 12 standardised readings (strand count, plait angle, fibre soak time), SGD momentum 0.9 at 5e-3, Huber loss, 200 steps, batches of 64. The epoch ends at step 80 and the branch for the last batch was written `F.huber_loss(out, y, reduction='sum')` where the regular path takes the mean: that one step backpropagates 64x the usual gradient from ordinary data (its reported mean loss is ordinary); no clipping, the run goes on training.",
)
def h298_sennit_partial_batch_sum(ctx: Context) -> None:
    gen = seeded(29807)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def backward_of(step, out, y, loss):
        return F.huber_loss(out, y, reduction="sum") if step == ONSET_SENNIT else loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=807),
        200,
        F.huber_loss,
        backward_of=backward_of,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_SENNIT - 20 : ONSET_SENNIT])
    ctx.check(
        "the gradient at the epoch-end step is over 30x the usual", g[ONSET_SENNIT] > 30 * base
    )
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_SENNIT + 5 : ONSET_SENNIT + 25]) < 3 * base,
    )
    ctx.check(
        "the loss on that step's batch is ordinary",
        ls[ONSET_SENNIT] < 2.0 * _mean(ls[ONSET_SENNIT - 10 : ONSET_SENNIT]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- proa: label jitter added in place to the cached targets, the targets drift ---------------

SIGMA_PROA = 0.12


def _cached_readings(gen, n, batch, d_in, seed, sigma):
    """A cached table of readings served in shuffled slices; the label-jitter augmentation is
    written ``y.add_(sigma * noise)`` on the slice, a view of the cache, so every visit adds
    its jitter to the stored targets for good."""
    xs, ys = next(_readings(torch.Generator().manual_seed(seed + 1), n, d_in, seed))
    while True:
        for k in torch.randperm(n // batch, generator=gen).tolist():
            x, y = xs[k * batch : (k + 1) * batch], ys[k * batch : (k + 1) * batch]
            y.add_(sigma * torch.randn(batch, generator=gen))  # meant: y + sigma * noise
            yield x, y.clone()


@scenario(
    family="proa_shunt_hull_speed_gelu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the hull speed a proa (a double-ended outrigger that shunts instead of tacking) reaches after a shunt from 10 standardised readings (wind angle, sail area, ama load), RAdam at 3e-3, MSE, 300 steps over a cached table of 512 logged shunts served in shuffled batches of 64. The label-jitter augmentation was written `y.add_(0.12 * noise)` on the batch slice, a view of the cache, instead of `y + 0.12 * noise`: every visit adds its jitter to the stored targets for good, the targets random-walk away from anything the readings explain and the loss, after falling, climbs slowly to over twice its best. No single event, finite throughout.",
)
def h298_proa_inplace_label_jitter(ctx: Context) -> None:
    gen = seeded(29808)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _train(
        ctx,
        model,
        opt,
        _cached_readings(gen, 512, 64, 10, seed=808, sigma=SIGMA_PROA),
        300,
        F.mse_loss,
    )
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 5))
    ctx.check("the loss ends over 2x its best", _mean(ls[-10:]) > 2 * best)
    ctx.check(
        "the loss climbs over the last two thirds",
        _mean(ls[-20:]) > _mean(ls[180:200]) > _mean(ls[100:120]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- pulka: the cosine classifier's temperature applied squared --------------------------------

TAU_PULKA = 0.05


class CosineHead(nn.Module):
    """Cosine similarity to learned class prototypes, divided by a temperature."""

    def __init__(self, dim, classes, tau):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim))
        self.tau = tau

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return cos / self.tau**2  # meant: cos / self.tau


class SledNet(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, TAU_PULKA)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="pulka_sled_snow_kind_cosine_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (fc1, act1, fc2, then head = cosine similarity to 6 learned prototypes over a temperature) naming the snow a pulka (ski-touring sled) is hauled over (powder, crust, slush, ...) from 12 standardised drag and sink readings, ASGD at 1e-2, cross-entropy, 200 steps. The temperature tau = 0.05 is applied as `cos / tau**2` (a refactor merged two scale lines), so the logits span +-400 instead of +-20: from the first steps most rows' softmax rounds the target to exactly 1.0 in float32 (and the wrong rows to exactly 0), the correctly classified rows give no gradient.",
)
def h298_pulka_temperature_squared(ctx: Context) -> None:
    gen = seeded(29809)
    model = SledNet()
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    probe = next(_kinds(torch.Generator().manual_seed(11), 512, 12, 6, seed=809))
    fracs: list[float] = []

    def after(step):
        if step % 20 == 0:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe[0]), probe[1]))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=809),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over a third of rows' softmax is exactly 1.0", fracs[-1] > 1 / 3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cloud street: Adam lr typed 3e-1 for 3e-4, the ReLUs die -----------------------------------


@scenario(
    family="cloud_street_spacing_class_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=0,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying the spacing class of cloud streets (rows of cumulus along the wind; 5 classes) from 16 standardised sounding readings (boundary-layer depth, shear, surface heating), Adam, cross-entropy, 240 steps. The lr was typed 3e-1 for 3e-4: the large normalised steps push fc2's units negative on every input one after another, their gradient is exactly 0 and they never come back; from under a tenth at init, over 90% of fc2 is dead from step 60 on (all of it by the end) and the loss, after a first fall, goes back to chance and stays there.",
)
def h298_cloud_street_lr_typo(ctx: Context) -> None:
    gen = seeded(29810)
    model = Stack(16, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=LR_CLOUD)
    probe = next(
        _kinds(torch.Generator().manual_seed(13), 512, 16, 5, seed=810, noise=NOISE_CLOUD)
    )[0]
    with torch.no_grad():
        dead0 = dead_fraction(model.fc2(model.act1(model.fc1(probe))))
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(model.act1(model.fc1(probe)))))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=810, noise=NOISE_CLOUD),
        240,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("fc2 starts with under 10% dead", dead0 < 0.1)
    ctx.check("over 90% of fc2 is dead from step 60 on", min(dead[60:]) > 0.9)
    ctx.check(
        "the loss is stuck near chance at the end",
        _mean(ctx.losses[-20:]) > 0.9 * math.log(5),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


LR_CLOUD, NOISE_CLOUD = 3e-1, 1.2  # lr meant 3e-4

# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="spindrift_plume_length_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Control: a tanh MLP regressing how far a ridge's spindrift plume streams from 10 standardised wind and snowpack readings, targets with Student-t noise, Huber loss, RMSprop at 3e-3, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 15), 240 steps. Trains normally.",
)
def h298_spindrift_rmsprop_plateau(ctx: Context) -> None:
    gen = seeded(29811)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=811, noise=0.2, heavy=True),
        240,
        F.huber_loss,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))


@scenario(
    family="firefall_glow_stage_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP classifying the stage of a firefall (the sunset glow on a waterfall; 5 stages) from 16 standardised light and flow readings, fp16 autocast with a torch.amp.GradScaler, AdamW with two param groups (biases without weight decay), OneCycleLR to 5e-3, label smoothing 0.1, gradient accumulation over 2 micro-batches, clipping at 1.0, 160 steps. Trains normally.",
)
def h298_firefall_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(29812)
    model = Stack(16, 64, out=5, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    other = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=5e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 5, seed=812),
        160,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("the scale never dropped", min(ctx.scales) >= ctx.scales[0])


class TiedAutoencoder(nn.Module):
    """enc: Linear d -> k, decoding with enc.weight transposed (tied) plus its own bias."""

    def __init__(self, d_in=24, k=8):
        super().__init__()
        self.enc = nn.Linear(d_in, k)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _profiles(gen, batch, d_in=24):
    """Ripple-mark height profiles: a few sinusoids of random wavelength and phase plus noise."""
    t = torch.linspace(0, 1, d_in)
    while True:
        freq = 2 + 3 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(6.28 * freq * t + phase) + 0.05 * torch.randn(
            batch, d_in, generator=gen
        )
        yield x, x


@scenario(
    family="ripple_mark_profile_tied_autoencoder",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight autoencoder (enc Linear 24 -> 8, tanh, decoding with enc.weight transposed) compressing sand ripple-mark height profiles, SGD Nesterov momentum 0.9 at 5e-2, a 20-step linear warm-up then cosine decay, MSE, 240 steps. Trains normally.",
)
def h298_ripple_mark_tied_nesterov(ctx: Context) -> None:
    gen = seeded(29813)
    model = TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 240) / 240)),
    )
    _train(ctx, model, opt, _profiles(gen, 64), 240, F.mse_loss, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
