"""Held-out set 405 (``h405_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an obsidian-knapping flake cross-attention net (queries from the strike sequence, keys and
values from the core's facet sequence) whose Adam rate is typed 3e-2 for 3e-4 with no QK-norm
(attention logits grow), a mead-ferment gravity-drop regressor whose accumulation divisor is
reloaded as 1e-4 for one step (Adam's second moment poisoned), a pumice-raft sink-time Gaussian
NLL net whose sigma module takes sqrt of a raw linear output (sqrt of a negative), a curling-stone
curl-distance regressor fed one sheet's shard in centimetres (one corrupted batch), a bobbin-lace
pillow-tension ReLU RNN whose recurrent identity init is scaled 1.2 (gradients grow through
time), a glassblower punty-crack classifier whose trunk param group has lr typed 1e-8 (trunk
frozen), a falconry lure-stoop classifier whose softmax temperature is typed 0.01 (softmax
saturates), an ice-yacht capsize BCE net whose loss weight at an epoch boundary is read as 300 for
3.00/100 (one gradient burst), a saddlery stitch-tension tanh regressor whose hand-written
decoupled weight decay has its sign flipped (slow climb) and a fencing parry-riposte hinge
classifier whose hinge clamp was dropped (the head's logits grow without bound).

Controls: a Morse-key fist classifier (scaled dot-product attention, pre-LN, AdamW with linear
warm-up then cosine), a raku-kiln cone-slump Huber regressor (fp16 autocast with a GradScaler,
RAdam with a no-decay group, accumulation, ReduceLROnPlateau, clipping) and a farrier gait-lameness
Conv1d classifier (SGD momentum under OneCycleLR, label smoothing, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _outcomes(gen, batch, d_in, seed, flip=0.1):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.sin(2 * x[:, 0]) > 0.1).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


# -- attention_logit_growth: cross-attention at a typed rate, no QK-norm ---------------------------


class _CrossAttention(nn.Module):
    """Hand-written cross-attention: queries from the strike sequence, keys and values from the
    encoded facet sequence. Keeps the largest |q.k/sqrt(d)| and the attention entropy it saw."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.last_max = 0.0
        self.last_entropy = 0.0

    def forward(self, x, mem):
        q, k, v = self.q(x), self.k(mem), self.v(mem)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        att = torch.softmax(logits, dim=-1)
        self.last_max = float(logits.detach().abs().max())
        ent = -(att * torch.log(att.clamp_min(1e-30))).sum(-1).mean()
        self.last_entropy = float(ent.detach())
        return self.o(att @ v)


class _FlakeNet(nn.Module):
    """A small encoder-decoder: the encoder reads (facet, flake-type) pairs of the core; the
    decoder's strike tokens attend to them and read out the flake type at the struck facet."""

    def __init__(self, facets=16, kinds=8, dim=32):
        super().__init__()
        self.facet = nn.Embedding(facets, dim)
        self.kind = nn.Embedding(kinds, dim)
        self.enc = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.ln_enc = nn.LayerNorm(dim)
        self.strike = nn.Embedding(facets, dim)
        self.ln_dec = nn.LayerNorm(dim)
        self.cross_attn = _CrossAttention(dim)
        self.head = nn.Linear(dim, kinds)

    def forward(self, batch):
        src_facet, src_kind, strikes = batch
        mem = self.ln_enc(self.enc(self.facet(src_facet) + self.kind(src_kind)))
        x = self.ln_dec(self.strike(strikes))
        return self.head(x + self.cross_attn(x, mem))


def _cores(gen, batch, facets=16, kinds=8, length=12, queries=4):
    """Each core: ``length`` distinct facets with a flake type each; strikes pick facets."""
    while True:
        src_facet = torch.argsort(torch.rand(batch, facets, generator=gen), 1)[:, :length]
        src_kind = torch.randint(0, kinds, (batch, length), generator=gen)
        pick = torch.randint(0, length, (batch, queries), generator=gen)
        strikes = src_facet.gather(1, pick)
        yield (src_facet, src_kind, strikes), src_kind.gather(1, pick)


