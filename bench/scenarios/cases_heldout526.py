"""Held-out set 526 (``h526_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a wigwag flag-signal nGPT-style normalised transformer whose s_qk restore scale is typed
1e-3 (attention logits grow, AdamW); a horseshoeing clinch-time conv1d regressor whose resumed
loss uses reduction="sum" for one step (gradient spike, SGD Nesterov); a calving-glacier GRU
event classifier whose recurrent param group gets lr 0 from a fine-tuning freeze flag (Adamax); a
whistling-ice skate-tone Gaussian-NLL net whose RMS-energy layer takes the sqrt of a cancelled
variance on a flat-lined frame (NaN, RAdam); a chandler taper deep ReLU MLP initialised with gain
2.5 (exploding gradients, plain SGD); a fletcher feather-glue ReLU regressor whose fc1 init is
uniform(-b, 0) on positive inputs (dead ReLUs, RMSprop); a crampon bite-depth SiLU regressor fed
one shard in millimetres (SGD momentum, clipped); a bullroarer whirl-pitch classifier multiplying
raw logits by an ArcFace scale of 64 (softmax collapse, Adam); a kicksled runner-wear regressor
whose target drifts with an uncorrected tare (slow climb, Adagrad); a joik vocable-phrase cosine
classifier whose learnt logit scale has no clamp (output logits grow, Adam).

Controls: a mouth-harp tongue-gap regressor with a hand-written halve-on-rise plateau rule (SGD
momentum); a rime-ice accretion Huber regressor (fp16 autocast + GradScaler, AdamW, OneCycleLR,
clipping); a cordwainer awl-stitch tied-weight GRU language model (NAdam, label smoothing,
accumulation 2, two param groups).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    reduce=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``reduce(step, out, y)`` replaces the backpropagated loss,
    ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = reduce(step, out, y) if reduce is not None else loss
        w = weight(step) if weight is not None else 1.0
        (w * total).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
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


# -- 1. attention logit growth: an nGPT whose s_qk restore scale is typed 1e-3 ------------------


def _unit(x, dim=-1):
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-8)


class _Scale(nn.Module):
    """nGPT's learnt scaling factor: stored at ``scale`` and restored as ``param * init /
    scale``, so an optimizer step on it is multiplied by init / scale."""

    def __init__(self, dim, init, scale):
        super().__init__()
        self.init, self.scale = init, scale
        self.param = nn.Parameter(torch.full((dim,), float(scale)))

    def forward(self):
        return self.param * (self.init / self.scale)


class _NAttention(nn.Module):
    def __init__(self, dim, heads, sqk_scale):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.s_qk = _Scale(dim, 1.0, sqk_scale)
        self.last_logit_max = 0.0

    def forward(self, h):
        b, t, d = h.shape
        s = self.s_qk().reshape(self.heads, 1, self.hd)
        q, k, v = (
            m(h).reshape(b, t, self.heads, self.hd).transpose(1, 2)
            for m in (self.q, self.k, self.v)
        )
        q, k = s * _unit(q), s * _unit(k)
        logits = (q @ k.transpose(-1, -2)) * math.sqrt(self.hd)  # nGPT's softmax scale sqrt(d_k)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        self.last_logit_max = float(logits.detach().masked_fill(~mask, 0).abs().max())
        att = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class _NBlock(nn.Module):
    def __init__(self, dim, heads, sqk_scale):
        super().__init__()
        self.attn = _NAttention(dim, heads, sqk_scale)
        self.up = nn.Linear(dim, 2 * dim, bias=False)
        self.down = nn.Linear(2 * dim, dim, bias=False)
        base = 1 / math.sqrt(dim)
        self.alpha_a = _Scale(dim, 0.05, base)
        self.alpha_m = _Scale(dim, 0.05, base)

    def forward(self, h):
        h = _unit(h + self.alpha_a().abs() * (_unit(self.attn(h)) - h))
        m = self.down(F.silu(self.up(h)))
        return _unit(h + self.alpha_m().abs() * (_unit(m) - h))


class _NGPT(nn.Module):
    """A normalised transformer: hidden states and every weight row on the unit sphere
    (renormalised after each step), eigen learning rates alpha and logit scale s_z learnt."""

    def __init__(self, vocab=12, dim=32, heads=2, layers=2, context=16, sqk_scale=None):
        super().__init__()
        sqk_scale = sqk_scale or 1 / math.sqrt(dim)
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_NBlock(dim, heads, sqk_scale) for _ in range(layers))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.s_z = _Scale(vocab, 1.0, 1 / math.sqrt(dim))
        self.renormalise()

    @torch.no_grad()
    def renormalise(self):
        for name, m in self.named_modules():
            if isinstance(m, nn.Embedding | nn.Linear):
                # maps into the residual stream (o, down) are normalised along their output
                out_map = name.endswith((".o", ".down"))
                m.weight.copy_(_unit(m.weight, 0 if out_map else -1))

    def forward(self, idx):
        h = _unit(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))
        for block in self.blocks:
            h = block(h)
        return self.s_z() * self.head(h)


def _wigwag_sequences(gen, batch, vocab=12, half=8):
    """Wigwag flag signals: a random 8-flag code word sent, then repeated for confirmation."""
    while True:
        word = torch.randint(0, vocab, (batch, half), generator=gen)
        seq = torch.cat([word, word, word[:, :1]], 1)
        yield seq[:, :-1], seq[:, 1:]


def _lm_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="wigwag_signal_flag_ngpt_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Wigwag flag-signal next-flag model over generated sequences (an 8-flag code word, then "
    "its confirmation repeat), a hand-written nGPT-style normalised transformer (unit-norm "
    "hidden states and weight rows renormalised after each step, learnt alpha eigen-rates, s_z "
    "logit scale and s_qk query/key scale, cross-entropy, AdamW wd 0). s_qk is stored at its "
    "restore scale and restored as param * init / scale; the scale is typed 1e-3 instead of "
    "1/sqrt(d), so every AdamW step moves s_qk about 180x too far and the q.k logits (which go "
    "as s_qk^2) grow without anything to stop them.",
)
def h526_wigwag_ngpt_sqk_scale_typo(ctx):
    gen = seeded(5261)
    model = _NGPT(sqk_scale=1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    logit_max = []

    def after(step, loss):
        model.renormalise()
        logit_max.append(max(b.attn.last_logit_max for b in model.blocks))

    losses, _ = _loop(
        ctx, model, opt, _wigwag_sequences(gen, 32), 200, _lm_ce, classifier=False, after=after
    )
    ctx.check(
        "max attention logit over 20x its first value",
        logit_max[-1] > 20 * logit_max[0],
    )
    ctx.check(
        "s_qk over 10x its init", float(model.blocks[0].attn.s_qk().detach().abs().max()) > 10
    )
    ctx.check("loss finite", _finite(losses))


# -- 2. gradient spike: a resumed loss reduced with "sum" for one step ---------------------------

CLINCH_ONSET = 120


class _ClinchConv(nn.Module):
    """Conv1d over a 32-sample hammer-strike accelerometer trace."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x[:, None]))))
        return self.head(h.mean(-1)).squeeze(-1)


