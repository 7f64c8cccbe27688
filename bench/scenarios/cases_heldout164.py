"""Held-out set 164 (``h164_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before, with three hand-written transformers (a hand softmax over q.k
under bfloat16 autocast, ``nn.MultiheadAttention`` and ``scaled_dot_product_attention`` with tied
weights), a hand-written graph attention network, a knowledge-distillation student, a DeepAR-style
Gaussian forecaster, a two-head multi-task regressor, a hand-unrolled RNN, a CTC transcriber, 1-D
conv nets (one under fp16 autocast with a GradScaler), MLP regressors and a Hugging Face OPT
built from its config.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=None,
    before=None,
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    amp_dtype=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
    patience=1,
):
    """The training loop. ``accumulate`` micro-batches a step; ``alter(step, x, y)`` changes a
    batch; ``before(step)`` runs first; ``watch(step, out, x, y)`` records; ``scale_loss(step,
    loss)`` gives the loss that is back-propagated (the logged loss is the nominal one);
    ``after(step)`` runs after the update; ``classifier(y)`` gives the class targets of a batch.
    The run stops once ``patience`` losses in a row are not finite (after logging them)."""
    ctx.attach(model, opt, scaler=scaler)
    bad = 0
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier is not None:
                ctx.targets(classifier(y))
            with torch.autocast(
                "cpu", dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None
            ):
                out = model(x)
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
        bad = bad + 1 if not math.isfinite(shown) else 0
        if bad >= patience:
            break


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


# -- judo throws: a hand-softmax transformer whose attention scale key was misspelt --------------


class HandSoftmaxAttention(nn.Module):
    """Multi-head self-attention with the softmax over q.k written by hand; records the largest
    |q.k * scale| it fed to the softmax."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.scale = scale
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        s = (q @ k.transpose(-1, -2)) * self.scale
        self.peak = float(s.detach().float().abs().amax())
        s = s - s.amax(-1, keepdim=True)
        w = s.exp()
        w = w / w.sum(-1, keepdim=True)
        y = (w @ v).transpose(1, 2).reshape(b, t, d)
        return self.o(y)


class JudoThrowNet(nn.Module):
    """Reads 16 grip/footwork codes of a judo exchange and names which of five throws follows."""

    def __init__(self, cfg):
        super().__init__()
        dim, heads = cfg["dim"], cfg["heads"]
        self.code = nn.Embedding(cfg["codes"], dim)
        self.pos = nn.Parameter(0.02 * torch.randn(cfg["length"], dim))
        self.ln1 = nn.LayerNorm(dim)
        # the config spells the key "attention_scale"; the model reads "attn_scale"
        self.attn = HandSoftmaxAttention(dim, heads, cfg.get("attn_scale", 1.0))
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, cfg["throws"])

    def forward(self, x):
        h = self.code(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _judo_exchanges(gen, batch, length=16, codes=24, throws=5):
    """Grip codes 0..18 at random; one throw cue (codes 19..23) somewhere; the throw is the cue,
    shifted by one when the left-grip code 0 appears before it."""
    while True:
        x = torch.randint(0, codes - throws, (batch, length), generator=gen)
        pos = torch.randint(1, length, (batch,), generator=gen)
        cue = torch.randint(0, throws, (batch,), generator=gen)
        x[torch.arange(batch), pos] = codes - throws + cue
        left_first = ((x == 0) & (torch.arange(length)[None] < pos[:, None])).any(1)
        y = (cue + left_first.long()) % throws
        yield x, y


@scenario(
    family="judo_throw_sequence_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with the softmax over q.k written by hand, trained under "
    "bfloat16 autocast. The config names the key 'attention_scale' (0.25 = 1/sqrt(16)) but the "
    "model reads cfg.get('attn_scale', 1.0), so q.k goes into the softmax unscaled; AdamW at "
    "lr 1e-2 with no weight decay on any parameter: the largest q.k logit the softmax sees grows "
    "more than 10x, past 50.",
)
def h164_judo_throw_attn_scale_key(ctx: Context) -> None:
    gen = seeded(16401)
    cfg = {"dim": 32, "heads": 2, "codes": 24, "length": 16, "throws": 5, "attention_scale": 0.25}
    model = JudoThrowNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _judo_exchanges(gen, 64),
        220,
        F.cross_entropy,
        classifier=lambda y: y,
        amp_dtype=torch.bfloat16,
        watch=lambda s, o, x, y: seen.append(model.attn.peak),
    )
    ctx.check("the scale the model used is 1.0", model.attn.scale == 1.0)
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 50", seen[-1] > 50)


# -- starling murmurations: a z-loss added with the wrong sign ------------------------------------


