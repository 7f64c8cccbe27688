"""Held-out set 478 (``h478_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an adobe mud-plaster crack-width regressor whose hand-written decoupled weight decay
multiplies by (1 + lr * wd) (a slow climb, SGD momentum), a bandoneon button-chord attention
tagger trained at an Adam lr typed 3e-2 for 3e-4 (q.k/sqrt(d) logits grow), a musical-saw vibrato
Huber regressor whose manual loss scale is not undone on the first step after a resume (Adam's
second moment poisoned), a broomball puck-glide regressor that reloads a stale checkpoint once
(a loss spike it recovers from, NAdam), a rammed-earth compaction classifier fed one shard in raw
units (SGD), a cheese-rind mite-count net taking log of counts that can be 0 (Adagrad), a
topiary yew-regrowth regressor whose head lr is typed 1e-9 (RMSprop), a kintsugi seam-width
classifier whose fc2 bias is initialised at -3 (dead ReLUs, SGD Nesterov), a millwright
waterwheel ReLU RNN whose recurrent identity init is scaled 1.08 (exploding gradients, SGD) and a
scrimshaw etch-depth regressor whose sample weight is read in grams for one step (SGD momentum,
clipped).

Controls: a snow-crystal branch-tip set predictor (learnt object queries cross-attending to
encoded points, a fixed query-to-target assignment, AdamW, warm-up + cosine, clipping); a
whirlpool eddy-lifetime Gaussian-NLL regressor under Lookahead wrapped around Adam; a crwth
string-buzz Conv1d classifier (SGD Nesterov, OneCycleLR, label smoothing, gradient accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


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


# -- 1. loss divergence: decoupled weight decay with its sign flipped --------------------------------


@scenario(
    family="adobe_mud_plaster_crack_width_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Adobe mud-plaster crack-width regressor (GELU MLP on clay, straw, sand and drying "
    "features, MSE, SGD momentum 0.9). Decoupled weight decay is applied by hand after each "
    "step and written p.mul_(1 + lr * wd) instead of (1 - lr * wd): every weight is inflated a "
    "little each step, the fit degrades and the loss climbs slowly with no other mechanism.",
)
def h478_adobe_decay_sign(ctx) -> None:
    gen = seeded(4781)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lr, wd = 0.01, 0.6

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    w0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4781), 250, F.mse_loss, after=after)
    w1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    best = min(_mean(losses[i : i + 10]) for i in range(0, 100, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 2. attention logit growth: Adam lr typed 3e-2 for 3e-4 ------------------------------------------


class _ChordAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (m(x).reshape(b, t, h, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _ChordBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _ChordAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _ChordTagger(nn.Module):
    """Tags each button press with the chord it belongs to; the head is tied to the embedding."""

    def __init__(self, vocab=24, dim=32, heads=2, length=12):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_ChordBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


@scenario(
    family="bandoneon_button_chord_tied_attention_tagger",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Bandoneon button-chord tagger (two pre-LN self-attention blocks written by hand, head "
    "tied to the token embedding, cross-entropy). Each position must output the button pressed "
    "at a pointer position, a retrieval that sharpens attention. The Adam lr is typed 3e-2 for "
    "3e-4, with no weight decay and no QK-norm: the q.k/sqrt(d) logits grow step after step.",
)
def h478_bandoneon_attention_lr(ctx) -> None:
    seeded(4782)
    vocab, length = 24, 12
    model = _ChordTagger(vocab, 32, 2, length)

    def data(gen):
        while True:
            x = torch.randint(0, 16, (32, length), generator=gen)
            ptr = torch.randint(0, length // 2, (32,), generator=gen)
            x[:, length // 2] = 16 + ptr  # a pointer token names the position to read
            y = x.gather(1, ptr[:, None]).expand(-1, length).clone()
            yield x, y

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, vocab), y.reshape(-1))

    def run(net, lr, attach):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        mx = []

        def after(step):
            mx.append(max(b.attn.last_max_logit for b in net.blocks))

        g = torch.Generator().manual_seed(47820)
        losses, _ = _loop(ctx, net, opt, data(g), 200, loss_fn, after=after, attach=attach)
        return losses, mx

    torch.manual_seed(47821)
    _, ref = run(_ChordTagger(vocab, 32, 2, length), 3e-4, False)
    losses, mx = run(model, 3e-2, True)
    ctx.check("at the intended lr 3e-4 the logits stay under 10", max(ref) < 10)
    ctx.check("max |q.k/sqrt(d)| over 20x its start", mx[-1] > 20 * mx[0])
    ctx.check("max |q.k/sqrt(d)| over 50 at the end", mx[-1] > 50)
    ctx.check("still growing over the last half", _mean(mx[-20:]) > 1.5 * _mean(mx[90:110]))


# -- 3. Adam's second moment: a manual loss scale not undone after a resume --------------------------

SAW_STEP = 80


@scenario(
    family="musical_saw_vibrato_rate_huber_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SAW_STEP,
    note="Musical-saw vibrato-rate regressor (SiLU MLP on bow pressure, bend and pitch features, "
    "Huber, Adam). The run multiplies the loss by a manual scale of 65536 and divides the "
    "gradients by it; on the first step after a resume (step 80) the division is skipped, one "
    "gradient 65536x normal fills Adam's second moment and the updates stall afterwards.",
)
def h478_musical_saw_unscaled_resume(ctx) -> None:
    gen = seeded(4783)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale = 65536.0
    moves = []
    snap = {}

    def backprop(step, loss):
        return loss * scale

    def before(step):
        snap["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        pass

    ctx.attach(model, opt)
    data = _readings(gen, 64, 10, 4783)
    losses, norms = [], []
    for step in range(220):
        before(step)
        x, y = next(data)
        loss = F.huber_loss(model(x), y)
        backprop(step, loss).backward()
        if step != SAW_STEP:  # the resume path skips the unscale
            for p in model.parameters():
                p.grad.div_(scale)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - w).norm() ** 2)
                    for p, w in zip(model.parameters(), snap["w"], strict=True)
                )
            )
        )
    before_mv = _mean(moves[SAW_STEP - 30 : SAW_STEP])
    after_mv = _mean(moves[SAW_STEP + 40 : SAW_STEP + 100])
    ctx.check(
        "the gradient at the resume step over 1e4x the median",
        norms[SAW_STEP] > 1e4 * _median(norms[:SAW_STEP]),
    )
    ctx.check("updates 40-100 steps later under 0.1x those before", after_mv < 0.1 * before_mv)
    ctx.check(
        "the loss stops falling (no better 100 steps later)",
        _mean(losses[-20:]) > 0.8 * _mean(losses[SAW_STEP - 20 : SAW_STEP]),
    )
    ctx.check(
        "trained before the resume",
        _mean(losses[SAW_STEP - 10 : SAW_STEP]) < 0.7 * _mean(losses[:10]),
    )


# -- 4. loss spike: a stale checkpoint reloaded once -------------------------------------------------

BROOM_STEP = 130


@scenario(
    family="broomball_puck_glide_distance_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BROOM_STEP,
    note="Broomball puck-glide distance regressor (ReLU MLP on ice temperature, shoe, swing "
    "and puck-wear features, MSE, NAdam). A preemption handler reloads the model from a stale "
    "checkpoint (the one written at step 15, the 'latest' symlink was never updated) at step "
    "130 while the optimizer state carries on: the loss spikes once and the run recovers.",
)
def h478_broomball_stale_checkpoint(ctx) -> None:
    gen = seeded(4784)
    model = _Net(10, 48, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    saved = {}

    def before(step):
        if step == BROOM_STEP:
            model.load_state_dict(saved["ckpt"])

    def after(step):
        if step == 15:
            saved["ckpt"] = {k: v.clone() for k, v in model.state_dict().items()}

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4784), 260, F.mse_loss, before=before, after=after
    )
    pre = _mean(losses[BROOM_STEP - 10 : BROOM_STEP])
    ctx.check("the loss at the reload over 3x the 10 steps before", losses[BROOM_STEP] > 3 * pre)
    ctx.check(
        "recovers: last 10 steps under 1.5x the pre-reload level", _mean(losses[-10:]) < 1.5 * pre
    )
    ctx.check(
        "no gradient burst (under 10x the median at the reload)",
        norms[BROOM_STEP] < 10 * _median(norms[:BROOM_STEP]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 5. data outlier: one shard in raw units ---------------------------------------------------------

EARTH_STEP = 90


@scenario(
    family="rammed_earth_layer_compaction_grade_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=EARTH_STEP,
    note="Rammed-earth layer compaction grader (ReLU MLP on moisture, tamp count, layer depth "
    "and penetrometer features, 5 grades, cross-entropy, plain SGD). One shard, read at step "
    "90, was exported before standardisation: its features are raw readings (hundreds, with an "
    "offset). One batch of huge inputs; the run recovers afterwards.",
)
def h478_rammed_earth_raw_shard(ctx) -> None:
    gen = seeded(4785)
    model = _Net(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mags = []

    def alter(step, x, y):
        if step == EARTH_STEP:
            x = 300.0 * x + 150.0
        mags.append(float(x.abs().mean()))
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4785),
        240,
        F.cross_entropy,
        alter=alter,
        classifier=True,
        clip=None,
    )
    pre = _mean(losses[EARTH_STEP - 10 : EARTH_STEP])
    ctx.check("the shard's inputs over 100x the usual", mags[EARTH_STEP] > 100 * _median(mags))
    ctx.check("the loss at the shard over 10x the steps before", losses[EARTH_STEP] > 10 * pre)
    ctx.check(
        "the gradient at the shard over 20x the median", norms[EARTH_STEP] > 20 * _median(norms)
    )
    ctx.check("finite throughout", _finite(losses))


# -- 6. nonfinite: log of a count that can be 0 ------------------------------------------------------

CHEESE_STEP = 110


class _LogCounts(nn.Module):
    def forward(self, counts):
        return torch.log(counts)


class _MiteNet(nn.Module):
    def __init__(self, d_counts=4, d_rest=8, hidden=32):
        super().__init__()
        self.d_counts = d_counts
        self.logcount = _LogCounts()
        self.fc1 = nn.Linear(d_counts + d_rest, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        c, r = x[:, : self.d_counts], x[:, self.d_counts :]
        z = torch.cat([self.logcount(c), r], 1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


@scenario(
    family="cheese_rind_mite_count_log_feature_bce_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logcount",),
    diverges=CHEESE_STEP + 1,
    heldout=True,
    onset=CHEESE_STEP,
    note="Cheese-rind mite infestation tagger (tanh MLP on log mite counts from four rind "
    "swabs plus humidity and age features, BCEWithLogits, Adagrad). The counts were assumed "
    "to be at least 1 and the log has no clamp; at step 110 a fresh wheel with a zero count "
    "arrives, log(0) = -inf gives a NaN gradient (the weights turn NaN) and the loss is NaN on the next step.",
)
def h478_cheese_rind_log_zero(ctx) -> None:
    gen = seeded(4786)
    g = torch.Generator().manual_seed(4786)
    w = torch.randn(12, generator=g)
    model = _MiteNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    zeros = []

    def data():
        step = 0
        while True:
            counts = 1.0 + torch.poisson(6.0 * torch.ones(64, 4), generator=gen)
            if step == CHEESE_STEP:
                counts[7, 2] = 0.0
            zeros.append(int((counts == 0).sum()))
            rest = torch.randn(64, 8, generator=gen)
            z = torch.cat([torch.log(counts.clamp_min(1.0)) - 1.9, rest], 1)
            yield torch.cat([counts, rest], 1), (z @ w > 0).float()
            step += 1

    losses, norms = _loop(ctx, model, opt, data(), 200, F.binary_cross_entropy_with_logits)
    ctx.check(
        "a zero count arrives at step 110 only",
        zeros[CHEESE_STEP] > 0 and sum(zeros) == zeros[CHEESE_STEP],
    )
    ctx.check("finite before step 110", _finite(losses[:CHEESE_STEP]))
    ctx.check("the gradient is non-finite at step 110", not math.isfinite(norms[CHEESE_STEP]))
    ctx.check(
        "the loss is non-finite at step 111",
        len(losses) > CHEESE_STEP + 1 and not math.isfinite(losses[CHEESE_STEP + 1]),
    )
    ctx.check(
        "trained first", _mean(losses[CHEESE_STEP - 10 : CHEESE_STEP]) < 0.8 * _mean(losses[:10])
    )


# -- 7. update ratio: a head lr typed 1e-9 -----------------------------------------------------------


@scenario(
    family="topiary_yew_regrowth_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Topiary yew regrowth regressor (ReLU MLP on cut depth, season, light and age "
    "features, MSE, RMSprop with two param groups: trunk and head). The head group's lr is "
    "typed 1e-9 for 1e-3: the head is effectively frozen at its random init while the trunk "
    "trains around it.",
)
def h478_topiary_head_lr_typo(ctx) -> None:
    gen = seeded(4787)
    model = _Net(10, 48, 1)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-9}]
    )
    h0 = model.head.weight.detach().clone()
    f0 = model.fc1.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4787), 200, F.mse_loss)
    dh = float((model.head.weight.detach() - h0).norm() / h0.norm())
    df = float((model.fc1.weight.detach() - f0).norm() / f0.norm())
    ctx.check("the head moved under 1e-5 of its norm", dh < 1e-5)
    ctx.check("fc1 moved over 5% of its norm", df > 0.05)
    ctx.check("finite throughout", _finite(losses))


# -- 8. loss of plasticity: fc2 bias initialised at -3 -----------------------------------------------


@scenario(
    family="kintsugi_gold_seam_width_relu_classifier",
    optimizer="SGD Nesterov",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Kintsugi gold-seam width grader (ReLU MLP on crack length, lacquer layers and "
    "powder features, 6 grades, cross-entropy, SGD Nesterov). The init helper meant to set "
    "fc2's bias to a small positive constant writes nn.init.constant_(fc2.bias, -3.0): almost "
    "every fc2 ReLU is dead from the start and never comes back, the loss stays near chance.",
)
def h478_kintsugi_negative_bias(ctx) -> None:
    gen = seeded(4788)
    model = _Net(12, 48, 6)
    nn.init.constant_(model.fc2.bias, -3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    probe = next(_grades(torch.Generator().manual_seed(1), 512, 12, 6, 4788))[0]
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 6, 4788), 200, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(probe))))
    ctx.check("over 90% of fc2's units dead at the end", dead > 0.9)
    ctx.check(
        "the loss stays near chance (over 0.8 log 6)", _mean(losses[-10:]) > 0.8 * math.log(6)
    )
    ctx.check("finite throughout", _finite(losses))


# -- 9. exploding gradients: an identity recurrent init scaled 1.08 -----------------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
        return h


class _WheelRNN(nn.Module):
    def __init__(self, d_in=3, hidden=24, gain=1.0):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden)
        with torch.no_grad():
            self.cell.rec.weight.copy_(gain * torch.eye(hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.cell(x)).squeeze(-1)


@scenario(
    family="millwright_waterwheel_rpm_irnn_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell", "cell.rec"),
    diverges="auto",
    heldout=True,
    note="Millwright waterwheel rpm forecaster (a hand-written ReLU Elman RNN with an IRNN "
    "identity recurrent init, 40 steps of head-race level, gate and load, MSE, plain SGD). The "
    "init is written gain * eye with gain 1.08 (meant 1.0): the hidden state and the gradients "
    "grow through time, the first updates are huge and the loss blows up.",
)
def h478_millwright_irnn_gain(ctx) -> None:
    gen = seeded(4789)

    def data(g):
        while True:
            x = 0.3 * torch.randn(32, 40, 3, generator=g)
            yield x, x[:, -10:, 0].mean(1) - 0.5 * x[:, -10:, 1].mean(1)

    def probe_grad(net):
        x, y = next(data(torch.Generator().manual_seed(3)))
        F.mse_loss(net(x), y).backward()
        n = float(net.cell.rec.weight.grad.norm())
        net.zero_grad(set_to_none=True)
        return n

    torch.manual_seed(47890)
    ref = _WheelRNN(gain=1.0)
    torch.manual_seed(47890)
    model = _WheelRNN(gain=1.08)
    g_ref, g_bad = probe_grad(ref), probe_grad(model)
    opt = torch.optim.SGD(model.parameters(), lr=2e-5)
    losses, _ = _loop(ctx, model, opt, data(gen), 150, F.mse_loss)
    ctx.check("rec's gradient over 10x the gain-1.0 init's", g_bad > 10 * g_ref)
    ctx.check(
        "the loss blows up (non-finite or over 1e3x its start)",
        not _finite(losses) or max(losses) > 1e3 * losses[0],
    )


# -- 10. gradient spike: a sample weight read in grams for one step ----------------------------------

SCRIM_STEP = 100


@scenario(
    family="scrimshaw_whalebone_etch_depth_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SCRIM_STEP,
    note="Scrimshaw etch-depth regressor (ReLU MLP on needle, pressure and bone-density "
    "features, MSE weighted by sample mass, SGD momentum, clipping at 1.0). At step 100 the "
    "weighting code reads the mass column in grams instead of kilograms: the backpropagated "
    "loss is 1000x for one step, a gradient burst that clipping absorbs; the logged loss is "
    "ordinary and the run carries on.",
)
def h478_scrimshaw_grams_weight(ctx) -> None:
    gen = seeded(4790)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        return loss * (1000.0 if step == SCRIM_STEP else 1.0)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4790), 220, F.mse_loss, backprop=backprop, clip=1.0
    )
    pre = _mean(losses[SCRIM_STEP - 10 : SCRIM_STEP])
    ctx.check("gradient at step 100 over 50x the median", norms[SCRIM_STEP] > 50 * _median(norms))
    ctx.check("the logged loss at step 100 ordinary (under 2x)", losses[SCRIM_STEP] < 2 * pre)
    ctx.check("recovers: last 10 under 2x the pre-spike level", _mean(losses[-10:]) < 2 * pre)
    ctx.check("finite throughout", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


class _SetPredictor(nn.Module):
    """Encodes a set of points, then K learnt object queries cross-attend to the encoding."""

    def __init__(self, d_in=4, dim=32, queries=3, classes=2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.queries = nn.Parameter(0.1 * torch.randn(queries, dim))
        self.cross = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.box = nn.Linear(dim, 2)
        self.cls = nn.Linear(dim, classes)

    def forward(self, pts):
        mem = self.encoder(pts)
        q = self.queries.expand(pts.shape[0], -1, -1)
        h, _ = self.cross(q, mem, mem)
        h = self.ln(h + q)
        h = h + self.ffn(h)
        return self.box(h), self.cls(h)


@scenario(
    family="snow_crystal_branch_tip_query_set_predictor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snow-crystal branch-tip set predictor (control): 24 noisy points around three tips, "
    "three learnt object queries cross-attend to the encoded points; query i is assigned to "
    "the tip of i-th smallest x (fixed, no matching). MSE on positions + cross-entropy on tip "
    "type, AdamW with weight decay, linear warm-up then cosine, clipping at 1.0.",
)
def h478_snow_crystal_set_control(ctx) -> None:
    gen = seeded(4791)

    def data():
        while True:
            c = torch.rand(32, 3, 2, generator=gen) * 2 - 1
            c = c.gather(1, c[:, :, :1].argsort(1).expand(-1, -1, 2))
            kind = torch.randint(0, 2, (32, 3), generator=gen)
            owner = torch.randint(0, 3, (32, 24), generator=gen)
            pos = c.gather(1, owner[..., None].expand(-1, -1, 2))
            pos = pos + 0.05 * torch.randn(32, 24, 2, generator=gen)
            kf = kind.gather(1, owner).float()[..., None]
            pts = torch.cat([pos, 2 * kf - 1, 0.3 * torch.randn(32, 24, 1, generator=gen)], -1)
            yield pts, (c, kind)

    def loss_fn(out, y):
        box, logits = out
        return F.mse_loss(box, y[0]) + F.cross_entropy(logits.reshape(-1, 2), y[1].reshape(-1))

    model = _SetPredictor()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 250) / 250))
    )
    losses, _ = _loop(ctx, model, opt, data(), 250, loss_fn, clip=1.0, sched=sched)
    ctx.check("the loss fell under 0.5x", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))


class _Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019): every k steps the slow weights move alpha of the way to
    the fast ones, and the fast weights restart from them."""

    def __init__(self, base, k=5, alpha=0.5):
        params = [p for g in base.param_groups for p in g["params"]]
        super().__init__(params, dict(base.defaults))
        self.base = base
        self.param_groups = base.param_groups
        self.state = base.state
        self.k, self.alpha, self.count, self.syncs = k, alpha, 0, 0
        self.slow = [p.detach().clone() for p in params]
        self.params = params

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.base.step(closure)
        self.count += 1
        if self.count % self.k == 0:
            for p, s in zip(self.params, self.slow, strict=True):
                s.add_(p - s, alpha=self.alpha)
                p.copy_(s)
            self.syncs += 1
        return loss


