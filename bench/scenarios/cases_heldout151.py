"""Held-out set 151 (``h151_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: transformers written by hand (a hand softmax over q.k
scores, ``nn.MultiheadAttention`` and ``scaled_dot_product_attention`` with a causal mask), a
mixture-of-experts layer with a hand-written top-1 router, a sequence-to-sequence GRU, a
contrastive two-tower model (InfoNCE with a temperature), 1-D conv nets under fp16 autocast with a
GradScaler, and MLP regressors and classifiers.

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
    return s[len(s) // 2] if s else 0.0


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
    classifier=False,
    before=None,
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y) / accumulate
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
        if math.isnan(shown):
            break


# -- carpet knot motifs: a hand softmax over q.k that multiplies by sqrt(d) ---------------------


class KnotAttention(nn.Module):
    """Single-head self-attention written by hand: softmax over q.k scores times ``scale``;
    records the largest score the softmax saw."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        return self.o(torch.softmax(scores, dim=-1) @ self.v(x))


class CarpetKnotNet(nn.Module):
    """Reads a row of 16 knot colours (12 dyes) from a hand-knotted carpet and names which of
    five border motifs the row belongs to."""

    def __init__(self, dyes=12, dim=32, length=16, motifs=5, scale=None):
        super().__init__()
        self.dye = nn.Embedding(dyes, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = KnotAttention(dim, 1.0 / math.sqrt(dim) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, motifs)

    def forward(self, x):
        h = self.dye(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _carpet_rows(gen, batch, dyes=12, length=16):
    """The motif is set by where the first dye-0 knot sits relative to the first dye-1 knot and
    by how many knots repeat their neighbour."""
    while True:
        x = torch.randint(0, dyes, (batch, length), generator=gen)
        first0 = (x == 0).float().argmax(1)
        first1 = (x == 1).float().argmax(1)
        repeats = (x[:, 1:] == x[:, :-1]).sum(1)
        y = (first0 < first1).long() * 2 + (repeats > 1).long()
        y = torch.where((x == 2).sum(1) > 3, torch.full_like(y, 4), y)
        yield x, y


@scenario(
    family="carpet_knot_motif_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with attention written by hand. The score scale was written "
    "as math.sqrt(dim) where 1/math.sqrt(dim) was meant (the q.k product is multiplied by 5.7 "
    "instead of divided by it), and AdamW runs at lr 1e-2 with weight decay 0: the q.k scores "
    "the softmax sees grow more than 10x, past 100.",
)
def h151_carpet_knot_sqrt_scale(ctx: Context) -> None:
    gen = seeded(15101)
    model = CarpetKnotNet(scale=math.sqrt(32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _carpet_rows(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention scores grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention scores above 100", seen[-1] > 100)


# -- katydid songs: an energy-margin term without its hinge --------------------------------------


class KatydidSongNet(nn.Module):
    """Names the katydid species (8) from a 40-bin song spectrum and the air temperature."""

    def __init__(self, bins=41, hidden=64, species=8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(bins, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, species)

    def forward(self, x):
        return self.head(self.act(self.trunk(x)))


def _katydid_songs(gen, batch, bins=41, species=8):
    """Song spectra around a per-species centre, shifted with temperature; one label in six is
    a field misidentification."""
    centres = torch.randn(species, bins - 1, generator=gen)
    while True:
        y = torch.randint(0, species, (batch,), generator=gen)
        temp = torch.rand(batch, 1, generator=gen)
        x = centres[y] * (0.8 + 0.4 * temp) + 0.8 * torch.randn(batch, bins - 1, generator=gen)
        wrong = torch.rand(batch, generator=gen) < 1 / 6
        y = torch.where(wrong, torch.randint(0, species, (batch,), generator=gen), y)
        yield torch.cat([x, temp], 1), y


@scenario(
    family="katydid_song_species_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Energy-margin fine-tuning for out-of-distribution calls: the in-distribution term "
    "relu(E - m_in)**2 (E = -logsumexp of the logits) was written as (E - m_in) without the "
    "hinge, so it rewards a larger logsumexp for ever. Cross-entropy does not see a common shift "
    "of the logits: the head's logits grow without bound (20x, past 100) while the class "
    "probabilities stay unsaturated.",
)
def h151_katydid_energy_margin_no_hinge(ctx: Context) -> None:
    gen = seeded(15102)
    model = KatydidSongNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, probs = [], []

    def loss_fn(out, y):
        energy = -torch.logsumexp(out, dim=1)
        return F.cross_entropy(out, y) + 0.1 * (energy - (-7.0)).mean()

    def watch(step, out, x, y):
        seen.append(float(out.detach().abs().amax()))
        probs.append(float((torch.softmax(out.detach().float(), 1).amax(1) == 1.0).float().mean()))

    _train(ctx, model, opt, _katydid_songs(gen, 64), 250, loss_fn, classifier=True, watch=watch)
    ctx.check("head logits grew 20x", seen[-1] > 20 * _mean(seen[:5]))
    ctx.check("head logits above 100", seen[-1] > 100)
    ctx.check("no probability rounded to 1", max(probs[-20:]) == 0.0)


# -- ski wax grades: a temperature read in the wrong unit ----------------------------------------


class WaxEncoder(nn.Module):
    """A transformer block with ``nn.MultiheadAttention`` over 10 snow readings (temperature,
    humidity, crystal size, ... per reading), mean-pooled into a wax-grade head."""

    def __init__(self, feats=4, dim=32, heads=4, grades=6, temperature=1.0):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(10, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, grades)
        self.temperature = temperature

    def forward(self, x):
        h = self.embed(x) + self.pos
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1)) / self.temperature


def _snow_readings(gen, batch, grades=6):
    """The grade follows the mean snow temperature (banded) and whether humidity rises."""
    while True:
        x = torch.randn(batch, 10, 4, generator=gen)
        t = x[:, :, 0].mean(1) * 3
        band = torch.bucketize(t, torch.tensor([-2.0, -0.7, 0.0, 0.7, 2.0]))
        y = torch.clamp(band, 0, grades - 1)
        yield x, y


@scenario(
    family="ski_wax_grade_transformer",
    optimizer="SGD (momentum 0.9)",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A transformer classifier (nn.MultiheadAttention) whose logits are divided by an "
    "annealed temperature T = decay**step, meant to sharpen slowly (decay 0.996); the config "
    "has 0.96, so T falls below 0.01 after about 110 steps. SGD momentum with clipping at 1.0 "
    "keeps the run finite while the softmax rounds most rows' target probability to exactly 1.0 "
    "in float32 (and the others to 0).",
)
def h151_ski_wax_temperature_decay_typo(ctx: Context) -> None:
    gen = seeded(15103)
    model = WaxEncoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = []

    def anneal(step):
        model.temperature = 0.96**step

    _train(
        ctx,
        model,
        opt,
        _snow_readings(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        before=anneal,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half of the rows collapsed to exactly 1.0", _mean(seen[-10:]) > 0.5)
    ctx.check("none collapsed in the first 50 steps", max(seen[:50]) == 0.0)
    ctx.check("loss stayed finite", _finite(ctx.losses))


# -- welding bead width: a StepLR whose gamma was typed as 10 ------------------------------------


def _welding_runs(gen, n=256):
    """Bead width (mm) from current, voltage, travel speed, wire feed and torch angle (all
    standardised): one full batch, replayed each step."""
    x = torch.randn(n, 5, generator=gen)
    width = (
        4.0
        + 0.9 * x[:, 0]
        + 0.4 * x[:, 1]
        - 0.7 * x[:, 2]
        + 0.3 * x[:, 3] * x[:, 0]
        + 0.2 * torch.sin(2 * x[:, 4])
    )
    y = (width + 0.1 * torch.randn(n, generator=gen))[:, None]
    while True:
        yield x, y


@scenario(
    family="welding_bead_width_regressor",
    optimizer="SGD (plain, full batch)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="Full-batch plain SGD on an MLP regressor at lr 0.02, with StepLR(step_size=60, "
    "gamma=10): the decay factor was typed as 10 instead of 0.1, so at step 60 the learning rate "
    "jumps to 0.2, past 2/sharpness of the loss surface, and the loss oscillates and blows up.",
)
def h151_welding_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(15104)
    model = nn.Sequential(
        nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _welding_runs(gen),
        150,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    ctx.check("loss fell before the jump", ls[59] < 0.5 * ls[0])
    ctx.check("lr jumped 10x at step 60", abs(lrs[60] / lrs[59] - 10) < 1e-6)
    bad = _first_bad(ls)
    ctx.check(
        "loss blew up after the jump",
        (bad is not None and bad > 60) or max(ls[60:]) > 100 * ls[59],
    )


# -- ropewalk twist: a deep ReLU net initialised with the gain applied twice --------------------


class RopeTwistNet(nn.Module):
    """Predicts the twist (turns per metre) a ropewalk lays into a strand from fibre, strand
    count, tension and walk speed: ten ReLU layers, no normalisation."""

    def __init__(self, feats=6, hidden=48, depth=10, gain=1.4142135623730951):
        super().__init__()
        sizes = [feats] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.out = nn.Linear(hidden, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.out(x)


def _ropewalk(gen, batch):
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (1.5 + 0.6 * x[:, 0] - 0.4 * x[:, 1] * x[:, 2] + 0.3 * torch.tanh(x[:, 3]))[:, None]
        yield x, y


@scenario(
    family="ropewalk_twist_regressor",
    optimizer="SGD (Nesterov, momentum 0.9)",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="A ten-layer ReLU MLP with no normalisation. The init helper multiplies the He std "
    "by calculate_gain('relu') a second time (std 2/sqrt(fan_in) instead of sqrt(2)/sqrt(fan_in)): "
    "each layer multiplies the signal forward and the gradient backward by about 1.4, the "
    "output starts 30x too large, and SGD with Nesterov momentum at lr 1e-4 (which trains the "
    "correctly initialised net) sends the gradients up by orders of magnitude within a few "
    "steps until the loss is NaN.",
)
def h151_ropewalk_double_gain_init(ctx: Context) -> None:
    gen = seeded(15105)
    model = RopeTwistNet(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    with torch.no_grad():
        h = torch.randn(256, 6)
        rms = []
        for lin in model.layers:
            h = F.relu(lin(h))
            rms.append(float(h.pow(2).mean().sqrt()))
    grads = []

    def after(step):
        grads.append(float(model.layers[0].weight.grad.norm()))

    _train(ctx, model, opt, _ropewalk(gen, 64), 120, F.mse_loss, after=after)
    ctx.check("signal grew 20x through the ten layers at init", rms[-1] > 20 * rms[0])
    ctx.check("first layer's gradient grew 100x", max(grads) > 100 * grads[0])
    bad = _first_bad(ctx.losses)
    ctx.check("loss blew up", bad is not None or max(ctx.losses) > 1000 * ctx.losses[0])


# -- bricklaying mortar joints: RMSprop at an Adam learning rate ---------------------------------


class MortarJointNet(nn.Module):
    """Predicts mortar-joint compressive strength (MPa) from mix, curing and weather readings."""

    def __init__(self, feats=8, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(feats, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))


def _mortar(gen, batch):
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = (10 + 3 * x[:, 0] - 2 * x[:, 1] + x[:, 2] * x[:, 3] + torch.sin(x[:, 4]))[:, None]
        yield x, y + 0.2 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="bricklaying_mortar_joint_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="The optimizer was switched from Adam to RMSprop and the sweep's learning rate 1e-1 "
    "was kept; "
    "RMSprop has no bias correction, so its first steps are sqrt(1/(1-alpha)) = 10x larger than "
    "Adam's. The large early updates push fc2's pre-activations negative for every input: most "
    "of its ReLU units (about half) die at once and never come back, and the loss plateaus "
    "well above a working "
    "run's.",
)
def h151_bricklaying_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(15106)
    model = MortarJointNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    probe = torch.randn(512, 8, generator=gen)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe))
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(probe)))

    _train(ctx, model, opt, _mortar(gen, 64), 200, F.mse_loss, after=after)
    ctx.check("under 10% dead at init", dead0 < 0.1)
    ctx.check("over 40% of fc2's units dead at the end", dead[-1] > 0.4)
    ctx.check("they stayed dead for the last 100 steps", min(dead[-100:]) > 0.4)
    ctx.check("loss plateaued far above the noise floor (0.04)", _mean(ctx.losses[-50:]) > 1.0)


# -- tea leaf grading: a mixture of experts whose expert group was left at a warm-up rate --------


class Top1MoE(nn.Module):
    """A mixture-of-experts layer with a hand-written top-1 router: each row goes to the expert
    with the largest router logit, scaled by that expert's softmax gate."""

    def __init__(self, dim, hidden, experts):
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )

    def forward(self, x):
        gates = torch.softmax(self.router(x), dim=-1)
        top, idx = gates.max(dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = idx == e
            if rows.any():
                out[rows] = expert(x[rows]) * top[rows, None]
        return out


class TeaLeafGrader(nn.Module):
    """Grades plucked tea leaf (orange pekoe ... dust, 6 grades) from leaf length, width,
    colour, moisture and wither time."""

    def __init__(self, feats=10, dim=32, grades=6, experts=4):
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.moe = Top1MoE(dim, 64, experts)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, grades)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.moe(h)
        return self.head(self.norm(h))


def _tea_leaves(gen, batch, grades=6):
    w = torch.randn(10, grades, generator=gen)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = (x @ w + 0.8 * torch.sin(3 * x[:, :grades])).argmax(1)
        yield x, y


@scenario(
    family="tea_leaf_grade_moe",
    optimizer="Adam (param groups)",
    cause="update_ratio_out_of_range",
    where=("moe.experts",),
    diverges=None,
    heldout=True,
    note="A classifier with a mixture-of-experts layer (hand-written top-1 router). The "
    "training script puts the experts in their own param group at lr * 1e-5 for a 'router "
    "warm-up' of 20 steps, and the line that restores their rate was guarded by the wrong "
    "step variable, so it never runs: the experts' update/weight ratio stays near 1e-8 for "
    "the whole run while the router, embedding and head train at lr 3e-3.",
)
def h151_tea_leaf_experts_never_warmed(ctx: Context) -> None:
    gen = seeded(15107)
    model = TeaLeafGrader()
    lr = 3e-3
    experts = list(model.moe.experts.parameters())
    ids = {id(p) for p in experts}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}, {"params": experts, "lr": lr * 1e-5}])
    w0 = [p.detach().clone() for p in experts]
    r0 = model.moe.router.weight.detach().clone()
    counters = {"eval_step": 0}  # advanced by the evaluation loop, which this run never calls

    def warm_up(step):
        if counters["eval_step"] == 20:  # meant: step == 20
            opt.param_groups[1]["lr"] = lr

    _train(
        ctx, model, opt, _tea_leaves(gen, 64), 200, F.cross_entropy, classifier=True, before=warm_up
    )
    moved = max(float((p - q).norm() / q.norm()) for p, q in zip(experts, w0, strict=True))
    router = float((model.moe.router.weight - r0).norm() / r0.norm())
    ctx.check("experts moved under 1e-3 of their norm", moved < 1e-3)
    ctx.check("router moved over 10% of its norm", router > 0.1)
    ctx.check("loss fell through the other layers", _fell(ctx.losses))


# -- violin bow rehairing: a gradient check that leaves its gradient behind -----------------------


class BowHairNet(nn.Module):
    """Predicts the tension (N) a rehaired bow settles at from hank weight, hair length, plug
    fit, humidity and stick camber."""

    def __init__(self, feats=7, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feats, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.body(x))


def _bow_hair(gen, batch):
    w = torch.randn(7, generator=gen)
    while True:
        x = torch.randn(batch, 7, generator=gen)
        y = (x @ w + 0.5 * x[:, 0] * x[:, 1] - 0.4 * x[:, 2].pow(2))[:, None]
        yield x, y + 0.05 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="violin_bow_rehair_tension_regressor",
    optimizer="Adamax",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="At step 60 a scheduled finite-difference gradient check runs inside the training "
    "step: it backpropagates the loss times 1/eps = 1e4 and does not zero the gradients before "
    "optimizer.step(). Adamax's infinity-norm state u = max(0.999 u, |g|) takes the 1e4x "
    "gradient and decays it by only 0.1% a step, so every later update is about 1e-4 of its "
    "size before and the loss stops falling.",
)
def h151_violin_bow_gradcheck_left_in(ctx: Context) -> None:
    gen = seeded(15108)
    model = BowHairNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    moves = []
    prev = [torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()]

    def after(step):
        now = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now.clone()

    _train(
        ctx,
        model,
        opt,
        _bow_hair(gen, 64),
        200,
        F.mse_loss,
        scale_loss=lambda s, loss: loss * 1e4 if s == 60 else loss,
        after=after,
    )
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient at step 60 over 1000x the median", g[60] > 1000 * _median(g[:60]))
    ctx.check("updates after it under 1/50 of before", _mean(moves[80:]) < _mean(moves[30:60]) / 50)
    ctx.check("loss fell before step 60", _mean(ls[50:60]) < 0.5 * _mean(ls[:10]))
    ctx.check("loss stopped falling after it", _mean(ls[-20:]) > 0.7 * _mean(ls[50:60]))