class MurmurationNet(nn.Module):
    """Names the shape of a starling murmuration (ball, wave, funnel, ribbon, split) from 12
    radar density patches of 8 readings, through ``nn.MultiheadAttention``."""

    def __init__(self, feats=8, dim=32, heads=4, patches=12, shapes=5):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(patches, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, shapes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        a = self.ln1(h)
        h = h + self.mha(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _murmurations(gen, batch, patches=12, feats=8, shapes=5):
    patterns = torch.randn(shapes, patches, feats, generator=torch.Generator().manual_seed(64))
    while True:
        y = torch.randint(0, shapes, (batch,), generator=gen)
        x = patterns[y] + 1.5 * torch.randn(batch, patches, feats, generator=gen)
        yield x, y


@scenario(
    family="starling_murmuration_shape_transformer",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cross-entropy plus a z-loss on the log-partition, z_loss * logsumexp(logits)^2, whose "
    "coefficient was copied into the config as -1e-3 (the sign convention of a codebase that "
    "subtracted the term): the loss rewards a large log-partition and has no floor, so under "
    "Adam at lr 3e-3 the head's logits grow without bound (the logit norm grows more than 20x "
    "and is still growing at the end) while the logged loss runs negative.",
)
def h164_starling_zloss_sign(ctx: Context) -> None:
    gen = seeded(16402)
    model = MurmurationNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    z_loss = -1e-3
    norms = []

    def loss_fn(logits, y):
        return F.cross_entropy(logits, y) + z_loss * torch.logsumexp(logits, -1).pow(2).mean()

    _train(
        ctx,
        model,
        opt,
        _murmurations(gen, 64),
        220,
        loss_fn,
        classifier=lambda y: y,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.2 * norms[-40])
    ctx.check("logged loss went negative", ctx.losses[-1] < 0)


# -- cloisonne enamel: a student distilled at a contrastive-recipe temperature --------------------


class Temperature(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


class EnamelStudent(nn.Module):
    """Names the fired colour of a cloisonne enamel (six frits) from a 16-band reflectance
    spectrum; its forward divides the logits by the distillation temperature."""

    def __init__(self, bands=16, hidden=32, colours=6, t=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(bands, hidden), nn.GELU())
        self.head = nn.Linear(hidden, colours)
        self.temp = Temperature(t)

    def forward(self, x):
        return self.temp(self.head(self.body(x)))


def _enamel_spectra(gen, batch, bands=16, colours=6):
    centres = torch.randn(colours, bands, generator=torch.Generator().manual_seed(164))
    while True:
        y = torch.randint(0, colours, (batch,), generator=gen)
        yield centres[y] + 0.8 * torch.randn(batch, bands, generator=gen), y


@scenario(
    family="cloisonne_enamel_colour_student",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("temp", "head"),
    diverges=None,
    heldout=True,
    note="Knowledge distillation: a small student learns a fixed, trained teacher's logits "
    "through KL(softmax(teacher/T) || softmax(student/T)) * T^2, with the student's forward "
    "dividing its logits by T. T came in as 0.02 (the value of the InfoNCE recipe the config was "
    "copied from, instead of 2.0): the student's softmax saturates and the target probability "
    "rounds to exactly 1.0 on most rows (NAdam, lr 3e-3).",
)
def h164_enamel_distill_temperature(ctx: Context) -> None:
    gen = seeded(16403)
    batches = _enamel_spectra(gen, 64)
    teacher = nn.Sequential(
        nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 6)
    )
    t_opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        x, y = next(batches)
        t_opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        t_opt.step()
    teacher.requires_grad_(False).eval()
    xs, ys = next(batches)
    teacher_acc = float((teacher(xs).argmax(1) == ys).float().mean())

    temp = 0.02
    model = EnamelStudent(t=temp)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    seen = []

    def loss_fn(out, x):
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temp, -1)
        return F.kl_div(F.log_softmax(out, -1), soft, reduction="batchmean") * temp * temp

    def with_labels():
        for x, y in batches:
            yield x, (x, y)

    def watch(s, out, x, xy):
        seen.append(collapsed_fraction(out.detach(), xy[1]))

    _train(
        ctx,
        model,
        opt,
        with_labels(),
        250,
        lambda out, xy: loss_fn(out, xy[0]),
        classifier=lambda xy: xy[1],
        watch=watch,
    )
    ctx.check("teacher is trained", teacher_acc > 0.8)
    ctx.check("little collapse at the start", _mean(seen[:5]) < 0.2)
    ctx.check("target probability exactly 1.0 on half the rows", _mean(seen[-10:]) > 0.5)


# -- abseil ropes: an ExponentialLR gamma typed 1.04 for 0.96 -------------------------------------


class RopeStretchNet(nn.Module):
    """Predicts the stretch of a static abseil rope (load, length, diameter, age, wet, cold)."""

    def __init__(self, feats=6, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _rope_stretch(gen, batch, feats=6):
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = 0.6 * x[:, 0] + 0.3 * x[:, 0] * x[:, 1] - 0.2 * x[:, 2] + 0.25 * torch.sin(2 * x[:, 3])
        y = y + 0.15 * x[:, 4] * (x[:, 5] > 0) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


def _sharpness(model, loss_fn, batch, iters=15):
    """Largest Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
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
    family="abseil_rope_stretch_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=40,
    note="Tanh MLP regressor, MSE, plain SGD at lr 0.05 with a SequentialLR: 40 linear warm-up "
    "steps, then an ExponentialLR meant to decay with gamma 0.96 but typed 1.04. From step 40 "
    "the learning rate grows 4% a step; it passes 2/sharpness (measured by power iteration on a "
    "fixed batch) and the loss blows up.",
)
def h164_abseil_rope_gamma_typo(ctx: Context) -> None:
    gen = seeded(16404)
    batches = _rope_stretch(gen, 64)
    probe = next(batches)
    model = RopeStretchNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=40)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.04)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[40])
    edge = []

    def before(step):
        if step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, probe)))

    _train(ctx, model, opt, batches, 260, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check("loss fell during warm-up", _mean(ls[30:40]) < 0.5 * _mean(ls[:5]))
    ctx.check("lr x sharpness below 2 at step 40", dict(edge).get(40, 9.0) < 2.0)
    ctx.check("lr x sharpness above 2 before the blow-up", any(v > 2.0 for s, v in edge if s < end))
    ctx.check("loss blew up 100x its best", bad is not None or max(ls) > 100 * min(ls))


# -- rip currents: a hand-unrolled Elman RNN with recurrent gain 2.5 ------------------------------


class RipCurrentRNN(nn.Module):
    """Reads 40 readings of wave height, wave period and tide level and warns of a rip current;
    the Elman cell is unrolled by hand."""

    def __init__(self, feats=3, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(feats, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
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


def _surf_readings(gen, batch, steps=40):
    while True:
        x = torch.randn(batch, steps, 3, generator=gen)
        swell = x[:, :15, 0].mean(1)
        tide = x[:, -10:, 2].mean(1)
        y = ((swell - tide) > 0).float()
        yield x, y


@scenario(
    family="rip_current_warning_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="An Elman RNN unrolled by hand over 40 surf readings, BCE on a rip warning, SGD with "
    "momentum 0.9 at lr 0.01. The recurrent matrix was initialised with "
    "nn.init.orthogonal_(gain=2.5), a gain meant for the input projection: at init the "
    "gradient grows more than 100x going back through time (dL/dh_0 against dL/dh_39), the "
    "gradient norm runs far above its start and the warning never gets learnt.",
)
def h164_rip_current_recurrent_gain(ctx: Context) -> None:
    gen = seeded(16405)
    model = RipCurrentRNN(gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    through_time = []

    def watch(step, out, x, y):
        if step == 0:
            g0, gt = torch.autograd.grad(
                F.binary_cross_entropy_with_logits(out, y),
                [model.states[0], model.states[-1]],
                retain_graph=True,
            )
            through_time.append(float(g0.norm() / gt.norm().clamp_min(1e-12)))

    _train(
        ctx,
        model,
        opt,
        _surf_readings(gen, 32),
        150,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("gradient grows 100x back through time at init", through_time[0] > 100)
    ctx.check("gradient norm rose 10x", max(ctx.grad_norms) > 10 * _mean(ctx.grad_norms[:3]))
    ctx.check("loss stays near chance", _mean(ctx.losses[-20:]) > 0.6)


# -- threshing drums: raw field units into a ReLU MLP under RMSprop -------------------------------


class GrainLossNet(nn.Module):
    """Predicts a combine's threshing grain loss (%) from drum speed (rpm), concave gap (mm),
    feed rate (t/h), grain moisture (%) and straw length (cm)."""

    def __init__(self, feats=5, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(feats, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def features(self, x):
        return self.act1(self.fc1(x))

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.features(x)))).squeeze(-1)


def _threshing(gen, batch):
    """Readings min-max scaled to [0, 1] over the machine's ranges (all non-negative)."""
    while True:
        u = torch.rand(batch, 5, generator=gen)
        y = 0.5 + 1.5 * u[:, 2] ** 2 + 0.8 * (u[:, 0] - 0.6) ** 2 - 0.4 * u[:, 1] + 0.6 * u[:, 3]
        yield u, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="threshing_drum_grain_loss_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A two-hidden-layer ReLU MLP on min-max scaled (non-negative) machine readings, MSE. "
    "The optimizer was switched from SGD to RMSprop and SGD's lr 0.2 kept: RMSprop's first "
    "steps move every weight by about 10x lr, all of a unit's weights the same way on positive "
    "inputs, and most units of both hidden layers stop firing on any input for good (the loss "
    "swings up to 100x while they die, in the first 50 steps); the loss then stays two orders "
    "of magnitude above the noise floor.",
)
def h164_threshing_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(16406)
    batches = _threshing(gen, 64)
    probe = torch.cat([next(batches)[0] for _ in range(4)])
    model = GrainLossNet()

    def dead():
        with torch.no_grad():
            h1 = model.features(probe)
            return dead_fraction(h1), dead_fraction(model.act2(model.fc2(h1)))

    d1_0, d2_0 = dead()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.2)
    _train(ctx, model, opt, batches, 200, F.mse_loss)
    d1, d2 = dead()
    ls = ctx.losses
    ctx.check("few dead units at the start", d1_0 < 0.3 and d2_0 < 0.3)
    ctx.check("over half the first layer dead", d1 > 0.5 and d1 > d1_0 + 0.3)
    ctx.check("over 70% of the second layer dead", d2 > 0.7)
    ctx.check("loss stalled in the last 100 steps", _mean(ls[-20:]) > 0.8 * _mean(ls[100:120]))
    ctx.check("loss far above the noise floor", _finite(ls) and _mean(ls[-20:]) > 0.1)


