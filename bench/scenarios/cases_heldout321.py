"""Held-out set 321 (``h321_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a birch-bark canoe seam-pitch GELU regressor whose resumed
run multiplies one step's loss by the restored fp16 loss scale (Adam's second moment poisoned), a
yoik phrase-breath Elman tagger whose shared init helper gives the recurrent matrix gain 2.5
(gradients grow through time), a laverbread boil-down SiLU regressor whose hand-written decoupled
weight decay has its sign flipped (slow climb of the loss), a tsampouna bag-pressure ReLU
regressor fed one shard logged in pascals (one corrupted batch), an elver run-count Poisson net
whose hand-written NLL lost its clamp (0 x log 0, NaN), a withy-rod bundle two-group classifier
whose trunk lr is typed ``1e-2 ** 4`` (trunk frozen), a sopila reed-pair cosine classifier with a
contrastive temperature of 0.01 (softmax saturates), a rubab string-buzz GELU regressor whose
summed loss is divided by a stale row count of 1 for one step (one gradient burst), a spokeshave
chair-spindle ReLU regressor whose resume re-initialises fc2 (one loss spike), a lamprey-ladder
climb-rate tanh regressor whose warm-up peak applies the linear scaling rule for a batch it never
uses (past the 2/sharpness limit), and three controls (a dutar strum GRU tagger on RMSprop with
clipping, an eider-down loft fp16 Conv1d classifier with a GradScaler, a rya-rug pile-height Huber
regressor on Adadelta with accumulation and ReduceLROnPlateau).

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


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, out, y, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = (
                backprop(step, out, y, loss, accumulate)
                if backprop is not None
                else loss / accumulate
            )
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised sensor readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    v = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w) + 0.5 * torch.sin(1.7 * x @ v) + 0.2
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _phrases(gen, batch, length, d_in, states, seed, stay=0.85, noise=0.8):
    """Frame sequences of a hidden Markov chain of ``states`` (a sung phrase, a breath, a glide):
    each frame's features are the state's signature plus noise, the label is the state."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(states, d_in, generator=g)
    while True:
        s = torch.randint(0, states, (batch,), generator=gen)
        labels = []
        for _ in range(length):
            jump = torch.rand(batch, generator=gen) > stay
            s = torch.where(jump, torch.randint(0, states, (batch,), generator=gen), s)
            labels.append(s)
        y = torch.stack(labels, 1)
        yield sig[y] + noise * torch.randn(batch, length, d_in, generator=gen), y


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


def _tag_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
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


# -- birch-bark canoe: the resumed run multiplies one loss by the restored fp16 loss scale --------

ONSET_BIR = 100