# -- snowmaking guns: one shard logged in litres per hour instead of cubic metres ---------------


class SnowGunNet(nn.Module):
    """Predicts a snow gun's output (m^3 of snow an hour) from wet-bulb temperature, humidity,
    water flow (m^3/h), air pressure and nozzle count."""

    def __init__(self, feats=5, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(feats, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _snowmaking(gen, batch):
    while True:
        x = torch.randn(batch, 5, generator=gen)
        y = (2.0 * x[:, 2] - 1.2 * x[:, 0] + 0.5 * x[:, 0] * x[:, 1] + 0.3 * x[:, 4])[:, None]
        yield x, y + 0.1 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="snowmaking_gun_output_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="One resort's logger wrote water flow in litres per hour instead of cubic metres per "
    "hour; its shard lands in the batch of step 90, where the flow column (standardised "
    "against m^3/h) is 1000x too large for every row. That batch's loss and gradient spike by "
    "orders of magnitude; the tanh layers saturate and the run recovers over the following "
    "steps.",
)
def h151_snowmaking_litres_shard(ctx: Context) -> None:
    gen = seeded(15109)
    model = SnowGunNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0
        return x, y

    _train(ctx, model, opt, _snowmaking(gen, 64), 200, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 over 50x the median before", ls[90] > 50 * _median(ls[60:90]))
    ctx.check("gradient at step 90 over 50x the median before", g[90] > 50 * _median(g[60:90]))
    ctx.check("run recovered", _finite(ls) and _mean(ls[-10:]) < 3 * _median(ls[60:90]))


# -- knitting charts: one step's loss summed instead of averaged ---------------------------------


class StitchSeq2Seq(nn.Module):
    """A sequence-to-sequence GRU: the encoder reads a knitting chart row (stitch tokens), the
    decoder writes the next row with teacher forcing."""

    def __init__(self, stitches=12, dim=32, hidden=64):
        super().__init__()
        self.src = nn.Embedding(stitches, dim)
        self.tgt = nn.Embedding(stitches + 1, dim)
        self.encoder = nn.GRU(dim, hidden, batch_first=True)
        self.decoder = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, stitches)
        self.bos = stitches

    def forward(self, pair):
        src, tgt_in = pair
        _, h = self.encoder(self.src(src))
        out, _ = self.decoder(self.tgt(tgt_in), h)
        return self.head(out)


def _knitting_rows(gen, batch, stitches=12, length=10):
    """The next row mirrors the chart row and turns knit into purl (token t -> (t + 6) % 12)."""
    while True:
        src = torch.randint(0, stitches, (batch, length), generator=gen)
        tgt = (src.flip(1) + 6) % stitches
        tgt_in = torch.cat([torch.full((batch, 1), stitches), tgt[:, :-1]], 1)
        yield (src, tgt_in), tgt


def _seq_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@scenario(
    family="knitting_chart_seq2seq_gru",
    optimizer="SGD (momentum 0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="A GRU encoder-decoder trained with token-mean cross-entropy and clipping at 1.0. The "
    "step that closes the first epoch (step 100) takes the 'last partial batch' branch, whose "
    "loss is written with reduction='sum': that one backward is 640x (64 rows x 10 tokens) the "
    "usual gradient. The clip keeps the update bounded and the run goes on.",
)
def h151_knitting_last_batch_sum(ctx: Context) -> None:
    gen = seeded(15110)
    model = StitchSeq2Seq()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def scale(step, loss):
        return loss * loss.new_tensor(64 * 10) if step == 100 else loss

    _train(ctx, model, opt, _knitting_rows(gen, 64), 220, _seq_ce, clip=1.0, scale_loss=scale)
    g = ctx.grad_norms
    ctx.check("gradient at step 100 over 200x the median", g[100] > 200 * _median(g[80:100]))
    ctx.check("no other step above 10x the median", max(g[101:]) < 10 * _median(g[80:100]))
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))


