"""Held-out set 168 (``h168_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: three hand-written transformers (a hand softmax over q.k,
``scaled_dot_product_attention`` and ``nn.MultiheadAttention`` with tied embeddings), a
WaveNet-style dilated causal 1-D conv, an exponential survival model with a hand-written
log-likelihood, a mixture of experts with a softmax router and a load-balancing loss, a
margin-ranking two-tower, a multi-task model with learnt (Kendall-style) uncertainty weights, a
hand-unrolled RNN and plain MLP regressors and classifiers.

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
    batch,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    stop_on_nan=True,
):
    """The training loop: ``batch(step)`` gives (x, y), ``loss_fn(model, x, y)`` the loss,
    ``accumulate`` micro-batches a step, ``scale_loss(step, loss)`` changes the loss that is
    back-propagated, ``before(step)`` / ``after(step)`` run around the update."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = batch(step)
            if classifier:
                ctx.targets(y.reshape(-1))
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                loss = loss_fn(model, x, y).float() / accumulate
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach())
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
        if stop_on_nan and math.isnan(shown):
            break


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


# -- pibroch grace notes: a hand softmax over q.k without the 1/sqrt(d) --------------------------


class GraceAttention(nn.Module):
    """Self-attention written by hand: softmax over q.k scores (the port dropped the
    1/sqrt(head_dim)); records the largest logit the softmax saw."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        scores = q @ k.transpose(-1, -2)  # the 1/sqrt(head_dim) was lost in the port
        self.last_max = float(scores.detach().abs().amax())
        y = torch.softmax(scores, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class PibrochNet(nn.Module):
    """Names which of four grace-note embellishments (doubling, throw, grip, taorluath) a
    16-note chanter phrase carries: the phrase's first note (the theme note) tells which later
    note is embellished; classified from the first position."""

    def __init__(self, notes=12, dim=32, length=16, classes=4):
        super().__init__()
        self.note = nn.Embedding(notes, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = GraceAttention(dim, 2)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.note(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h[:, 0])


def _pibroch(gen, batch=64, notes=12, length=16):
    x = torch.randint(0, notes, (batch, length), generator=gen)
    where = 1 + x[:, 0] % (length - 4)
    return x, x[torch.arange(batch), where] % 4


@scenario(
    family="pibroch_grace_note_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with attention written by hand (softmax over q.k). The port "
    "from a reference that folded the scale into the q projection's init dropped the "
    "1/sqrt(head_dim), and AdamW runs at lr 1e-2 with weight decay 0: the q.k logits the softmax "
    "sees grow more than 10x, past 50.",
)
def h168_pibroch_grace_unscaled_attention(ctx: Context) -> None:
    gen = seeded(16801)
    model = PibrochNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []

    def loss_fn(m, x, y):
        out = m(x)
        seen.append(m.attn.last_max)
        return F.cross_entropy(out, y)

    _train(ctx, model, opt, lambda s: _pibroch(gen), 300, loss_fn, classifier=True)
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 50", seen[-1] > 50)


# -- decathlon event profile: a temperature of 1e-3 dividing the head's logits -------------------


class EventAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DecathlonNet(nn.Module):
    """Reads an athlete's ten event scores as ten tokens (value projection + event embedding)
    and names the profile: sprinter, jumper, thrower or all-rounder."""

    def __init__(self, dim=32, classes=4, temperature=1.0):
        super().__init__()
        self.value = nn.Linear(1, dim)
        self.event = nn.Parameter(0.02 * torch.randn(10, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = EventAttention(dim, 4)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        h = self.value(x[..., None]) + self.event
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1)) / self.temperature


_GROUPS = (torch.tensor([0, 4, 5, 9]), torch.tensor([1, 3, 7]), torch.tensor([2, 6, 8]))


def _decathlon(gen, batch=64):
    x = torch.randn(batch, 10, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    for g, idx in enumerate(_GROUPS):
        x[:, idx] += 1.5 * (y == g).float()[:, None]
    return x, y


@scenario(
    family="decathlon_event_transformer",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A transformer over the ten event scores (scaled_dot_product_attention). The config's "
    "'temperature: 1e-3' (meant for the score smoothing) is read by the model and divides the "
    "head's logits: the float32 softmax saturates (almost every row has a probability of exactly "
    "1.0), the confidently wrong rows give losses in the tens and the model barely learns.",
)
def h168_decathlon_temperature_divides_logits(ctx: Context) -> None:
    gen = seeded(16802)
    model = DecathlonNet(temperature=1e-3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, saturated = [], []

    def loss_fn(m, x, y):
        out = m(x)
        collapsed.append(collapsed_fraction(out.detach(), y))
        saturated.append(float((torch.softmax(out.detach(), -1).amax(-1) == 1.0).float().mean()))
        return F.cross_entropy(out, y)

    _train(ctx, model, opt, lambda s: _decathlon(gen), 150, loss_fn, classifier=True)
    ctx.check("60% of rows have a probability of exactly 1.0", _mean(saturated[-20:]) > 0.6)
    ctx.check("a fifth of rows give the target exactly 1.0", _mean(collapsed[-20:]) > 0.2)
    ctx.check("the loss stays above 5 (confidently wrong rows)", _mean(ctx.losses[-20:]) > 5)


# -- glazier pane deflection: CosineAnnealingLR with eta_min above the base lr -------------------


class PaneNet(nn.Module):
    """Predicts a glass pane's centre deflection under wind load from span, height, thickness,
    glass type and load (standardised)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