def _strike_traces(gen, batch):
    t = torch.linspace(0, 1, 32)
    while True:
        f = 2 + 6 * torch.rand(batch, 1, generator=gen)
        d = 1 + 4 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * f * t) * torch.exp(-d * t)
        x = x + 0.05 * torch.randn(batch, 32, generator=gen)
        yield x, (f.squeeze(1) - 5) / 2 + 0.3 * (d.squeeze(1) - 3)


@scenario(
    family="shoeing_forge_clinch_time_conv1d_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CLINCH_ONSET,
    note="Horseshoeing clinch-time regressor (conv1d over hammer-strike accelerometer traces, "
    "MSE, SGD Nesterov momentum 0.9, clip 5). The job is resumed at step 120 and the resume path "
    "builds its loss with reduction='sum' for its first step: one gradient about batch-size "
    "(128x) the usual, not from the data, while the logged mean loss stays ordinary.",
)
def h526_clinch_resume_sum_reduction(ctx):
    gen = seeded(5262)
    model = _ClinchConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def reduce(step, out, y):
        if step == CLINCH_ONSET:
            return F.mse_loss(out, y, reduction="sum")
        return F.mse_loss(out, y)

    losses, norms = _loop(
        ctx, model, opt, _strike_traces(gen, 128), 220, F.mse_loss, reduce=reduce, clip=5.0
    )
    o = CLINCH_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check(
        "logged loss at onset ordinary (under 3x)", losses[o] < 3 * _median(losses[o - 30 : o])
    )
    ctx.check("trained and finite", _fell(losses))