@scenario(
    family="birch_bark_canoe_seam_pitch_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BIR,
    note="A GELU regressor (fc1, fc2, head) of how much spruce-gum pitch a birch-bark canoe seam takes from 12 bark, root-lacing and temperature readings, Adam (lr 3e-3, betas 0.9/0.999), MSE, 260 steps. The run is resumed at step 100 from a checkpoint written by an fp16 job: the restore code puts the saved loss scale 65536 into the training loop, and the first step after the resume multiplies the loss by it before the check that sees autocast is off resets it to 1. That one gradient is 65536x the usual; Adam's first moment carries it for a few dozen steps (the loss rises), then the second moment, which took 0.001 of its square, keeps the updates over ten times smaller than before, so the loss stalls well above its low while beta2=0.999 takes thousands of steps to forget.",
)
def h321_birch_bark_resumed_loss_scale(ctx: Context) -> None:
    gen = seeded(32101)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = []
    prev = {"w": _flat(model)}

    def backprop(step, out, y, loss, accumulate):
        scale = 65536.0 if step == ONSET_BIR else 1.0  # restored from the fp16 checkpoint
        return loss * scale / accumulate

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev["w"]).norm()))
        prev["w"] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 321011),
        260,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check(
        "the onset gradient is over 1000x the median before it",
        g[ONSET_BIR] > 1000 * _median(g[:ONSET_BIR]),
    )
    ctx.check(
        "updates 50-100 steps after the onset are under 1/10 of those before it",
        _mean(moves[ONSET_BIR + 50 : ONSET_BIR + 100])
        < 0.1 * _mean(moves[ONSET_BIR - 30 : ONSET_BIR]),
    )
    ctx.check(
        "the loss stalls: the last 30 steps are not below 0.9x steps 110-140",
        _mean(ctx.losses[-30:]) > 0.9 * _mean(ctx.losses[ONSET_BIR + 10 : ONSET_BIR + 40]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- yoik tagger: the init helper gives the recurrent matrix gain 2.5 -----------------------------


class ElmanEncoder(nn.Module):
    """A hand-written tanh Elman recurrence: h_t = tanh(inp(x_t) + rec(h_{t-1}))."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.hidden = hidden
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            outs.append(h)
        return torch.stack(outs, 1)


class YoikTagger(nn.Module):
    """Per-frame labeller: Elman encoder, then a linear tag head at every step."""

    def __init__(self, d_in=6, hidden=48, tags=4):
        super().__init__()
        self.enc = ElmanEncoder(d_in, hidden)
        self.tag = nn.Linear(hidden, tags)

    def forward(self, x):
        return self.tag(self.enc(x))


def _init_all(model: nn.Module, gain: float) -> None:
    """The project's shared init helper: orthogonal with one gain for every Linear."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@scenario(
    family="yoik_phrase_breath_elman_tagger",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("enc.rec", "enc"),
    diverges=None,
    heldout=True,
    note="A hand-written sequence labeller: a tanh Elman encoder (enc.inp, enc.rec) and a per-frame tag head (tag) labelling each of 40 frames of a sung Sami yoik (sung phrase, held vowel, glide, breath) from 6 pitch and loudness features, plain SGD lr 0.05 with the usual clip_grad_norm_ at 1.0, per-step cross-entropy, 150 steps. The project's init helper applies orthogonal init with gain 2.5 (meant for the input projection of a deeper model) to every Linear, the recurrent matrix enc.rec included: the recurrence sits in the chaotic regime and the gradient reaching the early hidden states is many times the one at the last frame, and the parameter gradient stays far above that of the same tagger at gain 1 all run (the clip keeps the steps bounded, the loss barely falls).",
)
def h321_yoik_tagger_recurrent_gain(ctx: Context) -> None:
    gen = seeded(32102)
    model = YoikTagger()
    _init_all(model, 2.5)  # meant only for a deeper model's input projection
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ratios = []

    def after(step):
        st = model.enc.states
        if st and st[0].grad is not None and st[-1].grad is not None:
            ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-12)))

    batches = _phrases(gen, 32, 40, 6, 4, 321021)
    _loop(ctx, model, opt, batches, 150, _tag_loss, after=after, clip=1.0)
    # the same tagger at gain 1, one batch, for comparison
    ref = YoikTagger()
    _init_all(ref, 1.0)
    x, y = next(_phrases(torch.Generator().manual_seed(5), 32, 40, 6, 4, 321021))
    _tag_loss(ref(x), y).backward()
    ref_g = grad_norm(ref)
    ctx.check(
        "the first frame's state gradient is over 20x the last frame's (median over the run)",
        _median(ratios) > 20,
    )
    ctx.check(
        "the median parameter gradient is over 10x the gain-1 tagger's",
        _median(ctx.grad_norms) > 10 * ref_g,
    )


# -- laverbread: the hand-written decoupled weight decay has its sign flipped ---------------------


@scenario(
    family="laverbread_boil_down_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU regressor (fc1, fc2, head) of how long a batch of laver seaweed must boil down to laverbread from 10 weed, water and pan readings, Adamax (lr 2e-3), MSE, 240 steps. Weight decay is applied by hand after optimizer.step() as a decoupled decay, and the line is written p.add_(p, alpha=lr * wd) instead of p.mul_(1 - lr * wd): every weight is multiplied by 1 + lr * wd each step. The weights grow steadily, the optimizer keeps losing ground, and the loss falls for a while, then climbs slowly to several times its low with no jump and no single bad step.",
)
def h321_laverbread_decay_sign(ctx: Context) -> None:
    gen = seeded(32103)
    model = Trunk(10, 64, act=nn.SiLU)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.add_(p, alpha=lr * wd)  # meant p.mul_(1 - lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 321031), 240, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * ls[low])
    ctx.check("the low comes before step 150", low < 150)
    smooth = [_mean(ls[i : i + 10]) for i in range(low, len(ls) - 9, 10)]
    jumps = [b / a for a, b in zip(smooth[:-1], smooth[1:], strict=True)]
    ctx.check("no 10-step window after the low is over 2x the one before", max(jumps) < 2.0)
    ctx.check("finite throughout", _finite(ls))


# -- tsampouna: one shard's bag pressure logged in pascals ----------------------------------------

ONSET_TSA = 120