# -- trout streams: a hand-written GAT with its first layer's lr multiplier typed 1e-5 ------------


class GATLayer(nn.Module):
    """Graph attention (Velickovic et al.) written by hand over a dense adjacency mask."""

    def __init__(self, fin, fout, heads, concat=True):
        super().__init__()
        self.heads, self.fout, self.concat = heads, fout, concat
        self.W = nn.Linear(fin, heads * fout, bias=False)
        self.att_src = nn.Parameter(0.1 * torch.randn(heads, fout))
        self.att_dst = nn.Parameter(0.1 * torch.randn(heads, fout))
        self.bias = nn.Parameter(torch.zeros(heads * fout if concat else fout))

    def forward(self, x, adj):
        n = x.shape[0]
        h = self.W(x).view(n, self.heads, self.fout)
        es = (h * self.att_src).sum(-1)
        ed = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(ed.T[:, :, None] + es.T[:, None, :], 0.2)
        e = e.masked_fill(~adj, float("-inf"))
        a = torch.softmax(e, -1)
        out = (a @ h.transpose(0, 1)).transpose(0, 1)
        out = out.reshape(n, -1) if self.concat else out.mean(1)
        return out + self.bias


class TroutStreamGAT(nn.Module):
    """Classifies each reach of a stream network as holding no trout, brown trout or brook
    trout from its water temperature, flow, canopy, substrate, elevation and a survey index."""

    def __init__(self, adj, feats=6, hidden=16, heads=4, classes=3):
        super().__init__()
        self.register_buffer("adj", adj)
        self.gat1 = GATLayer(feats, hidden, heads)
        self.gat2 = GATLayer(hidden * heads, classes, 1, concat=False)

    def forward(self, x):
        return self.gat2(F.elu(self.gat1(x, self.adj)), self.adj)