def _pane_data(gen, n=512):
    x = torch.randn(n, 5, generator=gen)
    y = 0.8 * x[:, 0] * x[:, 4] + 0.5 * torch.tanh(x[:, 1]) - 0.6 * x[:, 2] + 0.2 * x[:, 3]
    return x, y + 0.05 * torch.randn(n, generator=gen)


def _sharpness(model, loss_of, iters=20):
    """Top Hessian eigenvalue by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        g = torch.autograd.grad(loss_of(), params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="glazier_pane_deflection_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP regressor with plain SGD at lr 0.02 and CosineAnnealingLR(T_max=300). "
    "eta_min was typed 1e0 for 1e-3, above the base lr, so the 'annealing' raises the lr along "
    "the cosine towards 1.0: lr x sharpness passes 2 and the loss blows up.",
)
def h168_glazier_cosine_eta_min_typo(ctx: Context) -> None:
    gen = seeded(16803)
    x, y = _pane_data(gen)
    model = PaneNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300, eta_min=1e0)
    probe_x, probe_y = x[:256], y[:256]
    products = []

    def batch(step):
        idx = torch.randint(0, len(y), (128,), generator=gen)
        return x[idx], y[idx]

    def before(step):
        if step % 10 == 0 and not products or (step % 10 == 0 and math.isfinite(products[-1][1])):
            lr = opt.param_groups[0]["lr"]
            lam = _sharpness(model, lambda: F.mse_loss(model(probe_x), probe_y))
            products.append((step, lr * lam))

    _train(
        ctx, model, opt, batch, 300, lambda m, a, b: F.mse_loss(m(a), b), sched=sched, before=before
    )
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    low = min(finite)
    ctx.check("the loss fell first", low < 0.3 * ls[0])
    ctx.check("then blew up 100x", max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * low)
    ctx.check("lr x sharpness was below 2 at the start", products[0][1] < 2)
    ctx.check("lr x sharpness passed 2", max(p for _, p in products if math.isfinite(p)) > 2)


# -- spelunking echo: a hand-unrolled RNN with recurrent gain 1.6 -------------------------------


class EchoRNN(nn.Module):
    """Reads 40 samples of a cave tap-and-echo recording with a hand-unrolled tanh RNN and
    predicts the echo delay (the chamber's depth)."""

    def __init__(self, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t, None]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.out(h).squeeze(-1)


def _echo(gen, batch=32, length=40):
    delay = torch.randint(3, 30, (batch,), generator=gen)
    x = 0.05 * torch.randn(batch, length, generator=gen)
    x[:, 0] += 1.0
    x[torch.arange(batch), delay] += 0.6
    return x, (delay.float() - 16) / 8


@scenario(
    family="spelunking_echo_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A tanh RNN unrolled by hand over 40 samples, SGD with Nesterov momentum at lr 0.01. "
    "The recurrent weight is initialised orthogonal with gain 2.0 (the recipe's 1.0 edited "
    "while trying to fix vanishing gradients): gradients grow back through time, the first "
    "state's gradient is hundreds of times the last's, the first gradient norm over 20 times "
    "the gain-1 model's; its update throws the cell into saturation and gradient bursts recur.",
)
def h168_spelunking_echo_recurrent_gain(ctx: Context) -> None:
    gen = seeded(16804)
    model = EchoRNN(gain=2.0)
    ref = EchoRNN(gain=1.0)
    ref.inp.load_state_dict(model.inp.state_dict())
    ref.out.load_state_dict(model.out.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ratios = []

    def loss_fn(m, x, y):
        return F.mse_loss(m(x), y)

    def after(step):
        st = model.states
        if st[0].grad is not None and st[-1].grad is not None:
            ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-12)))

    x0, y0 = _echo(seeded(16814))
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    F.mse_loss(model(x0), y0).backward()
    init_norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    _train(ctx, model, opt, lambda s: _echo(gen), 120, loss_fn, after=after)
    ctx.check("first state's gradient 10x the last's at step 0", ratios[0] > 10)
    ctx.check("the init's gradient norm 20x the gain-1 model's", init_norm > 20 * ref_norm)
    ctx.check(
        "gradient norms keep bursting 5x past the gain-1 model's",
        max(ctx.grad_norms[10:]) > 5 * ref_norm,
    )