@scenario(
    family="whirlpool_eddy_lifetime_lookahead_gaussian_nll",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Whirlpool eddy-lifetime regressor (control): SiLU MLP predicting a mean and a log "
    "variance, Gaussian NLL, Adam wrapped in a hand-written Lookahead (k=5, alpha=0.5: slow "
    "weights pulled half-way to the fast ones every 5 steps).",
)
def h478_whirlpool_lookahead_control(ctx) -> None:
    gen = seeded(4792)
    model = _Net(8, 48, 2, act=nn.SiLU)
    opt = _Lookahead(torch.optim.Adam(model.parameters(), lr=2e-3), k=5, alpha=0.5)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 4792, noise=0.2), 240, loss_fn)
    ctx.check(
        "the loss fell by over 0.5 nats",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
    ctx.check("slow weights synced every 5 steps", opt.syncs == 240 // 5)
    ctx.check("finite throughout", _finite(losses))


class _BuzzNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


@scenario(
    family="crwth_string_buzz_onecycle_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Crwth string-buzz classifier (control): ReLU Conv1d on noisy 64-sample clips of four "
    "buzz frequencies, cross-entropy with label smoothing 0.1, SGD Nesterov under OneCycleLR, "
    "gradient accumulation over 2 micro-batches, clipping at 2.0.",
)
def h478_crwth_onecycle_control(ctx) -> None:
    gen = seeded(4793)
    t = torch.arange(64).float()

    def data():
        while True:
            y = torch.randint(0, 4, (16,), generator=gen)
            f = (2 + 3 * y.float())[:, None]
            ph = 6.28 * torch.rand(16, 1, generator=gen)
            x = torch.sin(6.28 * f * t / 64 + ph) + 0.5 * torch.randn(16, 64, generator=gen)
            yield x, y

    model = _BuzzNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx, model, opt, data(), 200, loss_fn, classifier=True, sched=sched, accumulate=2, clip=2.0
    )
    ctx.check("the loss fell under 0.6x", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))