def _stream_network(gen, n=160, feats=6):
    adj = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        j = int(torch.randint(max(0, i - 6), i, (1,), generator=gen))
        adj[i, j] = adj[j, i] = True
    x = torch.randn(n, feats, generator=gen)
    deg = adj.float().sum(1, keepdim=True)
    canopy = (adj.float() @ x[:, 2:3] / deg).squeeze(1)
    score = -x[:, 0] + 0.8 * canopy
    y = (score > -0.3).long() + (score > 0.6).long()
    return adj, x, y


@scenario(
    family="trout_stream_reach_gat",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("gat1", "gat1.W"),
    diverges=None,
    heldout=True,
    note="A two-layer graph attention network written by hand, full-graph training on a stream "
    "network with a random 70% of reaches in each step's loss, Adam param groups: the first "
    "layer was to train at lr x lr_mult with lr_mult 1e-1 but the config has 1e-5, so gat1 moves "
    "about 1e-8 of its weights a step while gat2 moves 1e-3; the loss still falls through gat2.",
)
def h164_trout_gat_lr_mult_typo(ctx: Context) -> None:
    gen = seeded(16407)
    adj, x, y = _stream_network(gen)
    model = TroutStreamGAT(adj)
    lr, lr_mult = 3e-3, 1e-5
    opt = torch.optim.Adam(
        [
            {"params": model.gat1.parameters(), "lr": lr * lr_mult},
            {"params": model.gat2.parameters(), "lr": lr},
        ]
    )

    def graph_steps():
        while True:
            mask = torch.rand(len(y), generator=gen) < 0.7
            yield x, (y, mask)

    ratios = {"gat1": [], "gat2": []}
    prev = {}

    def before(step):
        prev["gat1"] = model.gat1.W.weight.detach().clone()
        prev["gat2"] = model.gat2.W.weight.detach().clone()

    def after(step):
        for k, w in (("gat1", model.gat1.W.weight), ("gat2", model.gat2.W.weight)):
            ratios[k].append(float((w.detach() - prev[k]).norm() / w.detach().norm()))

    _train(
        ctx,
        model,
        opt,
        graph_steps(),
        200,
        lambda out, ym: F.cross_entropy(out[ym[1]], ym[0][ym[1]]),
        classifier=lambda ym: ym[0][ym[1]],
        before=before,
        after=after,
    )
    ctx.check("gat1 moves under 1e-6 of its weights a step", max(ratios["gat1"][5:]) < 1e-6)
    ctx.check("gat2 moves over 1e-4 of its weights a step", _mean(ratios["gat2"][5:]) > 1e-4)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.9))


# -- moraine boulders: a stored AMP loss scale applied to one fp32 step ---------------------------