# -- whittling knife angle: SGD's lr kept for RMSprop, ReLUs die ---------------------------------


class KnifeNet(nn.Module):
    """Classifies the bevel (flat, convex, Scandi, micro-bevel) from a whittler's stroke:
    angle readings in degrees and pressures in newtons."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        self.h1 = F.relu(self.fc1(x))
        return self.head(F.relu(self.fc2(self.h1)))


def _knife(gen, batch=64):
    y = torch.randint(0, 4, (batch,), generator=gen)
    angle = 20 + 4 * y.float()[:, None] + 3 * torch.randn(batch, 6, generator=gen)
    force = 15 + 5 * (y % 2).float()[:, None] + 4 * torch.randn(batch, 6, generator=gen)
    return torch.cat([angle, force], 1), y


@scenario(
    family="whittling_knife_bevel_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP on raw degrees and newtons. Switching from SGD to RMSprop kept SGD's lr "
    "0.1: the first normalised steps push the first layer's pre-activations negative and most "
    "of its ReLUs die for good; the loss stalls near chance.",
)
def h168_whittling_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(16805)
    model = KnifeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    dead = []

    def loss_fn(m, x, y):
        out = m(x)
        dead.append(dead_fraction(m.h1.detach()))
        return F.cross_entropy(out, y)

    _train(ctx, model, opt, lambda s: _knife(gen), 150, loss_fn, classifier=True)
    ctx.check("the dead fraction rose by 0.3", _mean(dead[-10:]) > dead[0] + 0.3)
    ctx.check("most first-layer units dead at the end", _mean(dead[-10:]) > 0.6)
    ctx.check("the loss is still above 1.0", _mean(ctx.losses[-10:]) > 1.0)


# -- vintner blend ranking: the encoder's lr multiplier typed 1e-7 -------------------------------


class BlendRanker(nn.Module):
    """Scores a wine blend from its 16 lab and tasting measurements; trained on pairs a judge
    ranked."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)