@scenario(
    family="obsidian_knapping_flake_cross_attention_net",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("cross_attn",),
    diverges=None,
    heldout=True,
    note="Obsidian-knapping flake predictor: a hand-written encoder-decoder whose strike tokens "
    "cross-attend to the core's facet sequence (no QK-norm, no weight decay). The Adam rate is "
    "typed 3e-2 for 3e-4; the q and k projections grow and the cross-attention logits "
    "q.k/sqrt(d) climb far past what the retrieval needs, the attention rows saturating one-hot.",
)
def h405_obsidian_flake_cross_attention(ctx):
    gen = seeded(4051)
    model = _FlakeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)  # meant 3e-4
    att = model.cross_attn
    maxes, ents = [], []

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def after(step):
        maxes.append(att.last_max)
        ents.append(att.last_entropy)

    batches = _cores(gen, 32)
    ctx.attach(model, opt)
    for step in range(200):
        (sf, sk, st), y = next(batches)
        out = model((sf, sk, st))
        loss = loss_fn(out, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("attention logits grew over 20x", max(maxes[-20:]) > 20 * max(maxes[:3]))
    ctx.check("attention logits over 30 late", _mean(maxes[-20:]) > 30)
    ctx.check("attention rows saturated (entropy < 0.05)", _mean(ents[-20:]) < 0.05)
    ctx.check("logits still growing", _mean(maxes[-20:]) > 1.2 * _mean(maxes[-120:-100]))


# -- adam_second_moment_poisoned: the accumulation divisor reloaded as 1e-4 for one step ----------


@scenario(
    family="mead_ferment_gravity_drop_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Mead-ferment gravity-drop SiLU regressor on Adam (beta2 0.999). At step 100 a config "
    "reload after a checkpoint reads the gradient-accumulation divisor as 1e-4 (the field "
    "shifted by one column), so that step's loss is multiplied by 1e4: one giant gradient on an "
    "ordinary batch fills Adam's second moment and the per-weight updates stall for the rest of "
    "the run while the gradients stay as large as before.",
)
def h405_mead_gravity_adam_poisoned(ctx):
    gen = seeded(4052)
    model = _MLP(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    params = list(model.parameters())
    updates: list[float] = []
    prev = {}

    def before(step):
        prev["w"] = _flat(params)

    def after(step):
        updates.append(float((_flat(params) - prev["w"]).abs().median()))

    def backprop(step, loss):
        return loss / (1e-4 if step == 100 else 1.0)  # the divisor, misread at the reload

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=4152),
        240,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    g = ctx.grad_norms
    ctx.check("gradient over 1000x at step 100", g[100] > 1000 * _median(g[40:100]))
    ctx.check(
        "median update over steps 120-220 under a tenth of 40-100",
        _median(updates[120:220]) < 0.1 * _median(updates[40:100]),
    )
    ctx.check("gradients not smaller after", _median(g[120:220]) > 0.5 * _median(g[40:100]))
    ctx.check("loss finite", _finite(ctx.losses))


# -- nonfinite: sigma = sqrt of a raw linear output -----------------------------------------------


class _Sqrt(nn.Module):
    """sigma = sqrt(z): the softplus in front of it was removed 'because the bias starts at 1'."""

    def forward(self, z):
        return torch.sqrt(z)


class _SinkNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.sigma = _Sqrt()
        nn.init.constant_(self.var_head.bias, 2.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.sigma(self.var_head(h))], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="pumice_raft_sink_time_sqrt_sigma_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("sigma",),
    diverges=139,
    heldout=True,
    note="Pumice-raft sink-time regressor with a Gaussian NLL; the sigma module takes sqrt of the "
    "raw variance head after its softplus was removed ('the bias starts at 2, it stays "
    "positive'). The NLL drives the variance down towards the small noise until a row's "
    "variance crosses zero and sqrt of a negative makes the loss NaN.",
)
def h405_pumice_sink_sqrt_nan(ctx):
    gen = seeded(4053)
    model = _SinkNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    low: list[float] = []
    model.var_head.register_forward_hook(lambda m, i, o: low.append(float(o.detach().min())))
    _loop(ctx, model, opt, _readings(gen, 32, 6, seed=4153, noise=0.02), 300, _gauss_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("the variance head went negative at the NaN", bad is not None and low[bad] < 0)
    ctx.check("the variance head positive at the start", low[0] > 0)
    ctx.check("loss non-finite", bad is not None)
    ctx.check("finite for the first 20 steps", bad is not None and bad >= 20)
    ctx.check("stopped at the NaN", bad is not None and len(ctx.losses) == bad + 1)


# -- data_outlier: one sheet's shard in centimetres ------------------------------------------------


@scenario(
    family="curling_stone_curl_distance_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="Curling-stone curl-distance SiLU regressor (standardised pebble and sweep readings, "
    "curl in metres). The step-110 batch comes from one sheet's logger that wrote the curl in "
    "centimetres (targets x100): one corrupted batch, a loss jump of orders of magnitude and a "
    "gradient burst; clipping keeps the run alive and it recovers.",
)
def h405_curling_curl_cm_shard(ctx):
    gen = seeded(4054)
    model = _MLP(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 100.0) if step == 110 else (x, y)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, seed=4154),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss over 100x at step 110", ls[110] > 100 * _median(ls[90:110]))
    ctx.check("gradient over 20x at step 110", g[110] > 20 * _median(g[90:110]))
    ctx.check("recovers", _mean(ls[-20:]) < 2 * _mean(ls[90:110]) and _finite(ls))


# -- exploding_gradients: recurrent identity init scaled 1.2 --------------------------------------


class _ReluRNN(nn.Module):
    """A hand-written ReLU RNN over bobbin-tension traces; ``rec`` is the recurrent matrix."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.inp.weight.mul_(0.2)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tension_traces(gen, batch, length=24, seed=4155):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh((x @ w)[:, -8:].mean(1) * 2)
        yield x, y


@scenario(
    family="bobbin_lace_pillow_tension_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Bobbin-lace pillow-tension ReLU RNN (IRNN-style identity init of the recurrent matrix) "
    "over 24-step tension traces, plain SGD with clipping at 1. The init scale is typed 1.2 for "
    "1.0 (a leftover from a sweep), so the backward pass multiplies through the recurrence and "
    "dL/dh at the first step is orders of magnitude larger than at the last.",
)
def h405_bobbin_lace_rnn_exploding(ctx):
    gen = seeded(4055)
    model = _ReluRNN(gain=1.2)  # meant 1.0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios: list[float] = []

    def inspect(step):
        s = model.states
        if s[0].grad is not None and s[-1].grad is not None:
            ratios.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp_min(1e-12)))

    _loop(ctx, model, opt, _tension_traces(gen, 32), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/dh_0 over 40x dL/dh_23 at the start", ratios[0] > 40)
    ctx.check("median ratio over 20x through the run", _median(ratios) > 20)
    ctx.check(
        "raw gradient norm over 10x the clip most steps",
        _median(ctx.grad_norms) > 10.0,
    )


# -- update_ratio_out_of_range: the trunk's param-group rate typed 1e-8 ---------------------------


class _PuntyNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5):
        super().__init__()
        self.trunk1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.trunk2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.trunk2(self.act1(self.trunk1(x)))))


@scenario(
    family="glassblower_punty_crack_two_group_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("trunk1", "trunk2"),
    diverges=None,
    heldout=True,
    note="Glassblower punty-crack ReLU classifier (five crack grades from annealing readings) on "
    "Adamax with two param groups, trunk and head. The trunk group's lr is typed 1e-8 for 1e-3 "
    "(an exponent slip), so trunk1 and trunk2 receive gradients but barely move (update ratio "
    "around 1e-7) while the head trains; the loss falls only as far as a linear probe allows.",
)
def h405_glass_punty_trunk_frozen(ctx):
    gen = seeded(4056)
    model = _PuntyNet()
    trunk = [*model.trunk1.parameters(), *model.trunk2.parameters()]
    opt = torch.optim.Adamax(
        [{"params": trunk, "lr": 1e-8}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.trunk1, model.trunk2, model.head))
    grads: list[float] = []

    def inspect(step):
        grads.append(float(model.trunk1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 5, seed=4156, spread=1.6),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )

    def rel(m, w):
        return float((m.weight.detach() - w).norm() / w.norm())

    ctx.check("trunk1 moved under 1e-5 of its norm", rel(model.trunk1, w1) < 1e-5)
    ctx.check("trunk2 moved under 1e-5 of its norm", rel(model.trunk2, w2) < 1e-5)
    ctx.check("trunk1 receives gradients", _median(grads) > 1e-3)
    ctx.check("the head moved over 5%", rel(model.head, wh) > 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


# -- softmax_collapse: the softmax temperature typed 0.01 ------------------------------------------


class _StoopNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def raw(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.raw(x) / self.temperature


@scenario(
    family="falconry_lure_stoop_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Falconry lure-stoop GELU classifier (six stoop styles from telemetry) on NAdam whose "
    "logits are divided by a temperature read from a shared config where a contrastive model's "
    "0.01 sits under the same key as this classifier's 1.0. The softmax saturates: most rows' "
    "target probability rounds to exactly 1.0 in float32 and the others to exactly 0.",
)
def h405_falconry_stoop_softmax_collapse(ctx):
    gen = seeded(4057)
    model = _StoopNet(temperature=0.01)  # meant 1.0
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 10, 6, seed=4157, spread=0.7))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 10, 6, seed=4157, spread=0.7),
        300,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        raw = model.raw(probe[0])
    ctx.check("over half the rows collapsed", collapsed_fraction(raw / 0.01, probe[1]) > 0.5)
    ctx.check("under 5% at temperature 1.0", collapsed_fraction(raw, probe[1]) < 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


# -- gradient_spike: a loss weight read in percent at the epoch boundary ---------------------------


@scenario(
    family="ice_yacht_capsize_bce_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Ice-yacht capsize ReLU BCE net (10% noisy labels) on SGD with Nesterov momentum and "
    "clipping at 1. The loss weight comes from a per-epoch table; at the epoch boundary (step "
    "140) the entry is read from a column in percent (300 for 3.00, the rest of the table is "
    "1.0), so one ordinary batch's gradient is a 300x burst; clipping bounds the step and the "
    "run recovers.",
)
def h405_ice_yacht_weight_percent_spike(ctx):
    gen = seeded(4058)
    model = _MLP(8, hidden=40)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (300.0 if step == 140 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _outcomes(gen, 32, 8, seed=4158),
        240,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 100x at step 140", g[140] > 100 * _median(g[110:140]))
    ctx.check("logged loss ordinary at step 140", ls[140] < 2 * _median(ls[110:140]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[110:140]) and _finite(ls))


# -- loss_divergence: a decoupled weight decay with its sign flipped --------------------------------


@scenario(
    family="saddlery_stitch_tension_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Saddlery stitch-tension tanh regressor on ASGD with a hand-written decoupled weight "
    "decay applied after each step, p -= lr * wd * p, whose sign is flipped (p += ...). The "
    "weights inflate a little every step; the loss first falls and then climbs slowly, with no "
    "jump and no NaN.",
)
def h405_saddlery_decay_sign(ctx):
    gen = seeded(4059)
    model = _MLP(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    w0 = _flat(model.parameters()).norm()

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=0.02 * 0.4)  # meant alpha=-lr * wd

    _loop(ctx, model, opt, _readings(gen, 32, 8, seed=4159), 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    ctx.check("weights over 2x their start", _flat(model.parameters()).norm() > 2 * w0)
    ctx.check("loss climbs to over 3x its lowest 20-step mean", _mean(ls[-20:]) > 3 * min(means))
    ctx.check("no 3x jump between steps", all(b < 3 * a for a, b in zip(ls, ls[1:], strict=False)))
    ctx.check("finite", _finite(ls))


# -- output_logit_divergence: the hinge clamp dropped ---------------------------------------------


class _ParryNet(nn.Module):
    def __init__(self, d_in=10, hidden=40):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _hinge_unclamped(out, y):
    # meant: (1 - s * out).clamp_min(0).mean(); the clamp was lost in a refactor
    return (1 - (2 * y - 1) * out).mean()


@scenario(
    family="fencing_parry_riposte_hinge_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fencing parry-riposte ReLU classifier (does the riposte land) trained with a "
    "hand-written hinge loss whose clamp_min(0) was lost in a refactor: the loss is linear in "
    "the margin and unbounded below, so the head's output grows without bound and the loss "
    "goes ever more negative.",
)
def h405_fencing_parry_hinge_unclamped(ctx):
    gen = seeded(4060)
    model = _ParryNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    probe = next(_outcomes(torch.Generator().manual_seed(7), 256, 10, seed=4160))
    sizes: list[float] = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe[0]).abs().max()))

    _loop(ctx, model, opt, _outcomes(gen, 32, 10, seed=4160), 200, _hinge_unclamped, after=after)
    ctx.check("largest logit over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing", _mean(sizes[-20:]) > 1.3 * _mean(sizes[-60:-40]))
    ctx.check("loss below -10", ctx.losses[-1] < -10)


# -- healthy controls ------------------------------------------------------------------------------


class _SDPABlock(nn.Module):
    """Pre-LN block with scaled dot-product attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _FistNet(nn.Module):
    """Morse-key fist identification: a sequence of key-down/key-up durations to an operator."""

    def __init__(self, dim=32, heads=4, length=20, operators=5):
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.blocks = nn.ModuleList(_SDPABlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, operators)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


def _fists(gen, batch, operators=5, length=20, seed=4161):
    """Each operator has a dot/dash ratio and a gap rhythm; durations with jitter."""
    g = torch.Generator().manual_seed(seed)
    ratio = 2.2 + 1.2 * torch.rand(operators, generator=g)
    gap = 0.8 + 0.8 * torch.rand(operators, generator=g)
    swing = 0.5 * torch.rand(operators, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, operators, (batch,), generator=gen)
        dash = torch.rand(batch, length, generator=gen) < 0.4
        down = torch.where(dash, ratio[y][:, None], torch.ones(batch, length))
        up = gap[y][:, None] * (1 + swing[y][:, None] * torch.sin(t))
        x = torch.stack([down, up], -1) * (1 + 0.15 * torch.randn(batch, length, 2, generator=gen))
        yield x - 1.5, y


@scenario(
    family="morse_key_fist_sdpa_preln_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: Morse-key operator-fist classifier, a two-block pre-LN transformer with "
    "scaled dot-product attention over key-down/key-up durations, AdamW (weight decay 0.05, "
    "no decay on norms and biases) with 20 steps of linear warm-up then cosine decay, clipping.",
)
def h405_morse_fist_sdpa_healthy(ctx):
    gen = seeded(4061)
    model = _FistNet()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )
    total, warm = 200, 20

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(
        ctx,
        model,
        opt,
        _fists(gen, 32),
        total,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="raku_kiln_cone_slump_fp16_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: raku-kiln cone-slump SiLU regressor under fp16 autocast with a GradScaler, "
    "RAdam with a no-decay bias group, gradient accumulation over 2, clipping at 1 after "
    "unscale_, ReduceLROnPlateau on a held-out batch, Huber loss.",
)
def h405_raku_cone_fp16_healthy(ctx):
    gen = seeded(4062)
    model = _MLP(9, hidden=64, act=nn.SiLU)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.RAdam(
        [{"params": weights, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=3e-3,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    held = next(_readings(torch.Generator().manual_seed(3), 128, 9, seed=4162))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1], delta=0.5))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 9, seed=4162),
        150,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("scale never collapsed", min(ctx.scales) >= 1.0)


class _GaitNet(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 24, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        h = self.act2(self.conv2(F.max_pool1d(self.act1(self.conv1(x)), 2)))
        return self.head(h.mean(-1))


def _gaits(gen, batch, classes=4, length=48, seed=4163):
    """Hoof accelerometer traces: each lameness grade a stride rhythm with its own asymmetry."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.25 + 0.1 * torch.rand(classes, generator=g)
    asym = torch.linspace(0.0, 0.9, classes)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        f = freq[y][:, None]
        base = torch.sin(f * t + ph)
        lame = asym[y][:, None] * torch.sin(0.5 * f * t + ph)
        x = torch.stack([base + lame, base - lame, torch.cos(f * t + ph)], 1)
        yield x + 0.3 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="farrier_gait_lameness_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: farrier gait-lameness ReLU Conv1d classifier on hoof accelerometer traces, "
    "SGD momentum 0.9 with weight decay 5e-4 under OneCycleLR (max_lr 0.1), label smoothing "
    "0.1, clipping at 2.",
)
def h405_farrier_gait_conv1d_healthy(ctx):
    gen = seeded(4063)
    model = _GaitNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _gaits(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