# -- 3. update ratio: the GRU's param group lr multiplied by a freeze flag left at 0 -------------


class _CalvingGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 24, batch_first=True)
        self.head = nn.Linear(24, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _calving_series(gen, batch):
    """Hydrophone energy, tide and front speed over 20 hours; a calving event follows when the
    front speed rises while energy builds."""
    while True:
        x = torch.randn(batch, 20, 3, generator=gen)
        score = x[:, 10:, 2].mean(1) * 2 + x[:, -5:, 0].mean(1) - 0.5 * x[:, :, 1].mean(1)
        yield x, (score + 0.2 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="calving_glacier_front_event_gru_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("gru",),
    diverges=None,
    heldout=True,
    note="Calving-glacier event classifier (GRU over hydrophone energy, tide and front-speed "
    "series, BCE with logits, Adamax in two param groups). The GRU group's lr is written "
    "2e-3 * train_encoder with train_encoder left at 0 from a linear-probe config: the GRU never "
    "moves while the head learns on its random features.",
)
def h526_calving_gru_freeze_flag(ctx):
    gen = seeded(5263)
    model = _CalvingGRU()
    train_encoder = 0
    opt = torch.optim.Adamax(
        [
            {"params": model.gru.parameters(), "lr": 2e-3 * train_encoder},
            {"params": model.head.parameters(), "lr": 2e-2},
        ]
    )
    g0 = model.gru.weight_ih_l0.detach().clone()
    h0 = model.head.weight.detach().clone()
    losses, _ = _loop(
        ctx, model, opt, _calving_series(gen, 64), 200, F.binary_cross_entropy_with_logits
    )
    ctx.check("gru moved under 1e-7", _rel_change(model.gru.weight_ih_l0, g0) < 1e-7)
    ctx.check("head moved over 20%", _rel_change(model.head.weight, h0) > 0.2)
    ctx.check("head still trained (loss under 0.95x)", _fell(losses, ratio=0.95))


# -- 4. nonfinite: sqrt of a cancelled variance on a flat-lined frame ---------------------------

ICE_ONSET = 95


class _RMSEnergy(nn.Module):
    """Frame energy as sqrt(E[x^2] - E[x]^2): the shortcut formula, no clamp."""

    def forward(self, x):
        return torch.sqrt(x.pow(2).mean(-1) - x.mean(-1).pow(2))


class _SkateTone(nn.Module):
    def __init__(self):
        super().__init__()
        self.energy = _RMSEnergy()
        self.fc1 = nn.Linear(8, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        e = self.energy(x.reshape(x.shape[0], 8, 32))
        out = self.head(F.gelu(self.fc1(e)))
        return out[:, 0], F.softplus(out[:, 1]) + 1e-3


def _ice_frames(gen, batch, onset_state):
    while True:
        amp = 0.2 + torch.rand(batch, 8, 1, generator=gen)
        x = amp * torch.randn(batch, 8, 32, generator=gen)
        y = 3 * amp[:, :, 0].mean(1) - 2
        if onset_state["step"] == ICE_ONSET:
            x[0, 3] = 0.9  # the hydrophone saturates at its rail for one frame
        onset_state["step"] += 1
        yield x.reshape(batch, 256), y


@scenario(
    family="whistling_ice_skate_tone_rms_energy_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("energy",),
    diverges=ICE_ONSET,
    heldout=True,
    onset=ICE_ONSET,
    note="Whistling-ice skate-tone pitch net (hydrophone frames, a hand-written RMS-energy layer, "
    "GELU MLP, Gaussian NLL of pitch, RAdam). The energy layer computes sqrt(E[x^2] - E[x]^2) "
    "with no clamp; at step 95 one frame is flat at the hydrophone's 0.9 rail, float32 "
    "cancellation makes its variance -1.2e-7 and sqrt returns NaN: the loss is NaN at step 95.",
)
def h526_whistling_ice_sqrt_negative_variance(ctx):
    gen = seeded(5264)
    model = _SkateTone()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    state = {"step": 0}

    def nll(out, y):
        return F.gaussian_nll_loss(out[0], y, out[1])

    losses, _ = _loop(ctx, model, opt, _ice_frames(gen, 64, state), 160, nll)
    ctx.check("finite before onset", _finite(losses[:ICE_ONSET]))
    ctx.check("loss NaN at step 95", len(losses) == ICE_ONSET + 1 and math.isnan(losses[-1]))
    ctx.check("nll fell before onset", losses[ICE_ONSET - 1] < losses[0] - 0.15)


# -- 5. exploding gradients: a deep ReLU MLP initialised with gain 2.5 ---------------------------


class _DeepReLU(nn.Module):
    def __init__(self, d_in=6, width=32, depth=10, gain=1.4142):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


@scenario(
    family="chandler_beeswax_taper_dip_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges="auto",
    heldout=True,
    note="Chandler's beeswax-taper dip-count regressor (10-layer ReLU MLP on wax temperature, "
    "wick size, dip speed, room temperature, cooling time and taper length, MSE, plain SGD). "
    "The hand-written He init is typed with gain 2.2 instead of sqrt(2): each layer multiplies "
    "the backward signal by about 1.56, the first layer's bias gradient is over 10x the "
    "last hidden layer's and the first SGD steps blow the loss up.",
)
def h526_chandler_taper_init_gain(ctx):
    gen = seeded(5265)
    model = _DeepReLU(gain=2.2)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4)
    ratio = {}
    data = _readings(gen, 64, 6, 52650)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 256, 6, 52650))
    F.mse_loss(model(x0), y0).backward()
    ratio["r"] = float(model.net[0].bias.grad.norm() / model.net[18].bias.grad.norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _loop(ctx, model, opt, data, 120, F.mse_loss)
    ctx.check("net.0 bias gradient over 10x net.18's at init", ratio["r"] > 10)
    ctx.check(
        "loss blew up over 1e3x its start or went non-finite",
        not _finite(losses) or max(losses) > 1e3 * losses[0],
    )


# -- 6. loss of plasticity: fc1 initialised uniform(-b, 0) on positive inputs --------------------


def _feather_table(gen, batch):
    """Positive readings: vane length, barb density, glue temperature, cure minutes, humidity."""
    g = torch.Generator().manual_seed(52660)
    w = torch.rand(5, generator=g)
    while True:
        x = torch.rand(batch, 5, generator=gen)
        y = torch.sin(3 * x @ w) + 0.5 * x[:, 0] * x[:, 2]
        yield x, (y - 0.6) / 0.4 + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="fletcher_goose_feather_glue_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="Fletcher's feather-glue bond-strength regressor (ReLU MLP on positive readings: vane "
    "length, barb density, glue temperature, cure time, humidity; MSE, RMSprop). A hand-written "
    "init meant as uniform_(w, -b, b) is typed uniform_(w, -b, 0) with zero biases: on positive "
    "inputs every fc1 pre-activation is negative, all act1 units are dead from the start and "
    "only the head's bias learns.",
)
def h526_fletcher_negative_uniform_init(ctx):
    gen = seeded(5266)
    model = _Net(5, 48, 1)
    with torch.no_grad():
        b = 1 / math.sqrt(5)
        nn.init.uniform_(model.fc1.weight, -b, 0.0)
        model.fc1.bias.zero_()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(_feather_table(torch.Generator().manual_seed(7), 512))
    losses, _ = _loop(ctx, model, opt, _feather_table(gen, 64), 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(probe_x)))
    ctx.check("over 90% of act1 units dead", dead > 0.9)
    ctx.check(
        "stalls above 0.8x the target variance", _mean(losses[-20:]) > 0.8 * float(probe_y.var())
    )
    ctx.check("finite", _finite(losses))