def _blends(gen, batch=64):
    w = torch.linspace(-1, 1, 16)
    a = torch.randn(batch, 16, generator=gen)
    b = torch.randn(batch, 16, generator=gen)

    def quality(z):
        return z @ w + 0.5 * torch.sin(2 * z[:, 0]) * z[:, 1]

    y = torch.sign(quality(a) - quality(b))
    return torch.stack([a, b]), y


@scenario(
    family="vintner_blend_margin_ranker",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="A two-tower blend scorer trained with F.margin_ranking_loss and Adagrad param groups: "
    "the encoder's lr multiplier was typed 1e-7 for 1e-1, so its updates are ~1e-8 of its "
    "weights while the head's are percent-sized; the encoder is effectively frozen at init.",
)
def h168_vintner_encoder_lr_multiplier_typo(ctx: Context) -> None:
    gen = seeded(16806)
    model = BlendRanker()
    base = 0.05
    opt = torch.optim.Adagrad(
        [
            {"params": model.encoder.parameters(), "lr": base * 1e-7},
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    enc0 = torch.cat([p.detach().reshape(-1) for p in model.encoder.parameters()]).clone()
    head0 = torch.cat([p.detach().reshape(-1) for p in model.head.parameters()]).clone()

    def loss_fn(m, x, y):
        return F.margin_ranking_loss(m(x[0]), m(x[1]), y, margin=0.5)

    _train(ctx, model, opt, lambda s: _blends(gen), 150, loss_fn)
    enc1 = torch.cat([p.detach().reshape(-1) for p in model.encoder.parameters()])
    head1 = torch.cat([p.detach().reshape(-1) for p in model.head.parameters()])
    enc_change = float((enc1 - enc0).norm() / enc0.norm())
    head_change = float((head1 - head0).norm() / head0.norm())
    ctx.check("the encoder moved less than 1e-5 of its norm", enc_change < 1e-5)
    ctx.check("the head moved more than 5% of its norm", head_change > 0.05)


# -- barista extraction: a static loss scale left on for one step poisons Adam ------------------


class ExtractionNet(nn.Module):
    """Predicts espresso extraction yield from dose, grind, temperature, pressure, time and
    bean age."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _shots(gen, batch=64):
    x = torch.randn(batch, 6, generator=gen)
    y = 0.7 * x[:, 1] - 0.4 * x[:, 1] ** 2 + 0.5 * x[:, 2] + 0.3 * x[:, 4] * x[:, 3] - 0.2 * x[:, 5]
    return x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="barista_extraction_yield_mlp",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP with Adam (beta2 0.9999). On the step after resuming from a checkpoint "
    "written by the fp16 run, the stored static loss scale 65536 multiplies the loss and is "
    "not undone: one gradient 65536x too large fills Adam's second moment, and the updates "
    "afterwards shrink by orders of magnitude once its momentum has decayed; the loss stalls.",
    onset=80,
)
def h168_barista_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(16807)
    model = ExtractionNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
    moves = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        lambda s: _shots(gen),
        220,
        lambda m, x, y: F.mse_loss(m(x), y),
        scale_loss=lambda s, loss: loss * 65536.0 if s == 80 else loss,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("the gradient at step 80 is 1000x the median", g[80] > 1000 * _median(g[40:80]))
    ctx.check("updates 60 steps on are 8x smaller", _mean(moves[140:220]) < _mean(moves[40:78]) / 8)


# -- dolphin click range: one shard with the range in millimetres ---------------------------------


class ClickNet(nn.Module):
    """Estimates a target's range (metres) from a dolphin echolocation click's echo features."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 48)
        self.fc2 = nn.Linear(48, 48)
        self.out = nn.Linear(48, 1)

    def forward(self, x):
        return self.out(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


def _clicks(gen, batch=64):
    x = torch.randn(batch, 10, generator=gen)
    y = 5 + 2 * x[:, 0] + 0.5 * x[:, 1] * x[:, 2] - x[:, 3]
    return x, y + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="dolphin_click_range_mlp",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP range regressor with SGD momentum 0.9 and clip_grad_norm_(1.0). One shard "
    "came from the tag firmware that logs range in millimetres: the batch at step 120 has its "
    "targets 1000x too large; the loss and the (pre-clip) gradient spike on that batch only.",
    onset=120,
)
def h168_dolphin_millimetre_shard(ctx: Context) -> None:
    gen = seeded(16808)
    model = ClickNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def batch(step):
        x, y = _clicks(gen)
        return (x, y * 1000.0) if step == 120 else (x, y)

    _train(ctx, model, opt, batch, 240, lambda m, x, y: F.mse_loss(m(x), y), clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the loss at step 120 is 1000x the median", ls[120] > 1000 * _median(ls[80:120]))
    ctx.check("the gradient at step 120 is 100x the median", g[120] > 100 * _median(g[80:120]))
    ctx.check("the run finished finite", _finite(ls))


# -- lighthouse lamp failures: an exponential hazard without its softplus ------------------------


class LampHazard(nn.Module):
    """Exponential survival model of lighthouse lamp (and mantle) failures from burn hours,
    voltage, salt exposure and maintenance covariates: a hazard rate per lamp."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.hazard = nn.Linear(32, 1)
        nn.init.constant_(self.hazard.bias, 1.0)

    def forward(self, x):
        return self.hazard(self.body(x)).squeeze(-1)  # softplus dropped in a refactor


def _lamps(gen, batch=64):
    x = torch.randn(batch, 8, generator=gen)
    rate = torch.exp(0.6 * x[:, 0] - 0.4 * x[:, 1])
    t = -torch.log(torch.rand(batch, generator=gen)) / rate
    censor = 0.3 + 2 * torch.rand(batch, generator=gen)
    event = (t < censor).float()
    return x, torch.stack([torch.minimum(t, censor), event], 1)


@scenario(
    family="lighthouse_lamp_hazard_survival",
    optimizer="Adam",
    cause="nonfinite",
    where=("hazard",),
    diverges=53,
    heldout=True,
    note="An exponential survival model with the log-likelihood written by hand, "
    "event * log(rate) - rate * time. A refactor dropped the softplus on the hazard head, so "
    "the rate is a raw Linear output; censored lamps push their rate down without bound, it "
    "crosses 0 and log of a negative rate (times event 0) gives NaN.",
)
def h168_lighthouse_hazard_without_softplus(ctx: Context) -> None:
    gen = seeded(16809)
    model = LampHazard()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    lowest = []

    def loss_fn(m, x, y):
        rate = m(x)
        lowest.append(float(rate.detach().min()))
        t, event = y[:, 0], y[:, 1]
        return -(event * torch.log(rate) - rate * t).mean()

    _train(ctx, model, opt, lambda s: _lamps(gen), 200, loss_fn)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss became NaN", bad is not None)
    ctx.check("a rate was not positive when it did", bad is not None and lowest[bad] <= 0)
    ctx.check("the loss was finite first", bad is not None and bad > 5)


# -- hydraulic ram pump: a logger writing pascals overflows fp16 --------------------------------


class RamPumpNet(nn.Module):
    """Predicts a hydraulic ram pump's delivery flow from drive pressure, head, valve timing and
    supply readings (raw kPa and metres)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)


def _ram(gen, batch=64):
    x = torch.randn(batch, 8, generator=gen)
    y = 0.5 * x[:, 0] - 0.3 * x[:, 1] + 0.2 * x[:, 2] * x[:, 3]
    x[:, 0] = 150 + 30 * x[:, 0]  # drive pressure in kPa
    return x, y


@scenario(
    family="hydraulic_ram_pump_flow_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=100,
    heldout=True,
    note="A ReLU MLP under fp16 autocast with a GradScaler. From step 100 the batches come from a "
    "new pressure logger writing pascals instead of kPa (values ~150000): the first layer's "
    "fp16 input and output pass 65504, the loss is inf, every step is skipped and the scale "
    "halves step after step.",
    onset=100,
)
def h168_hydraulic_ram_pascal_logger(ctx: Context) -> None:
    gen = seeded(16810)
    model = RamPumpNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def batch(step):
        x, y = _ram(gen)
        if step >= 100:
            x[:, 0] = x[:, 0] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        batch,
        140,
        lambda m, x, y: F.mse_loss(m(x), y),
        scaler=scaler,
        stop_on_nan=False,
    )
    ls = ctx.losses
    ctx.check("finite before step 100", _finite(ls[:100]))
    ctx.check("non-finite from step 100", not any(math.isfinite(v) for v in ls[100:]))
    ctx.check("the loss scale fell 2^10 after it", ctx.scales[-1] < ctx.scales[99] / 1024)


# -- flute embouchure: a hand cross-entropy without its log-sum-exp ------------------------------


class EmbouchureNet(nn.Module):
    """Classifies a flautist's embouchure fault (covered, spread, high, rolled-out, fine) from
    16 tone-spectrum bins."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.body(x))


def _tones(gen, batch=64):
    y = torch.randint(0, 5, (batch,), generator=gen)
    x = 0.8 * torch.randn(batch, 16, generator=gen)
    x[torch.arange(batch), 3 * y] += 1.5
    return x, y


@scenario(
    family="flute_embouchure_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP classifier whose cross-entropy was written by hand as "
    "mean(logits) - logit[target], the log-sum-exp dropped: the loss has no floor and Adamax "
    "keeps pushing the head's logits apart, their norm grows 20x and is still growing.",
)
def h168_flute_hand_ce_without_logsumexp(ctx: Context) -> None:
    gen = seeded(16811)
    model = EmbouchureNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    norms = []

    def loss_fn(m, x, y):
        logits = m(x)
        norms.append(float(logits.detach().norm(dim=1).mean()))
        return (logits.mean(1) - logits.gather(1, y[:, None]).squeeze(1)).mean()

    _train(ctx, model, opt, lambda s: _tones(gen), 200, loss_fn, classifier=True)
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.2 * norms[-50])


# -- fly-tying dubbing: decoupled weight decay with the wrong sign -------------------------------


class DubbingNet(nn.Module):
    """Predicts a dry fly's float time from dubbing fibre, hackle, hook and floatant features."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1)
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _flies(gen, batch=64):
    x = torch.randn(batch, 8, generator=gen)
    y = torch.tanh(x[:, 0]) + 0.5 * x[:, 1] - 0.3 * x[:, 2] * x[:, 3]
    return x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="fly_tying_float_time_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP with SGD momentum and a hand-written decoupled weight decay "
    "p.add_(p, alpha=lr * wd) (the minus sign lost): after the loss falls the weights inflate "
    "step after step and the loss climbs slowly, with no spike and no other mechanism.",
)
def h168_fly_tying_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(16812)
    model = DubbingNet()
    lr, wd = 0.02, 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    norm0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)

    _train(
        ctx,
        model,
        opt,
        lambda s: _flies(gen),
        300,
        lambda m, x, y: F.mse_loss(m(x), y),
        after=after,
    )
    ls = ctx.losses
    low = min(ls[:150])
    ctx.check("the loss fell first", low < 0.5 * _mean(ls[:5]))
    ctx.check("then climbed 3x above its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("weights inflated 3x", float(_flat(model).norm()) > 3 * norm0)


# -- control: barbershop chord LM (nn.MultiheadAttention, tied embeddings) ------------------------


class ChordBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class ChordLM(nn.Module):
    """Predicts the next chord of a barbershop quartet tag (24 chord symbols) with a causal
    decoder whose output head is tied to the chord embedding."""

    def __init__(self, chords=24, dim=32, length=24):
        super().__init__()
        self.tok = nn.Embedding(chords, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(ChordBlock(dim, 4) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, chords, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        h = self.tok(x) + self.pos[:t]
        for b in self.blocks:
            h = b(h, mask)
        return self.head(self.ln_f(h))


def _tags(gen, batch=32, length=25, chords=24):
    moves = torch.tensor([5, 7, 2, 10])
    start = torch.randint(0, chords, (batch,), generator=gen)
    style = torch.randint(0, 4, (batch,), generator=gen)
    seq = [start]
    for i in range(length - 1):
        step = moves[(style + i) % 4]
        flip = torch.rand(batch, generator=gen) < 0.1
        seq.append((seq[-1] + torch.where(flip, 1, step)) % chords)
    s = torch.stack(seq, 1)
    return s[:, :-1], s[:, 1:]


@scenario(
    family="barbershop_tag_chord_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a two-block causal decoder through nn.MultiheadAttention with tied "
    "embeddings, AdamW param groups (no decay on norms, biases, positions), linear warm-up "
    "then cosine (LambdaLR), clipping at 1.0, label smoothing 0.1.",
)
def h168_barbershop_chord_lm_control(ctx: Context) -> None:
    gen = seeded(16813)
    model = ChordLM()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "pos"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 200

    def factor(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss_fn(m, x, y):
        logits = m(x)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=0.1
        )

    _train(
        ctx,
        model,
        opt,
        lambda s: _tags(gen),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))


# -- control: stalactite drip WaveNet (dilated causal convs) ---------------------------------------


class GatedCausalLayer(nn.Module):
    def __init__(self, channels, dilation):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * channels, 2, dilation=dilation)
        self.res = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        h = self.conv(F.pad(x, (self.dilation, 0)))
        a, b = h.chunk(2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        return x + self.res(z), self.skip(z)


class DripWaveNet(nn.Module):
    """Predicts the next sample of a cave drip-sensor trace (drip impulses, ringing and
    seepage drift) with WaveNet-style gated dilated causal convolutions."""

    def __init__(self, channels=16):
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 1)
        self.layers = nn.ModuleList(GatedCausalLayer(channels, d) for d in (1, 2, 4, 8, 16))
        self.post = nn.Sequential(
            nn.ReLU(), nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.Conv1d(channels, 1, 1)
        )

    def forward(self, x):
        h = self.inp(x[:, None])
        skips = 0
        for layer in self.layers:
            h, s = layer(h)
            skips = skips + s
        return self.post(skips).squeeze(1)


def _drips(gen, batch=16, length=129):
    t = torch.arange(length).float()
    period = torch.randint(12, 30, (batch, 1), generator=gen).float()
    phase = torch.rand(batch, 1, generator=gen) * period
    since = torch.remainder(t - phase, period)
    ring = torch.exp(-since / 4) * torch.cos(1.3 * since)
    drift = 0.3 * torch.sin(t / 40 + 6 * torch.rand(batch, 1, generator=gen))
    s = ring + drift + 0.03 * torch.randn(batch, length, generator=gen)
    return s[:, :-1], s[:, 1:]


@scenario(
    family="stalactite_drip_wavenet",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a WaveNet-style stack of gated dilated causal 1-D convolutions (dilations 1 "
    "to 16, residual and skip 1x1 convs) predicting the next sample, Huber loss, Adam with "
    "OneCycleLR and clip_grad_norm_(1.0).",
)
def h168_stalactite_wavenet_control(ctx: Context) -> None:
    gen = seeded(16814)
    model = DripWaveNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=160)

    _train(
        ctx,
        model,
        opt,
        lambda s: _drips(gen),
        160,
        lambda m, x, y: F.huber_loss(m(x)[:, 16:], y[:, 16:], delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))


# -- control: perfumer accord mixture of experts ----------------------------------------------------


class AccordMoE(nn.Module):
    """Classifies a perfume accord (citrus, floral, woody, amber, fougere, chypre) from 20
    gas-chromatograph peak areas with a softmax-routed mixture of four experts."""

    def __init__(self, experts=4, dim=48):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(20, dim), nn.GELU())
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(experts)
        )
        self.head = nn.Linear(dim, 6)
        self.balance = torch.tensor(0.0)

    def forward(self, x):
        h = self.stem(x)
        gate = torch.softmax(self.router(h), dim=-1)
        outs = torch.stack([e(h) for e in self.experts], 1)
        top = gate.argmax(-1)
        frac = F.one_hot(top, gate.shape[-1]).float().mean(0)
        # Switch-style load-balancing loss: experts x sum(fraction routed x mean gate)
        self.balance = gate.shape[-1] * (frac * gate.mean(0)).sum()
        return self.head(h + (gate[..., None] * outs).sum(1))