# -- sail lofts: a wave speed computed as sqrt of an unclamped tension ----------------------------


class SailClothNet(nn.Module):
    """Predicts the luff flutter frequency of a sail panel: a tension head (N/m) from cloth
    weight, cut angle and wind readings, then the physics c = sqrt(T / mu), f = c / (2 L)."""

    def __init__(self, feats=6, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feats, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.act = nn.ReLU()
        self.tension = nn.Linear(hidden, 1)
        nn.init.constant_(self.tension.bias, 1.0)
        self.mu = 0.25  # cloth mass per metre (kg/m)
        self.length = 0.5  # panel length (m)

    def forward(self, x):
        t = self.tension(self.act(self.body(x)))
        return torch.sqrt(t / self.mu) / (2 * self.length)  # no clamp: T must be >= 0


def _sail_panels(gen, batch):
    """True tension ranges from 0.01 N/m (luffing in light air) to about 3 N/m."""
    while True:
        x = torch.randn(batch, 6, generator=gen)
        t = 0.01 + F.softplus(1.2 * x[:, 0] - 0.8 * x[:, 1] + 0.3 * x[:, 2] - 1.0)
        yield x, (torch.sqrt(t / 0.25) / 1.0)[:, None]


@scenario(
    family="sailmaker_luff_flutter_model",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("tension",),
    diverges=105,
    heldout=True,
    note="The tension head is linear and the physics layer takes sqrt(T / mu) with no clamp "
    "or softplus (the notebook version had T = softplus(raw) + 1e-3). Light-air panels have a "
    "true tension near 0.01 N/m, Adagrad at lr 1e-3 overshoots one of them into negative "
    "tension at step 105, and "
    "sqrt of a negative number makes the prediction and the loss NaN.",
)
def h151_sailmaker_sqrt_negative_tension(ctx: Context) -> None:
    gen = seeded(15111)
    model = SailClothNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-3)
    mins = []
    _train(
        ctx,
        model,
        opt,
        _sail_panels(gen, 64),
        250,
        F.mse_loss,
        watch=lambda s, o, x, y: mins.append(float(model.tension(model.act(model.body(x))).min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss became NaN", bad is not None)
    ctx.check("tension was positive everywhere at first", mins[0] > 0)
    ctx.check("a tension went negative at the NaN step", bad is not None and mins[bad] < 0)


# -- steelpan notes: a sum of squares taken in fp16 under autocast -------------------------------


class PanEnergy(nn.Module):
    """Band energies of a conv filter bank, summed over time, as log features. Under autocast
    the conv output is fp16, so the sum of squares is fp16 too; records the largest energy it saw
    (and whether fp16 overflowed)."""

    def __init__(self):
        super().__init__()
        self.last_max = 0.0
        self.last_inf = False

    def forward(self, h):
        e = h.pow(2).sum(-1)
        with torch.no_grad():
            self.last_max = float(h.detach().float().pow(2).sum(-1).amax())
            self.last_inf = bool(torch.isinf(e).any())
        return torch.log(e + 1e-3)


class SteelpanNoteNet(nn.Module):
    """Names which of 12 steelpan notes was struck from 128 samples of the strike."""

    def __init__(self, notes=12, bands=24):
        super().__init__()
        self.filters = nn.Conv1d(1, bands, 9, padding=4)
        self.energy = PanEnergy()
        self.mix = nn.Linear(bands, 64)
        self.head = nn.Linear(64, notes)

    def forward(self, x):
        e = self.energy(self.filters(x[:, None, :]))
        return self.head(F.gelu(self.mix(e.float())))


def _steelpan_strikes(gen, batch, notes=12, n=128):
    t = torch.arange(n) / n
    while True:
        y = torch.randint(0, notes, (batch,), generator=gen)
        freq = 4.0 + 2.5 * y.float()
        amp = 32.0 * (0.5 + torch.rand(batch, 1, generator=gen))  # sound pressure, Pa
        x = amp * torch.sin(2 * math.pi * freq[:, None] * t) * torch.exp(-3 * t)
        yield x + 0.05 * 32.0 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="steelpan_note_energy_classifier",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=173,
    heldout=True,
    note="Training moved to fp16 autocast with a GradScaler; the strikes are recorded as sound "
    "pressure in pascals (about 30 Pa, a pan played close to the microphone). The hand-written "
    "band-energy "
    "layer sums h**2 over 128 samples of the conv filter bank's output, which autocast leaves in "
    "fp16; as Adam grows the filters the energy passes 65504, overflows to inf in the forward "
    "pass at step 173, and log(inf) feeds inf into the head: the loss is NaN (the float32 energy "
    "would have been finite).",
)
def h151_steelpan_fp16_energy_sum(ctx: Context) -> None:
    gen = seeded(15112)
    model = SteelpanNoteNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    peak, inf = [], []

    def watch(step, out, x, y):
        peak.append(model.energy.last_max)
        inf.append(model.energy.last_inf)

    _train(
        ctx,
        model,
        opt,
        _steelpan_strikes(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss became non-finite", bad is not None)
    ctx.check("energy overflowed fp16 at that step", bad is not None and inf[bad])
    ctx.check("its float32 value was finite", bad is not None and math.isfinite(peak[bad]))
    ctx.check("no overflow in the first 10 steps", not any(inf[:10]))
    ctx.check(
        "loss fell before the overflow",
        bad is not None and bad > 20 and _fell(ctx.losses[:bad], 5, 0.9),
    )


# -- healthy controls ----------------------------------------------------------------------------


class StepAttention(nn.Module):
    """Causal multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MorrisStepLM(nn.Module):
    """A two-block causal decoder over Morris dance figure notation (20 step tokens), predicting
    the next step of the dance."""

    def __init__(self, steps=20, dim=32, heads=4, context=24, layers=2):
        super().__init__()
        self.tok = nn.Embedding(steps, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(dim),
                    "attn": StepAttention(dim, heads),
                    "ln2": nn.LayerNorm(dim),
                    "ff": nn.Sequential(
                        nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
                    ),
                }
            )
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, steps)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            h = h + blk["attn"](blk["ln1"](h))
            h = h + blk["ff"](blk["ln2"](h))
        return self.head(self.ln_f(h))


def _morris_dances(gen, batch, steps=20, context=24):
    """Dances repeat a figure of 3 to 6 steps, with one step in ten danced differently."""
    while True:
        period = torch.randint(3, 7, (batch,), generator=gen)
        figure = torch.randint(0, steps, (batch, 6), generator=gen)
        pos = torch.arange(context + 1)[None, :] % period[:, None]
        seq = figure.gather(1, pos)
        slip = torch.rand(batch, context + 1, generator=gen) < 0.1
        seq = torch.where(slip, torch.randint(0, steps, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="morris_dance_step_causal_lm",
    optimizer="AdamW (param groups)",
    cause="healthy",
    heldout=True,
    note="Healthy control: a causal decoder with scaled_dot_product_attention(is_causal=True), "
    "fp16 autocast with a GradScaler, AdamW with no decay on norms and biases, linear warm-up "
    "then cosine (LambdaLR), clipping at 1.0, label smoothing 0.1.",
)
def h151_morris_causal_lm_amp_control(ctx: Context) -> None:
    gen = seeded(15113)
    model = MorrisStepLM()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-3,
    )
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _morris_dances(gen, 32),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell by a fifth", _fell(ctx.losses, 10, 0.8))
    ctx.check("loss scale stayed above 1", min(ctx.scales) > 1.0)


class CallTower(nn.Module):
    def __init__(self, feats, dim=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feats, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, x):
        return F.normalize(self.net(x), dim=-1)


class BirdSightingPair(nn.Module):
    """Two towers: a bird call's 30-bin spectrum and the field sighting record (habitat,
    time, plumage notes), embedded so a call matches its sighting."""

    def __init__(self):
        super().__init__()
        self.call = CallTower(30)
        self.sighting = CallTower(12)

    def forward(self, pair):
        return self.call(pair[0]), self.sighting(pair[1])


def _bird_pairs(gen, batch, species=40):
    calls = torch.randn(species, 30, generator=gen)
    sightings = torch.randn(species, 12, generator=gen)
    while True:
        s = torch.randperm(species, generator=gen)[:batch]
        a = calls[s] + 0.5 * torch.randn(batch, 30, generator=gen)
        b = sightings[s] + 0.5 * torch.randn(batch, 12, generator=gen)
        yield (a, b), torch.arange(batch)


def _info_nce(out, y, temperature=0.1):
    a, b = out
    logits = a @ b.T / temperature
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))


@scenario(
    family="birdwatch_call_sighting_contrastive",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a two-tower contrastive model trained with a symmetric InfoNCE "
    "loss at temperature 0.1 on in-batch negatives, RAdam with weight decay and StepLR.",
)
def h151_birdwatch_infonce_control(ctx: Context) -> None:
    gen = seeded(15114)
    model = BirdSightingPair()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    _train(ctx, model, opt, _bird_pairs(gen, 32), 200, _info_nce, sched=sched)
    ctx.check("loss fell by half", _fell(ctx.losses, 10, 0.5))


class CastNet(nn.Module):
    """Predicts a fly cast's distance (m) from rod length, line weight, wind, haul speed and
    loop width."""

    def __init__(self, feats=6, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feats, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x)


def _casts(gen, batch):
    while True:
        x = torch.randn(batch, 6, generator=gen)
        y = (18 + 3 * x[:, 0] + 2 * x[:, 3] - 1.5 * x[:, 2].abs() + x[:, 4] * x[:, 5])[:, None]
        noise = torch.randn(batch, 1, generator=gen) * (
            0.5 + 2.0 * (torch.rand(batch, 1, generator=gen) < 0.1)
        )
        yield x, y + noise


@scenario(
    family="fly_fishing_cast_distance_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="Healthy control: an MLP regressor on noisy casts (one in ten measured badly), Huber "
    "loss, Adadelta at lr 1.0, gradient accumulation over two micro-batches, clipping at 5 and "
    "ReduceLROnPlateau.",
)
def h151_fly_fishing_adadelta_control(ctx: Context) -> None:
    gen = seeded(15115)
    model = CastNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _casts(gen, 32),
        200,
        lambda o, y: F.huber_loss(o, y, delta=2.0),
        clip=5.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, 10, 0.5))


class VeneerNet(nn.Module):
    """Flags defects (knot, split, glue bleed, burn) in a 32-sample grain-density scan of a
    marquetry veneer: a 1-D conv with BatchNorm and a multi-label head."""

    def __init__(self, defects=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, defects)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x[:, None, :])))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.amax(-1))


def _veneers(gen, batch, n=32):
    t = torch.arange(n).float()
    while True:
        x = torch.sin(t / 3 + torch.rand(batch, 1, generator=gen) * 6) + 0.2 * torch.randn(
            batch, n, generator=gen
        )
        y = (torch.rand(batch, 4, generator=gen) < 0.3).float()
        where = torch.randint(2, n - 2, (batch, 4), generator=gen)
        for d, shape in enumerate((2.5, -2.5, 1.5, -1.5)):
            idx = where[:, d]
            rows = y[:, d] > 0
            width = d % 2 + 1
            for o in range(-width, width + 1):
                x[rows, (idx[rows] + o).clamp(0, n - 1)] += shape * (1 - abs(o) / (width + 1))
        yield x, y


@scenario(
    family="marquetry_veneer_defect_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Healthy control: a 1-D conv net with BatchNorm, multi-label BCE with logits, NAdam "
    "with decoupled weight decay and OneCycleLR.",
)
def h151_marquetry_nadam_onecycle_control(ctx: Context) -> None:
    gen = seeded(15116)
    model = VeneerNet()
    opt = torch.optim.NAdam(
        model.parameters(), lr=3e-3, weight_decay=1e-3, decoupled_weight_decay=True
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    _train(
        ctx,
        model,
        opt,
        _veneers(gen, 64),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, 10, 0.5))