# -- 7. data outlier: one shard with bite depth in millimetres ----------------------------------

CRAMPON_ONSET = 110


@scenario(
    family="crampon_front_point_bite_depth_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=CRAMPON_ONSET,
    note="Crampon front-point bite-depth regressor (SiLU MLP on ice hardness, kick angle, boot "
    "stiffness, point sharpness, temperature and climber mass, MSE, SGD momentum 0.9, clip 1). "
    "At step 110 one batch comes from a shard logged in millimetres instead of metres (inputs "
    "and targets 1000x): the loss jumps by orders of magnitude for that step; clipping bounds "
    "the update and the run recovers.",
)
def h526_crampon_millimetre_shard(ctx):
    gen = seeded(5267)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def alter(step, x, y):
        if step == CRAMPON_ONSET:
            return x * 1000, y * 1000
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 52670), 220, F.mse_loss, alter=alter, clip=1.0
    )
    o = CRAMPON_ONSET
    ctx.check("loss at onset over 1e3x the median", losses[o] > 1e3 * _median(losses[o - 30 : o]))
    ctx.check("gradient at onset over 100x", norms[o] > 100 * _median(norms[o - 30 : o]))
    ctx.check(
        "recovered (last 20 under 2x the 20 before onset)",
        _mean(losses[-20:]) < 2 * _mean(losses[o - 20 : o]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: an ArcFace scale of 64 on raw logits ----------------------------------


@scenario(
    family="bullroarer_whirl_pitch_arcface_scale_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("body.head",),
    diverges=None,
    heldout=True,
    note="Bullroarer whirl-pitch band classifier (GELU MLP on cord length, blade size, whirl "
    "rate and wind, 8 bands, cross-entropy, Adam). The head copies an ArcFace recipe's scale "
    "s=64 but not its normalisation of features and class weights: raw logits times 64 saturate "
    "the float32 softmax, most rows' target probability rounds to exactly 1.0.",
)
def h526_bullroarer_arcface_scale_raw_logits(ctx):
    gen = seeded(5268)
    base = _Net(12, 48, 8, act=nn.GELU)

    class _Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = base

        def forward(self, x):
            return 64.0 * self.body(x)

    model = _Scaled()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    px, py = next(_grades(torch.Generator().manual_seed(8), 512, 12, 8, 52680, spread=0.5))
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 52680, spread=0.5),
        300,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        frac = collapsed_fraction(model(px), py)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: a load-cell tare that drifts and is never reset -------------------------


@scenario(
    family="kicksled_runner_wear_tare_drift_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Kicksled runner-wear regressor (tanh MLP on snow temperature, load, distance, runner "
    "steel grade and glide speed; MSE, Adagrad). The wear target comes from a load cell whose "
    "tare creeps each step and is never re-zeroed: the targets drift away faster than "
    "Adagrad's shrinking steps follow and the loss climbs slowly with no jump.",
)
def h526_kicksled_tare_drift(ctx):
    gen = seeded(5269)
    model = _Net(5, 32, 1, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.003)
    data = _readings(gen, 64, 5, 52690)

    def alter(step, x, y):
        return x, y + 1e-4 * step**2

    losses, _ = _loop(ctx, model, opt, data, 260, F.mse_loss, alter=alter)
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    best = min(means)
    ctx.check("last 20 over 3x the best 10-step window", _mean(losses[-20:]) > 3 * best)
    ctx.check(
        "no jump: consecutive 10-step means under 2x apart",
        all(b < 2 * a for a, b in zip(means[:-1], means[1:], strict=False)),
    )
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: a learnt logit scale with no clamp -----------------------------


class _ScaledCosineHead(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) / math.sqrt(d))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        return self.log_scale.exp() * (_unit(h) @ _unit(self.weight).T)