def _accords(gen, batch=32):
    y = torch.randint(0, 6, (batch,), generator=gen)
    centres = torch.linspace(-2, 2, 6)
    x = torch.randn(batch, 20, generator=gen)
    x[:, :6] += 2.0 * F.one_hot(y, 6).float()
    x[:, 6:10] += centres[y][:, None]
    return x, y


@scenario(
    family="perfumer_accord_moe",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a mixture of four experts with a softmax router and a Switch-style "
    "load-balancing loss (weight 0.01), RAdam, gradient accumulation over 2 micro-batches, "
    "ReduceLROnPlateau.",
)
def h168_perfumer_moe_control(ctx: Context) -> None:
    gen = seeded(16815)
    model = AccordMoE()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def loss_fn(m, x, y):
        return F.cross_entropy(m(x), y) + 0.01 * m.balance

    _train(
        ctx,
        model,
        opt,
        lambda s: _accords(gen),
        150,
        loss_fn,
        classifier=True,
        accumulate=2,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))


# -- control: wheelwright felloe multi-task with learnt uncertainty weights ------------------------


class FelloeNet(nn.Module):
    """From a wheel's 12 build measurements, predicts the felloe joint gap (regression) and the
    dish class (three classes); the two losses are weighted by learnt log-variances."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        self.gap = nn.Linear(64, 1)
        self.dish = nn.Linear(64, 3)
        self.log_vars = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        h = self.body(x)
        return self.gap(h).squeeze(-1), self.dish(h)


def _wheels(gen, batch=64):
    x = torch.randn(batch, 12, generator=gen)
    gap = 0.6 * x[:, 0] - 0.4 * x[:, 1] * x[:, 2] + 0.2 * torch.randn(batch, generator=gen)
    dish = (x[:, 3] > 0.5).long() + (x[:, 3] > -0.5).long()
    return x, torch.stack([gap, dish.float()], 1)


@scenario(
    family="wheelwright_felloe_multitask",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="Control: a shared SiLU body with a regression head (MSE) and a classification head "
    "(cross-entropy) summed with learnt Kendall-style log-variance weights "
    "(exp(-s) * loss + s), Adadelta (lr 1.0) under fp16 autocast with a GradScaler.",
)
def h168_wheelwright_uncertainty_weights_control(ctx: Context) -> None:
    gen = seeded(16816)
    model = FelloeNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    parts = []

    def loss_fn(m, x, y):
        gap, dish = m(x)
        l_gap = F.mse_loss(gap.float(), y[:, 0])
        l_dish = F.cross_entropy(dish.float(), y[:, 1].long())
        parts.append((float(l_gap.detach()), float(l_dish.detach())))
        s = m.log_vars
        return torch.exp(-s[0]) * l_gap + s[0] + torch.exp(-s[1]) * l_dish + s[1]

    _train(ctx, model, opt, lambda s: _wheels(gen), 200, loss_fn, scaler=scaler)
    gaps = [a for a, _ in parts]
    dishes = [b for _, b in parts]
    ctx.check("the total loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("both task losses fell", _fell(gaps, ratio=0.7) and _fell(dishes, ratio=0.7))