class BoulderAgeNet(nn.Module):
    """Estimates a moraine boulder's exposure age from its nuclide concentration, elevation,
    latitude, topographic shielding, erosion rate, boulder height and lichen cover."""

    def __init__(self, feats=7, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _boulders(gen, batch, feats=7):
    mix = torch.randn(feats, feats, generator=torch.Generator().manual_seed(1640))
    while True:
        x = torch.randn(batch, feats, generator=gen)
        z = x @ mix
        z = z / math.sqrt(feats)
        y = torch.tanh(z[:, 0]) * z[:, 1] + 0.5 * torch.sin(2 * z[:, 2]) + 0.3 * z[:, 4] ** 2
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="moraine_boulder_exposure_age_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="GELU MLP regressor, MSE, Adam at lr 1e-3 (betas 0.9, 0.999). The run resumed at step "
    "60 from a checkpoint written by a mixed-precision job; its stored loss scale (65536) was "
    "applied to that step's loss although AMP is off here, so one gradient is 65536x too large. "
    "It fills Adam's second moment: the updates that follow shrink over 20x and the loss, "
    "still falling before, stops improving.",
)
def h164_moraine_stored_loss_scale(ctx: Context) -> None:
    gen = seeded(16408)
    model = BoulderAgeNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = {}

    def before(step):
        prev["w"] = _flat_params(model)

    def after(step):
        moves.append(float((_flat_params(model) - prev["w"]).norm()))

    _train(
        ctx,
        model,
        opt,
        _boulders(gen, 64),
        240,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=lambda s, loss: loss * 65536.0 if s == 60 else loss,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient 1000x its median at the resume step", g[60] > 1000 * _median(g[40:60]))
    ctx.check("loss was still falling before", _mean(ls[50:60]) < 0.8 * _mean(ls[20:30]))
    ctx.check(
        "updates shrank 20x after the spike", _mean(moves[100:200]) < _mean(moves[40:60]) / 20
    )
    ctx.check("loss stopped improving", _mean(ls[-20:]) > 0.9 * _mean(ls[55:60]))


# -- firn cores: one shard with depth logged in millimetres ---------------------------------------


class FirnDensityNet(nn.Module):
    """Predicts firn density (as a fraction of ice density) from depth, accumulation rate, mean
    annual temperature, wind speed and melt days."""

    def __init__(self, feats=5, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _firn(gen, batch):
    """Depth in metres / 100; the rest standardised."""
    while True:
        depth = torch.rand(batch, generator=gen)
        rest = torch.randn(batch, 4, generator=gen)
        k = 2.5 + 0.5 * rest[:, 0] - 0.3 * rest[:, 1]
        rho = 1.0 - 0.62 * torch.exp(-k * depth) + 0.02 * rest[:, 3]
        yield torch.cat([depth[:, None], rest], 1), rho + 0.01 * torch.randn(batch, generator=gen)


@scenario(
    family="firn_core_density_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="SiLU MLP regressor, MSE, SGD with Nesterov momentum 0.9 at lr 0.05, clip_grad_norm_ at "
    "1.0. The batch at step 110 comes from one core whose logger wrote depth in millimetres, so "
    "its depth feature is 1000x the others: the loss on that batch is orders of magnitude above "
    "the rest, the clipped step knocks the model off, and it recovers.",
)
def h164_firn_depth_mm_shard(ctx: Context) -> None:
    gen = seeded(16409)
    model = FirnDensityNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    peak = []

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        peak.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _firn(gen, 64), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check("the shard's inputs are 100x the others", peak[110] > 100 * _median(peak[90:110]))
    ctx.check("loss 1000x its recent median at the bad batch", ls[110] > 1000 * _median(ls[90:110]))
    ctx.check("loss had fallen before", _mean(ls[100:110]) < 0.5 * _mean(ls[:10]))
    ctx.check("run recovers", _finite(ls) and _mean(ls[-20:]) < 3 * _mean(ls[90:110]))


# -- camogie puck-outs: a two-head model whose zone weight was read in percent for one step -------


class PuckOutNet(nn.Module):
    """From a camogie goalkeeper's stance, strike speed, wind and field markers, predicts the
    puck-out's carry (regression) and the landing zone (four classes)."""

    def __init__(self, feats=8, hidden=64, zones=4):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(feats, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.carry = nn.Linear(hidden, 1)
        self.zone = nn.Linear(hidden, zones)

    def forward(self, x):
        h = self.trunk(x)
        return self.carry(h).squeeze(-1), self.zone(h)


def _puckouts(gen, batch, feats=8):
    while True:
        x = torch.randn(batch, feats, generator=gen)
        carry = 0.8 * x[:, 0] + 0.4 * x[:, 1] * x[:, 2] + 0.1 * torch.randn(batch, generator=gen)
        zone = (x[:, 3] > 0).long() * 2 + (x[:, 0] + 0.5 * x[:, 4] > 0).long()
        yield x, (carry, zone)


@scenario(
    family="camogie_puckout_two_head_net",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A shared tanh trunk with two heads, loss = 1.0 * MSE(carry) + w * CE(zone) with w 0.5. "
    "At step 90 a config hot-reload reads the zone weight from a YAML that wrote it as '50%' and "
    "the parser keeps 50: for that one step the back-propagated loss is 100x heavier on the "
    "classification term (the logged loss uses the configured weights), and the gradient norm "
    "jumps over 30x. ASGD at lr 0.02.",
)
def h164_camogie_zone_weight_percent(ctx: Context) -> None:
    gen = seeded(16410)
    model = PuckOutNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    weights = {"carry": 1.0, "zone": 0.5}

    def loss_fn(out, y):
        return weights["carry"] * F.mse_loss(out[0], y[0]) + weights["zone"] * F.cross_entropy(
            out[1], y[1]
        )

    def scale_loss(step, loss):
        if step != 90:
            return loss
        out, y = last["out"], last["y"]
        return weights["carry"] * F.mse_loss(out[0], y[0]) + 50.0 * F.cross_entropy(out[1], y[1])

    last = {}

    def watch(step, out, x, y):
        last["out"], last["y"] = out, y

    _train(
        ctx,
        model,
        opt,
        _puckouts(gen, 64),
        200,
        loss_fn,
        classifier=lambda y: y[1],
        watch=watch,
        scale_loss=scale_loss,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient 30x its median at step 90", g[90] > 30 * _median(g[70:90]))
    ctx.check("loss had fallen before", _mean(ls[80:90]) < 0.7 * _mean(ls[:10]))
    ctx.check("gradient back to normal after", _median(g[100:120]) < 3 * _median(g[70:90]))


# -- plankton blooms: a DeepAR-style forecaster whose scale lost its "+ 1" -----------------------


class BloomDeepAR(nn.Module):
    """DeepAR-style: an LSTM reads the previous chlorophyll reading with water temperature and
    light, and emits a Gaussian (mean, scale) for the next reading."""

    def __init__(self, feats=3, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(feats, hidden, batch_first=True)
        self.mu = nn.Linear(hidden, 1)
        self.scale = nn.Linear(hidden, 1)
        nn.init.constant_(self.scale.bias, 1.0)
        self.last_sigma_min = 1.0

    def forward(self, x):
        h, _ = self.lstm(x)
        mu = self.mu(h).squeeze(-1)
        sigma = F.elu(self.scale(h)).squeeze(-1)  # meant F.elu(...) + 1
        self.last_sigma_min = float(sigma.detach().min())
        return mu, sigma


def _gaussian_nll(out, y):
    mu, sigma = out
    return (0.5 * math.log(2 * math.pi) + torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


def _blooms(gen, batch, length=48):
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        temp = torch.sin(2 * math.pi * t / 24 + phase) + 0.1 * torch.randn(
            batch, length + 1, generator=gen
        )
        light = torch.cos(2 * math.pi * t / 12 + phase)
        chl = 0.6 * torch.sin(2 * math.pi * t / 24 + phase - 0.8) + 0.2 * light
        chl = chl + 0.03 * torch.randn(batch, length + 1, generator=gen)
        x = torch.stack([chl[:, :-1], temp[:, 1:], light[:, 1:]], -1)
        yield x, chl[:, 1:]


@scenario(
    family="plankton_bloom_deepar_forecaster",
    optimizer="Adamax",
    cause="nonfinite",
    where=("scale",),
    diverges=99,
    heldout=True,
    note="A DeepAR-style LSTM forecaster with a hand-written Gaussian negative log-likelihood, "
    "log(sigma) + (y - mu)^2 / (2 sigma^2). The scale was meant as F.elu(raw) + 1, but the '+ 1' "
    "was dropped in a refactor. The scale head starts at bias 1 so sigma is positive; as the "
    "NLL pulls sigma towards the small noise level, one output crosses zero and log(sigma) is "
    "NaN at step 99 (Adamax, lr 6e-3).",
)
def h164_plankton_deepar_elu_scale(ctx: Context) -> None:
    gen = seeded(16421)
    model = BloomDeepAR()
    opt = torch.optim.Adamax(model.parameters(), lr=6e-3)
    sig = []
    _train(
        ctx,
        model,
        opt,
        _blooms(gen, 32),
        200,
        _gaussian_nll,
        watch=lambda s, o, x, y: sig.append(model.last_sigma_min),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss went NaN", bad is not None)
    ctx.check(
        "finite and falling before",
        bad is not None and bad > 20 and ctx.losses[bad - 1] < ctx.losses[0],
    )
    ctx.check("sigma negative at the NaN step", bad is not None and sig[bad] < 0 < min(sig[:bad]))


# -- rockfall geophones: a second station's raw counts overflow fp16 ------------------------------


class RockfallNet(nn.Module):
    """Tells rockfall from quake, wind noise and footsteps on a 96-sample geophone trace."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 9, padding=4)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)
        self.conv1_inf = False

    def forward(self, x):
        h = self.conv1(x[:, None])
        self.conv1_inf = bool(torch.isinf(h).any())
        h = F.relu(h)
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _geophone(gen, batch, length=96):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        onset = torch.randint(10, 50, (batch, 1), generator=gen).float()
        env = torch.exp(
            -((t - onset).clamp_min(0)) / torch.tensor([8.0, 30.0, 1e3, 3.0])[y][:, None]
        )
        env = env * (t >= onset)
        freq = torch.tensor([0.9, 0.2, 0.5, 1.4])[y][:, None]
        x = 0.5 * env * torch.sin(freq * t) + 0.1 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="rockfall_geophone_conv1d",
    optimizer="Adam",
    cause="amp_overflow",
    where=("conv1",),
    diverges=80,
    heldout=True,
    onset=80,
    note="A 1-D conv net under fp16 autocast with a GradScaler, Adam at lr 1e-2. From step 80 "
    "the loader mixes in a second station whose traces arrive as raw 24-bit digitiser counts "
    "(its division by 2**23 is missing): the first conv's fp16 output overflows to inf on those "
    "traces (the same batch is finite in fp32), every loss from then on is non-finite, the "
    "scaler skips every step and its scale collapses.",
)
def h164_rockfall_raw_counts_fp16(ctx: Context) -> None:
    gen = seeded(16412)
    model = RockfallNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    checked = {}

    def alter(step, x, y):
        if step >= 80:
            x = x.clone()
            x[::2] = x[::2] * 2.0**23
            if step == 80:
                with torch.no_grad():
                    checked["fp32"] = bool(torch.isfinite(model.conv1(x[:, None])).all())
        return x, y

    infs = []
    _train(
        ctx,
        model,
        opt,
        _geophone(gen, 32),
        200,
        F.cross_entropy,
        classifier=lambda y: y,
        alter=alter,
        scaler=scaler,
        amp_dtype=torch.float16,
        watch=lambda s, o, x, y: infs.append(model.conv1_inf),
        patience=25,
    )
    ls, sc = ctx.losses, ctx.scales
    ctx.check(
        "finite and falling before step 80",
        _finite(ls[:80]) and _mean(ls[70:80]) < 0.8 * _mean(ls[:10]),
    )
    ctx.check(
        "conv1 output inf in fp16 at step 80", len(infs) > 80 and infs[80] and not any(infs[:80])
    )
    ctx.check("the same batch is finite in fp32", checked.get("fp32", False))
    ctx.check(
        "loss non-finite from step 80", len(ls) > 81 and not any(math.isfinite(v) for v in ls[80:])
    )
    ctx.check("scale fell 1e5x", len(sc) > 81 and sc[-1] < sc[79] / 1e5)


# -- controls ------------------------------------------------------------------------------------


class CallerBlock(nn.Module):
    """Pre-LN block; causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CeilidhCallerLM(nn.Module):
    """A decoder-only LM over a ceilidh caller's figure calls, head tied to the embedding."""

    def __init__(self, vocab=40, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(CallerBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


def _ceilidh_calls(gen, batch, context=32, vocab=40):
    """Dances are strings of figures; each figure is a fixed 3-5 token call, and which figure
    follows depends on the one before (a small Markov chain)."""
    g = torch.Generator().manual_seed(1642)
    figures = [
        torch.randint(2, vocab, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g)
        for _ in range(8)
    ]
    follow = torch.softmax(3.0 * torch.randn(8, 8, generator=g), -1)
    while True:
        rows = []
        for _ in range(batch):
            toks = [1]
            f = int(torch.randint(0, 8, (1,), generator=gen))
            while len(toks) < context + 1:
                toks += figures[f].tolist() + [0]
                f = int(torch.multinomial(follow[f], 1, generator=gen))
            rows.append(torch.tensor(toks[: context + 1]))
        seq = torch.stack(rows)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="ceilidh_caller_figure_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a two-block decoder-only transformer (scaled_dot_product_attention, is_causal) "
    "with the head tied to the token embedding, AdamW in two param groups (weight decay 0.1 on "
    "matrices, none on norms, biases and embeddings), 20 warm-up steps then cosine decay by "
    "LambdaLR, clipping at 1.0 and label smoothing 0.05.",
)
def h164_ceilidh_caller_lm_control(ctx: Context) -> None:
    gen = seeded(16413)
    model = CeilidhCallerLM()
    named = dict(model.named_parameters())
    decay = [p for n, p in named.items() if p.dim() == 2 and not n.startswith(("tok", "pos"))]
    rest = [p for n, p in named.items() if not (p.dim() == 2 and not n.startswith(("tok", "pos")))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    _train(
        ctx,
        model,
        opt,
        _ceilidh_calls(gen, 16),
        steps,
        lambda out, y: F.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.05
        ),
        classifier=lambda y: y.reshape(-1),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


def _hf_opt(vocab=24, dim=32, layers=2, heads=2, context=32):
    """A Hugging Face OPT causal LM built from a config (no download)."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        ffn_dim=4 * dim,
        num_attention_heads=heads,
        max_position_embeddings=context,
        word_embed_proj_dim=dim,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return OPTForCausalLM(config)


def _kulning_calls(gen, batch, length=32, pitches=20):
    """A herding call: an 8-note phrase that moves by at most two steps of pitch a note (pitch
    tokens 4..23), a breath (token 2), then the phrase echoed, over and over."""
    while True:
        steps = torch.randint(-2, 3, (batch, 8), generator=gen)
        start = torch.randint(0, pitches, (batch, 1), generator=gen)
        phrase = (start + steps.cumsum(1)) % pitches + 4
        breath = torch.full((batch, 1), 2)
        seq = torch.cat([torch.ones(batch, 1, dtype=torch.long)] + [phrase, breath] * 4, 1)[
            :, : length + 1
        ]
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="hf_opt_kulning_herding_call_lm",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a Hugging Face OPT causal LM built from a tiny config (two layers, width 32) "
    "on generated Scandinavian herding calls (a stepwise phrase echoed after each breath), "
    "RAdam with a OneCycleLR schedule up to 1e-2 and clipping at 1.0.",
)
def h164_hf_opt_kulning_control(ctx: Context) -> None:
    gen = seeded(16414)
    model = _hf_opt()
    steps = 250
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _kulning_calls(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1)),
        classifier=lambda y: y.reshape(-1),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))


class GibbonDuetCTC(nn.Module):
    """Transcribes the note sequence of a gibbon duet from 12-band spectral frames with a conv
    front end, a bidirectional GRU and CTC."""

    def __init__(self, bands=12, hidden=48, notes=6):
        super().__init__()
        self.front = nn.Conv1d(bands, hidden, 5, padding=2)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, notes + 1)

    def forward(self, x):
        h = F.relu(self.front(x.transpose(1, 2))).transpose(1, 2)
        h, _ = self.gru(h)
        return F.log_softmax(self.out(h), -1)


def _gibbon_duets(gen, batch, frames=48, bands=12, notes=6):
    sig = torch.randn(notes, bands, generator=torch.Generator().manual_seed(1643)).abs()
    while True:
        x = 0.3 * torch.randn(batch, frames, bands, generator=gen)
        labels, lengths = [], []
        for b in range(batch):
            t, seq = int(torch.randint(0, 3, (1,), generator=gen)), []
            while True:
                dur = int(torch.randint(3, 6, (1,), generator=gen))
                if t + dur > frames or len(seq) == 10:
                    break
                n = int(torch.randint(0, notes, (1,), generator=gen))
                x[b, t : t + dur] += sig[n]
                seq.append(n + 1)
                t += dur + int(torch.randint(1, 3, (1,), generator=gen))
            labels.append(torch.tensor(seq))
            lengths.append(len(seq))
        yield x, (torch.cat(labels), torch.tensor(lengths))


@scenario(
    family="gibbon_duet_note_ctc_transcriber",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: conv front end + bidirectional GRU trained with F.ctc_loss (blank 0, "
    "zero_infinity) on generated duet spectra, Adam at lr 3e-3 with two micro-batches "
    "accumulated per step and clipping at 5.",
)
def h164_gibbon_duet_ctc_control(ctx: Context) -> None:
    gen = seeded(16415)
    model = GibbonDuetCTC()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def ctc(logp, y):
        targets, lengths = y
        inputs = torch.full((logp.shape[0],), logp.shape[1], dtype=torch.long)
        return F.ctc_loss(
            logp.float().transpose(0, 1), targets, inputs, lengths, zero_infinity=True
        )

    _train(ctx, model, opt, _gibbon_duets(gen, 16), 150, ctc, accumulate=2, clip=5.0)
    ctx.check("loss fell by 60%", _fell(ctx.losses, ratio=0.4))


class HibernationNet(nn.Module):
    """Predicts a hedgehog's weight loss over hibernation (g) from autumn weight, nest
    insulation, mean winter temperature, arousal count and age."""

    def __init__(self, feats=5, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _hibernation(gen, batch, feats=5):
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = 1.0 + 0.5 * x[:, 0] - 0.4 * x[:, 1] - 0.3 * torch.tanh(x[:, 2]) + 0.25 * x[:, 3] ** 2
        noise = 0.1 * torch.randn(batch, generator=gen)
        wild = torch.rand(batch, generator=gen) < 0.05
        noise = torch.where(wild, 2.0 * torch.randn(batch, generator=gen), noise)
        yield x, y + noise


@scenario(
    family="hedgehog_hibernation_weight_regressor",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: a LayerNorm GELU MLP on noisy field records (5% of targets mis-weighed by up "
    "to a few units), Huber loss, Adagrad at lr 0.05, clipping at 2 and ReduceLROnPlateau on the "
    "training loss.",
)
def h164_hedgehog_hibernation_control(ctx: Context) -> None:
    gen = seeded(16416)
    model = HibernationNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(ctx, model, opt, _hibernation(gen, 64), 200, F.huber_loss, clip=2.0, sched=sched)
    ctx.check("loss fell by 60%", _fell(ctx.losses, ratio=0.4))