class _JoikNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 48)
        self.act1 = nn.GELU()
        self.head = _ScaledCosineHead(48, 6)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x)))


@scenario(
    family="joik_vocable_phrase_logit_scale_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Joik vocable-phrase classifier (GELU MLP on pitch-contour features, a cosine head "
    "with a learnt CLIP-style logit scale exp(t), cross-entropy, Adam with t in its own param "
    "group at lr 0.05). The clamp of t at log(100) is missing: on separable phrases t climbs "
    "every step and the head's logits grow without bound.",
)
def h526_joik_logit_scale_no_clamp(ctx):
    gen = seeded(52610)
    model = _JoikNet()
    opt = torch.optim.Adam(
        [
            {"params": [model.head.log_scale], "lr": 0.05},
            {"params": [p for n, p in model.named_parameters() if n != "head.log_scale"]},
        ],
        lr=2e-3,
    )
    px, py = next(_grades(torch.Generator().manual_seed(10), 256, 16, 6, 526100, spread=0.6))
    with torch.no_grad():
        l0 = float(model(px).abs().max())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 526100, spread=0.6),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        l1 = float(model(px).abs().max())
    ctx.check("head logits over 20x their start", l1 > 20 * l0)
    ctx.check("logit scale over 5x its init", float(model.head.log_scale.detach().exp()) > 5)
    ctx.check("finite", _finite(losses))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="mouth_harp_tongue_gap_plateau_halving_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Mouth-harp tongue-gap regressor (SiLU MLP, MSE, SGD momentum 0.9 lr 0.05) with a "
    "hand-written plateau rule: every 10 steps the validation loss is measured and the lr is "
    "halved whenever it rose, so the rate drops several times at irregular steps.",
)
def h526_mouth_harp_halve_on_rise(ctx):
    gen = seeded(52611)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    vx, vy = next(_readings(torch.Generator().manual_seed(11), 256, 6, 526110, noise=0.2))
    state = {"prev": float("inf")}
    drops = []

    def after(step, loss):
        if step % 10 == 9:
            with torch.no_grad():
                val = float(F.mse_loss(model(vx), vy))
            if val > state["prev"]:
                for g in opt.param_groups:
                    g["lr"] *= 0.5
                drops.append(step)
            state["prev"] = val

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 32, 6, 526110, noise=0.2), 300, F.mse_loss, after=after
    )
    gaps = {b - a for a, b in zip(drops[:-1], drops[1:], strict=False)}
    ctx.check("lr halved at least 3 times", len(drops) >= 3)
    ctx.check("at irregular steps", len(gaps) >= 2)
    ctx.check("trained and finite", _fell(losses, ratio=0.6))