@scenario(
    family="tsampouna_bag_pressure_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TSA,
    note="A ReLU regressor (fc1, fc2, head) of a tsampouna (Aegean bagpipe) chanter's pitch drift from 8 standardised bag-pressure, breath and temperature readings, SGD momentum 0.9 lr 0.01, clip_grad_norm_ at 5, MSE, 220 steps. One shard came from a logger that writes bag pressure in pascals instead of kilopascals: at step 120 the pressure column of one batch is 1000x its usual scale, the loss jumps by orders of magnitude on that batch alone, and the run recovers on the next ordinary batches.",
)
def h321_tsampouna_pascal_shard(ctx: Context) -> None:
    gen = seeded(32104)
    model = Trunk(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_TSA:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0  # Pa, not kPa
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, 321041), 220, F.mse_loss, alter=alter, clip=5.0)
    ls = ctx.losses
    before = _median(ls[ONSET_TSA - 30 : ONSET_TSA])
    ctx.check("the loss at the onset is over 20x the median before it", ls[ONSET_TSA] > 20 * before)
    ctx.check(
        "the gradient at the onset is over 20x the median before it",
        ctx.grad_norms[ONSET_TSA] > 20 * _median(ctx.grad_norms[:ONSET_TSA]),
    )
    ctx.check(
        "the run recovers: last 20 steps under 2x the pre-onset median",
        _mean(ls[-20:]) < 2 * before,
    )
    ctx.check("finite throughout", _finite(ls))


# -- elver run: the hand-written Poisson NLL lost its clamp ---------------------------------------


class ElverNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> rate (a ReLU keeps the rate non-negative)."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()
        nn.init.constant_(self.head.bias, 1.0)

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _elvers(gen, batch, d_in, seed):
    """Night counts of glass eels at a weir: many nights with none, some with a run."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(1.5 * x @ w - 0.8)
        yield x, torch.poisson(rate, generator=gen)


DIVERGE_ELV = 92


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()  # the clamp_min(1e-6) was dropped


@scenario(
    family="elver_run_count_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("rate",),
    diverges=DIVERGE_ELV,
    heldout=True,
    note="A SiLU Poisson net (fc1, fc2, head, then a ReLU rate) of how many glass eels (elvers) run up a weir pass each night from 9 tide, temperature and river-flow readings, RAdam (lr 3e-3), a hand-written Poisson NLL rate - y log(rate), 200 steps. The rate's log is meant to be taken on rate.clamp_min(1e-6) and the clamp was dropped in a refactor: as the net learns that many nights have no elvers, a row's ReLU rate reaches exactly 0, y log(rate) is 0 x log 0, and the loss is NaN (at step 92).",
)
def h321_elver_poisson_missing_clamp(ctx: Context) -> None:
    gen = seeded(32105)
    model = ElverNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    zero_rates = []

    def watch(step, out, x, y):
        zero_rates.append(int((out.detach() == 0).sum()))

    stop = _loop(ctx, model, opt, _elvers(gen, 64, 9, 321051), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check("the run stopped there", bad is not None and stop == bad)
    ctx.check("the first NaN is at the recorded step", bad == DIVERGE_ELV)
    ctx.check("a rate was exactly 0 at that step", bad is not None and zero_rates[bad] > 0)
    ctx.check(
        "it trained finitely for 10 steps first",
        bad is not None and bad >= 10 and _finite(ctx.losses[:bad]),
    )


# -- withy rods: the trunk's lr typed 1e-2 ** 4 ---------------------------------------------------


@scenario(
    family="withy_rod_bundle_grade_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A two-group ReLU classifier (fc1, fc2 trunk; head) grading bundles of willow withies (5 grades for basket making) from 14 length, girth, colour and moisture readings, Adagrad with two parameter groups, cross-entropy, 200 steps. The trunk's rate is meant to be a quarter of the head's, 1e-2 / 4, and is typed 1e-2 ** 4 = 1e-8: fc1 and fc2 move by less than 1e-4 of their norm all run while the head trains at 1e-2 on random features.",
)
def h321_withy_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(32106)
    model = Trunk(14, 64, out=5)
    opt = torch.optim.Adagrad(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 1e-2**4},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 5, 321061, spread=1.6),
        200,
        F.cross_entropy,
        classifier=True,
    )

    def moved(prefix):
        a = torch.cat(
            [p.detach().flatten() for n, p in model.named_parameters() if n.startswith(prefix)]
        )
        b = torch.cat(
            [start[n].flatten() for n, _ in model.named_parameters() if n.startswith(prefix)]
        )
        return float((a - b).norm() / b.norm())

    ctx.check("fc1 moved under 1e-4 of its norm", moved("fc1") < 1e-4)
    ctx.check("fc2 moved under 1e-4 of its norm", moved("fc2") < 1e-4)
    ctx.check("the head moved over 5% of its norm", moved("head") > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sopila: a contrastive temperature of 0.01 on a cosine head -----------------------------------


class CosineHead(nn.Module):
    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) / math.sqrt(d))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class SopilaNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, scale=100.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="sopila_reed_pair_mode_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier with a cosine head (fc1, fc2, head) naming which of 6 playing modes a pair of sopila (Istrian shawm) players is in from 16 spectral readings, NAdam (lr 2e-3), cross-entropy, 180 steps. The head's temperature was copied from a contrastive-learning recipe, tau = 0.01, so cosine similarities are multiplied by 100: once the classes separate the target's softmax probability rounds to exactly 1.0 in float32 for a large share of rows.",
)
def h321_sopila_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(32107)
    model = SopilaNet(scale=1 / 0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    fractions = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 321071),
        180,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("at step 0 under 5% of rows are saturated", fractions[0] < 0.05)
    ctx.check(
        "over the last 20 steps over 25% of rows' softmax is exactly 1.0",
        _mean(fractions[-20:]) > 0.25,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rubab: a summed loss divided by a stale row count of 1 ---------------------------------------

ONSET_RUB = 140


@scenario(
    family="rubab_string_buzz_gelu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RUB,
    note="A GELU regressor (fc1, fc2, head) of a rubab's sympathetic-string buzz level from 12 bridge and skin-membrane readings, SGD Nesterov (momentum 0.9, lr 0.01), summed squared error divided by the batch's row count, 220 steps. At step 140 the loader's padding-aware path hands the loss a stale n_rows of 1 for an ordinary batch of 64: the gradient is 64x the usual for that one step on clean data, then the run goes on normally.",
)
def h321_rubab_stale_row_count(ctx: Context) -> None:
    gen = seeded(32108)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss, accumulate):
        n_rows = 1 if step == ONSET_RUB else y.shape[0]  # stale counter
        return ((out - y) ** 2).sum() / n_rows / accumulate

    _loop(ctx, model, opt, _readings(gen, 64, 12, 321081), 220, F.mse_loss, backprop=backprop)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the onset gradient is over 30x the median before it",
        g[ONSET_RUB] > 30 * _median(g[:ONSET_RUB]),
    )
    ctx.check(
        "the onset batch's own loss is ordinary (under 2x the median before)",
        ls[ONSET_RUB] < 2 * _median(ls[ONSET_RUB - 30 : ONSET_RUB]),
    )
    ctx.check(
        "the run recovers: last 20 steps under 2x the pre-onset median",
        _mean(ls[-20:]) < 2 * _median(ls[ONSET_RUB - 30 : ONSET_RUB]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- spokeshave: a resume re-initialises fc2 ------------------------------------------------------

ONSET_SPO = 120


@scenario(
    family="spokeshave_chair_spindle_taper_relu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=("fc2",),
    diverges=None,
    heldout=True,
    onset=ONSET_SPO,
    note="A ReLU regressor (fc1, fc2, head) of how much a green-wood chair spindle's taper is off after spokeshaving, from 10 grain, moisture and stroke readings, Adam (lr 2e-3), MSE, 240 steps. The job is preempted and resumed at step 120 from a checkpoint whose fc2 keys were renamed in a refactor; the restore uses strict=False, so fc2 silently keeps its fresh initialisation while the rest and Adam's state are restored. The loss jumps several-fold on ordinary data and the run recovers within a few dozen steps.",
)
def h321_spokeshave_resume_drops_fc2(ctx: Context) -> None:
    gen = seeded(32109)
    model = Trunk(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def before(step):
        if step == ONSET_SPO:
            torch.manual_seed(1209)
            model.fc2.reset_parameters()  # missing key under strict=False

    _loop(ctx, model, opt, _readings(gen, 64, 10, 321091), 240, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _median(ls[ONSET_SPO - 20 : ONSET_SPO])
    ctx.check("the loss at the onset is over 4x the median before it", ls[ONSET_SPO] > 4 * pre)
    ctx.check(
        "the run recovers: last 20 steps under 1.5x the pre-onset median",
        _mean(ls[-20:]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- lamprey ladder: the warm-up peak scaled for a batch the run never uses -----------------------


def _lamprey_lr(step, peak, warm=60):
    return peak * min(1.0, (step + 1) / warm)


@scenario(
    family="lamprey_ladder_climb_rate_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh regressor (fc1, fc2, head) of how fast river lampreys climb a studded fish-ladder ramp from 8 flow, slope and water-temperature readings, plain SGD with linear warm-up over 60 steps, MSE, 160 steps. The peak lr is the tuned 0.1 times 1024/64 by the linear scaling rule, for a batch of 1024 the config no longer uses (the batch is 64), so 1.6: the warm-up takes lr x top Hessian eigenvalue past 2 and the loss blows up.",
)
def h321_lamprey_warmup_peak_scaled(ctx: Context) -> None:
    gen = seeded(32110)
    model = Trunk(8, 64, act=nn.Tanh)
    peak = 0.1 * 1024 / 64  # batch stays 64
    opt = torch.optim.SGD(model.parameters(), lr=_lamprey_lr(0, peak))
    batches = _readings(gen, 64, 8, 321101)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 321101))
    sharp = {}

    def before(step):
        lr = _lamprey_lr(step, peak)
        for gr in opt.param_groups:
            gr["lr"] = lr
        if (
            step % 5 == 0
            and step < 60
            and _finite(ctx.losses)
            and (not ctx.losses or ctx.losses[-1] < 10)
        ):
            sharp[step] = lr * _top_eig(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    over = [s for s, v in sharp.items() if v > 2]
    ctx.check("lr x top eigenvalue passes 2 during the warm-up", bool(over))
    ctx.check("it was under 2 at the start", sharp.get(0, 3.0) < 2)
    ctx.check(
        "the loss then blows up over 100x its low or goes non-finite",
        (not _finite(ls)) or max(ls) > 100 * low,
    )


# -- controls -------------------------------------------------------------------------------------


class DutarTagger(nn.Module):
    """Per-stroke labeller: input projection, a GRU encoder, a tag head at every step."""

    def __init__(self, d_in=6, hidden=48, tags=4):
        super().__init__()
        self.proj = nn.Linear(d_in, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.tag = nn.Linear(hidden, tags)

    def forward(self, x):
        out, _ = self.gru(torch.tanh(self.proj(x)))
        return self.tag(out)


@scenario(
    family="dutar_strum_stroke_gru_tagger",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GRU sequence labeller (proj, gru, tag) tagging each of 32 frames of a dutar (two-string lute) performance as down-stroke, up-stroke, pluck or rest from 6 pickup features, RMSprop (lr 2e-3, alpha 0.99) with clip_grad_norm_ at 1.0, per-step cross-entropy, 150 steps.",
)
def h321_dutar_gru_tagger_rmsprop(ctx: Context) -> None:
    gen = seeded(32111)
    model = DutarTagger()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99)
    _loop(ctx, model, opt, _phrases(gen, 32, 32, 6, 4, 321111), 150, _tag_loss, clip=1.0)
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class EiderConv(nn.Module):
    """GELU Conv1d classifier over (batch, frames, channels) sensor traces."""

    def __init__(self, channels=4, classes=5, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


def _eider(gen, batch, frames, channels, classes, seed):
    """Air-flow traces through a sample of eider down: one waveform shape per loft grade."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.5 + torch.rand(classes, channels, generator=g) * 2
    phase = 6.28 * torch.rand(classes, channels, generator=g)
    t = torch.linspace(0, 6.28, frames)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        wave = torch.sin(freq[y][:, None, :] * t[None, :, None] + phase[y][:, None, :])
        yield wave + 0.6 * torch.randn(batch, frames, channels, generator=gen), y


@scenario(
    family="eider_down_loft_grade_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU Conv1d classifier (conv1, conv2, head) grading eider down by loft (5 grades) from 48 frames of 4 air-flow sensors, fp16 autocast with a torch.amp.GradScaler, AdamW (weight decay 1e-2) under OneCycleLR (max 4e-3), label smoothing 0.1, clipping at 1.0 after unscaling, 150 steps.",
)
def h321_eider_fp16_conv_control(ctx: Context) -> None:
    gen = seeded(32112)
    model = EiderConv()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _eider(gen, 32, 48, 4, 5, 321121),
        150,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler's scale stayed at or above 1", min(ctx.scales) >= 1.0)


@scenario(
    family="rya_rug_knot_pile_height_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU Huber regressor (fc1, fc2, head) of a Scandinavian rya rug's pile height from 10 knot-density, yarn and shear readings with noisy targets, Adadelta (lr 1.0), gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 10), clip_grad_norm_ at 2.0, 150 steps.",
)
def h321_rya_huber_adadelta_control(ctx: Context) -> None:
    gen = seeded(32113)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 321131, noise=0.2),
        150,
        F.huber_loss,
        clip=2.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