@scenario(
    family="rime_ice_accretion_fp16_onecycle_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Rime-ice accretion-rate regressor on a mast sensor (GELU MLP, Huber, fp16 autocast + "
    "GradScaler, AdamW, OneCycleLR, clipping at 1, noisy targets): an ordinary mixed-precision "
    "run.",
)
def h526_rime_ice_fp16_onecycle(ctx):
    gen = seeded(52612)
    model = _Net(7, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 7, 526120, noise=0.15)
    losses = []
    for _ in range(200):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained and finite", _fell(losses, ratio=0.6))


class _TiedGRULM(nn.Module):
    def __init__(self, vocab=10, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, idx):
        out, _ = self.gru(self.emb(idx))
        return self.head(out)


def _stitch_sequences(gen, batch, vocab=10, length=24):
    """Awl-stitch patterns: a stitch kind repeated with period 2-4, occasional slips."""
    while True:
        period = torch.randint(2, 5, (batch, 1), generator=gen)
        base = torch.randint(0, vocab, (batch, 4), generator=gen)
        pos = torch.arange(length + 1)[None] % period
        seq = base.gather(1, pos)
        slip = torch.rand(batch, length + 1, generator=gen) < 0.05
        seq = torch.where(slip, torch.randint(0, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="cordwainer_awl_stitch_tied_gru_lm",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Cordwainer awl-stitch pattern language model (GRU with tied embedding and output "
    "weights, cross-entropy with label smoothing 0.1, NAdam in two param groups with weight "
    "decay off for biases, gradient accumulation 2, clipping at 1): an ordinary run.",
)
def h526_cordwainer_tied_gru_accum(ctx):
    gen = seeded(52613)
    model = _TiedGRULM()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.NAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    ctx.attach(model, opt)
    data = _stitch_sequences(gen, 16)
    losses = []
    for _ in range(120):
        for _micro in range(2):
            x, y = next(data)
            logits = model(x)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=0.1
            )
            (loss / 2).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained and finite", _fell(losses, ratio=0.7))
