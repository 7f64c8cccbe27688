"""Held-out set 286 (``h286_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a signwriter's stencil-numeral patch-attention reader on
8x8 digits whose hand-written attention forgot the 1/sqrt(d), a cirit javelin-range tanh
regressor whose lr was typed 0.5 for 0.05, a knur-and-spell strike-distance deep ReLU MLP
initialised at gain 2, an esraj bow-pressure GELU regressor whose hand-written decoupled decay has
its sign flipped, a drop-spindle yarn-count regressor fed one shard in metres instead of
kilometres, a speedway overtake-count Poisson net whose rate is log(relu(.)) with no clamp, a
mellotron tape-slip classifier whose trunk param group read a misspelt multiplier key as 0, a
dotara string-mode classifier whose temperature was typed 0.01 for 1.0, a stock-whip crack
detector trained by RMSprop at 10x its rate, a sheep-shearing fleece-weight regressor whose resume
step reads the loss weight in percent, and three controls (a bark-cloth beating-mark convnet on
digits with mixup, a rudra-veena fret-pitch Gaussian-NLL net under fp16 autocast with a
GradScaler, a yangqin hammer-roll GRU regressor with accumulation, clipping and
ReduceLROnPlateau).

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
    digit_batches,
    digits,
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
    weight=None,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``after(step)`` runs after the optimizer step, ``weight(step)`` multiplies the
    backpropagated loss, ``backprop(step, out, y)`` gives the loss actually backpropagated
    (mixup); the logged loss is ``loss_fn``'s. Stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
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
            total = backprop(step, out, y) if backprop is not None else loss
            total = w * total / accumulate
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
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- stencil numerals: the hand-written attention forgot the 1/sqrt(d) ---------------------------


class PatchAttention(nn.Module):
    """Single-head self-attention over patch tokens; the scale 1/sqrt(d) was left out."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def logits(self, x):
        return self.q(x) @ self.k(x).transpose(1, 2)  # meant: / math.sqrt(dim)

    def forward(self, x):
        return self.proj(torch.softmax(self.logits(x), -1) @ self.v(x))


class StencilViT(nn.Module):
    """8x8 digit cut into 16 patches of 2x2, a linear patch embedding, one attention block."""

    def __init__(self, dim=32, classes=10):
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(16, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = PatchAttention(dim)
        self.head = nn.Linear(dim, classes)

    def tokens(self, x):
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.norm(self.patch(p) + self.pos)

    def forward(self, x):
        t = self.tokens(x)
        return self.head((t + self.attn(t)).mean(1))


@scenario(
    family="stencil_numeral_patch_attention_vit",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A small vision transformer (2x2 patch embedding over the 8x8 digits, learned positions, LayerNorm, one single-head attention attn with q, k, v, proj, mean-pooled head) reading a signwriter's stencil numerals, Adam at 1e-2, cross-entropy. The hand-written attention computes q @ k^T and forgot the / sqrt(d): nothing tempers q.k, sharpening the attention keeps paying at this rate, and the peak attention logit grows over 20x from its start. Finite throughout.",
)
def h286_stencil_attention_without_scale(ctx: Context) -> None:
    gen = seeded(28601)
    model = StencilViT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = digits()[0][:256]

    def peak_now():
        with torch.no_grad():
            return float(model.attn.logits(model.tokens(probe)).abs().max())

    peaks = [peak_now()]
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        after=lambda step: peaks.append(peak_now()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing late: last peak over 1.5x the peak at step 125", peaks[-1] > 1.5 * peaks[125]
    )
    ctx.check("the loss fell", _fell(ls, ratio=0.5))


# -- cirit: the lr was typed 0.5 for 0.05 ---------------------------------------------------------


@scenario(
    family="cirit_javelin_throw_range_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the range of a mounted cirit javelin throw from 8 standardised readings (horse speed, release angle, javelin mass, wind), plain SGD, MSE. The config's lr was typed 0.5 for 0.05: the measured lr x top Hessian eigenvalue of the loss is over 2 from the start, past the 2/sharpness stability limit, and the loss blows up. Data and init are fine (the same run at 0.05 trains).",
)
def h286_cirit_lr_typo(ctx: Context) -> None:
    gen = seeded(28602)
    model = Stack(8, hidden=64, act=nn.Tanh)
    for m in (model.fc1, model.fc2, model.head):
        nn.init.normal_(m.weight, std=1.5 / math.sqrt(m.in_features))
    lr = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    px, py = next(_readings(torch.Generator().manual_seed(3), 512, 8, 41))
    lam0 = _top_eig(model, F.mse_loss, px, py)
    _train(ctx, model, opt, _readings(gen, 128, 8, 41), 150, F.mse_loss)
    ls = ctx.losses
    low = min(v for v in ls[:20] if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x top Hessian eigenvalue over 2 at the start", lr * lam0 > 2.0)
    ctx.check("the loss blew up past 100x its early low", blow is not None)


# -- knur and spell: a deep ReLU MLP initialised at gain 2 ----------------------------------------


class KnurNet(nn.Module):
    """Ten Linear+ReLU layers in ``net`` (Linear at even indices) and a linear head."""

    def __init__(self, d_in=8, width=64, depth=10, gain=2.0):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.head.weight, std=gain / math.sqrt(width))

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


@scenario(
    family="knur_and_spell_strike_distance_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges="auto",
    heldout=True,
    note="A 10-layer ReLU MLP (net.0 ... net.18 Linear layers, head) regressing how far a knur-and-spell striker sends the knur from 8 standardised readings (swing speed, pummel length, trap spring), SGD with momentum 0.9 at lr 1e-3, MSE. The hand-written init uses std = 2 / sqrt(fan_in) (gain 2 where He init is sqrt(2)): each layer doubles the variance, so activations and the backward signal grow about 1.4x per layer; the backward signal reaching net.0 is over 10x the one at net.18, the gradient norm is over 100x a He-init twin's, and the loss blows up within a few steps.",
)
def h286_knur_and_spell_gain_two(ctx: Context) -> None:
    gen = seeded(28603)
    model = KnurNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x0, y0 = next(_readings(torch.Generator().manual_seed(4), 256, 8, 43))

    def signals(net):
        """Gradient norm of the loss w.r.t. each Linear's output, and the total gradient norm."""
        outs = []
        h = x0
        for i, layer in enumerate(net.net):
            h = layer(h)
            if i % 2 == 0:
                h.retain_grad()
                outs.append(h)
        F.mse_loss(net.head(h).squeeze(-1), y0).backward()
        back = [float(o.grad.norm()) for o in outs]
        total = grad_norm(net)
        net.zero_grad()
        return back, total

    back, total = signals(model)
    torch.manual_seed(1)
    _, he_total = signals(KnurNet(gain=math.sqrt(2.0)))
    _train(ctx, model, opt, _readings(gen, 64, 8, 43), 150, F.mse_loss)
    ls = ctx.losses
    low = min(v for v in ls[:5] if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the backward signal at net.0 over 10x that at net.18", back[0] > 10 * back[-1])
    ctx.check("the gradient norm over 100x a He-init twin's", total > 100 * he_total)
    ctx.check("the loss blew up past 100x its early low", blow is not None)


# -- esraj: the hand-written decoupled weight decay has its sign flipped --------------------------


@scenario(
    family="esraj_bow_pressure_gelu_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing an esraj player's bow pressure from 10 standardised readings (bow speed, contact point, string, dynamics), AdamW at 3e-3 with its own weight_decay 0 because the loop applies decoupled decay by hand after each step. The hand-written line is p.mul_(1 + lr * wd) (meant 1 - lr * wd) with wd 3.0: every weight matrix is inflated by 0.9% a step, which Adam's bounded steps cannot undo; the loss falls for about 100 steps, then climbs smoothly to over 5x its low and past where it started, with no single jump. No NaN.",
)
def h286_esraj_decay_sign(ctx: Context) -> None:
    gen = seeded(28604)
    model = Stack(10, hidden=64, act=nn.GELU)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)  # meant 1 - lr * wd

    _train(ctx, model, opt, _readings(gen, 64, 10, 44), 300, F.mse_loss, after=after)
    ls = ctx.losses
    sm = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9)]
    low_at = min(range(len(sm)), key=lambda i: sm[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first (low 2x under the start)", sm[low_at] < 0.5 * sm[0])
    ctx.check("then climbed to over 5x its low", sm[-1] > 5 * sm[low_at])
    ctx.check("and past where it started", sm[-1] > sm[0])
    ctx.check("the climb took over 60 steps", len(sm) - 1 - low_at > 60)
    ctx.check(
        "gradual: no step after the low over 3x the step before",
        max(ls[i + 1] / ls[i] for i in range(low_at, len(ls) - 1)) < 3,
    )


# -- drop spindle: one shard in metres instead of kilometres --------------------------------------

SPINDLE_BAD = 120


@scenario(
    family="drop_spindle_yarn_count_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SPINDLE_BAD,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a hand-spun yarn's count from 8 standardised readings of a drop spindle (whorl weight, spin rate, draft length per kilometre), SGD with momentum 0.9 at 0.02, MSE, gradient clipping at 1.0. One shard came from a workshop that logged the length columns per metre instead of per kilometre: at step 120 the batch's first three columns are 1000x their scale. The loss on that batch is over 100x the usual and its gradient over 50x; clipping bounds the update and the run recovers.",
)
def h286_drop_spindle_metre_shard(ctx: Context) -> None:
    gen = seeded(28605)
    model = Stack(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == SPINDLE_BAD:
            x = x.clone()
            x[:, :3] *= 1000.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, 45), 250, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[SPINDLE_BAD - 20 : SPINDLE_BAD]
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the bad batch's loss over 100x the median before", ls[SPINDLE_BAD] > 100 * _median(before)
    )
    ctx.check(
        "its gradient over 50x the median before",
        gs[SPINDLE_BAD] > 50 * _median(gs[SPINDLE_BAD - 20 : SPINDLE_BAD]),
    )
    ctx.check("recovered: last 20 under 2x the 20 before", _mean(ls[-20:]) < 2 * _mean(before))


# -- speedway: the Poisson rate is log(relu(.)) with no clamp -------------------------------------


class LogRate(nn.Module):
    """The log-rate of a Poisson head: meant log(softplus(z)) or a clamp before the log."""

    def forward(self, z):
        return torch.log(F.relu(z))


class SpeedwayNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.log_rate = LogRate()
        nn.init.constant_(self.head.bias, 1.5)

    def forward(self, x):
        return self.log_rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


def _overtakes(gen, batch, d_in=8, seed=46):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        rate = torch.exp(0.9 * x @ w / math.sqrt(d_in) - 0.3)
        yield x, torch.poisson(rate, generator=gen)


SPEEDWAY_NAN = 41


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


@scenario(
    family="speedway_heat_overtake_count_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_rate",),
    diverges=SPEEDWAY_NAN,
    heldout=True,
    onset=SPEEDWAY_NAN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head, log_rate) predicting how many overtakes a speedway heat sees from 8 standardised readings (gate positions, track grip, riders' form), Poisson NLL exp(l) - y l on the log-rate, RAdam at 1e-2. The log-rate module computes torch.log(relu(z)): the softplus (or clamp) meant before the log is missing. Once the head drives a low-count heat's z to 0 or below, log(0) gives -inf and the loss is non-finite: at step 41.",
)
def h286_speedway_log_relu_rate(ctx: Context) -> None:
    gen = seeded(28606)
    model = SpeedwayNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    infs: list[int] = []

    def spot(module, inputs, out):
        if torch.isinf(out).any():
            infs.append(len(ctx.losses))

    model.log_rate.register_forward_hook(spot)
    _train(ctx, model, opt, _overtakes(gen, 64), 200, _poisson_nll)
    ls = ctx.losses
    ctx.check("the loss is first non-finite at step 41", _first_bad(ls) == SPEEDWAY_NAN)
    ctx.check("log_rate output -inf first at that step", bool(infs) and infs[0] == SPEEDWAY_NAN)


# -- mellotron: the trunk param group read a misspelt multiplier key as 0 -------------------------


@scenario(
    family="mellotron_tape_slip_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (trunk fc1, act1, fc2, act2; head) classifying which of 6 tape faults (slip, stretch, dropout, wow, ...) a mellotron key's 12 pitch and level readings show, Adagrad at 5e-2 in two param groups, cross-entropy. The trunk group's lr is base_lr * cfg.get('trunk_lr_mult', 0.0), but the config spells the key 'trunk_lr_multiplier': the trunk gets lr 0 and never moves (update ratio 0) while the head alone fits on the trunk's random features. Finite, no blow-up.",
)
def h286_mellotron_trunk_lr_zero(ctx: Context) -> None:
    gen = seeded(28607)
    model = Stack(12, hidden=64, out=6)
    cfg = {"base_lr": 5e-2, "trunk_lr_multiplier": 1.0}
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [
            {"params": trunk, "lr": cfg["base_lr"] * cfg.get("trunk_lr_mult", 0.0)},
            {"params": model.head.parameters(), "lr": cfg["base_lr"]},
        ]
    )
    t0, h0 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    _train(ctx, model, opt, _kinds(gen, 64, 12, 6, 47), 200, F.cross_entropy, classifier=True)
    t1, h1 = _flat(nn.ModuleList([model.fc1, model.fc2])), _flat(model.head)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("trunk weights did not move", float((t1 - t0).norm()) < 1e-9 * float(t0.norm()))
    ctx.check("head moved over 10% of its norm", float((h1 - h0).norm()) > 0.1 * float(h0.norm()))


# -- dotara: the temperature was typed 0.01 for 1.0 -----------------------------------------------


class TemperedStack(Stack):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden=hidden, out=out, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="dotara_string_mode_tempered_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 8 modes a dotara phrase is in from 16 pitch-class readings, logits divided by a temperature, NAdam at 2e-3, cross-entropy. The temperature was typed 0.01 for 1.0 (a percent read as a fraction): the logits are 100x, the fit drives the median top-2 logit gap past 10 and the float32 softmax rounds the target probability to exactly 1.0 on over a quarter of the rows (none at the start). Finite.",
)
def h286_dotara_temperature_typo(ctx: Context) -> None:
    gen = seeded(28608)
    model = TemperedStack(16, 64, 8, temperature=0.01)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    px, py = next(_kinds(torch.Generator().manual_seed(8), 512, 16, 8, 48))
    with torch.no_grad():
        start = collapsed_fraction(model(px), py)
    _train(ctx, model, opt, _kinds(gen, 64, 16, 8, 48), 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        logits = model(px)
    top2 = logits.topk(2, dim=-1).values
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("no row collapsed at the start", start < 0.05)
    ctx.check(
        "over a quarter of the rows' softmax exactly 1.0 on the target",
        collapsed_fraction(logits, py) > 0.25,
    )
    ctx.check("median top-2 logit gap over 10", float((top2[:, 0] - top2[:, 1]).median()) > 10)


# -- stock whip: RMSprop at 10x its rate kills the ReLUs ------------------------------------------


def _cracks(gen, batch, d_in=12, seed=49):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (torch.sin(x @ w / math.sqrt(d_in) * 2) + 0.3 * x[:, 0] > 0).float()
        yield 2 * x.abs(), y  # raw magnitudes, not standardised


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out, y)


@scenario(
    family="stock_whip_crack_detector_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) detecting whether a stockman's whip stroke cracked from 12 raw (non-negative, unstandardised) motion magnitudes, BCE with logits, RMSprop at 1e-1 (the recipe's 1e-2 with a digit slipped). The early updates are so large that most of act1's units are pushed to never fire on any input: the dead fraction of act1 rises from under 20% to over 60%, those units get no gradient again, and the loss stalls near chance (ln 2). Finite.",
)
def h286_stock_whip_dead_relus(ctx: Context) -> None:
    gen = seeded(28609)
    model = Stack(12, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    px, _ = next(_cracks(torch.Generator().manual_seed(9), 1024))

    def dead():
        with torch.no_grad():
            return dead_fraction(model.act1(model.fc1(px)))

    d0 = dead()
    _train(ctx, model, opt, _cracks(gen, 64), 250, _bce)
    d1 = dead()
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("act1 dead fraction under 20% at the start", d0 < 0.2)
    ctx.check("act1 dead fraction over 60% at the end", d1 > 0.6)
    ctx.check("the loss stalled near chance over the last 50 steps", _mean(ctx.losses[-50:]) > 0.6)


# -- sheep shearing: the resume step reads the loss weight in percent -----------------------------

SHEAR_RESUME = 150


@scenario(
    family="sheep_shearing_fleece_weight_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEAR_RESUME,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a shorn fleece's weight from 10 standardised readings (breed, body weight, staple length, days since last shearing), plain SGD at 0.02, MSE with a loss weight 1.0. The run resumes at step 150 and the resume path reads the loss weight from the config as a percent (100.0) for that one step before the normal path sets it back: an ordinary batch's gradient is 100x for one step, over 50x the median; the run recovers. The data are fine.",
)
def h286_sheep_shearing_weight_in_percent(ctx: Context) -> None:
    gen = seeded(28610)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 50),
        260,
        F.mse_loss,
        weight=lambda step: 100.0 if step == SHEAR_RESUME else 1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[SHEAR_RESUME - 20 : SHEAR_RESUME]
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at the resume step over 50x the median before",
        gs[SHEAR_RESUME] > 50 * _median(gs[SHEAR_RESUME - 20 : SHEAR_RESUME]),
    )
    ctx.check(
        "that step's batch loss ordinary (under 3x the median)",
        ls[SHEAR_RESUME] < 3 * _median(before),
    )
    ctx.check("recovered: last 20 under 2x the 20 before", _mean(ls[-20:]) < 2 * _mean(before))


# -- controls -------------------------------------------------------------------------------------


class BarkClothNet(nn.Module):
    def __init__(self, width=12, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="bark_cloth_beating_mark_mixup_convnet",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a two-conv net (conv1, conv2, head) reading the tally marks a bark-cloth beater scores on the 8x8 digits, mixup on the inputs (Beta(0.4, 0.4) per batch, the loss mixed over both label sets), SGD with Nesterov momentum 0.9 and weight decay 5e-4 under OneCycleLR peaking at 0.1, label smoothing 0.05; the logged loss is the mixed one. Trains normally.",
)
def h286_bark_cloth_mixup(ctx: Context) -> None:
    gen = seeded(28611)
    model = BarkClothNet()
    steps = 200
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    beta = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4))
    mix: dict[str, object] = {}

    def alter(step, x, y):
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        mix.update(lam=lam, y2=y[perm])
        return lam * x + (1 - lam) * x[perm], y

    def mixed(out, y):
        lam = mix["lam"]
        return lam * F.cross_entropy(out, y, label_smoothing=0.05) + (1 - lam) * F.cross_entropy(
            out, mix["y2"], label_smoothing=0.05
        )

    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        mixed,
        classifier=True,
        alter=alter,
        sched=sched,
    )
    x, y = digits()
    with torch.no_grad():
        acc = float((model(x[:512]).argmax(-1) == y[:512]).float().mean())
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("over 85% of clean digits right", acc > 0.85)


class VeenaNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8.0, 8.0)
    return 0.5 * (log_var + (y - mean) ** 2 / torch.exp(log_var)).mean()


@scenario(
    family="rudra_veena_fret_pitch_fp16_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU net (fc1, act1, fc2, act2, mean and log_var heads) predicting a rudra veena fret's pitch deviation and its spread from 10 standardised readings (fret height, string gauge, meend depth), Gaussian NLL with a clamped log-variance, under fp16 autocast with a GradScaler, AdamW in two param groups (weight decay 0.01 on matrices, none on biases), a 20-step linear warm-up into cosine decay, clipping at 1.0. Trains normally.",
)
def h286_rudra_veena_fp16(ctx: Context) -> None:
    gen = seeded(28612)
    model = VeenaNet()
    steps = 220
    decay = [p for p in model.parameters() if p.dim() > 1]
    plain = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 52, noise=0.2),
        steps,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell by over 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("the scale never collapsed", min(ctx.scales) >= 1.0)


class YangqinGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _rolls(gen, batch, length=20):
    """Hammer-roll strike sequences (velocity, gap, hand, string) and the roll's evenness score,
    with a few wild labels."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = x[:, :, 0].mean(1) * 2 - x[:, :, 1].abs().mean(1) + 0.5 * x[:, -5:, 2].mean(1)
        wild = torch.rand(batch, generator=gen) < 0.05
        y = y + wild * 3 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="yangqin_hammer_roll_gru_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GRU (gru, head) scoring how even a yangqin player's hammer roll is from 20 strikes (velocity, gap, hand, string), 5% wild labels, Huber loss, Adamax at 5e-3, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau (patience 20, factor 0.5). Trains normally.",
)
def h286_yangqin_gru_control(ctx: Context) -> None:
    gen = seeded(28613)
    model = YangqinGRU()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=20, factor=0.5)
    _train(
        ctx,
        model,
        opt,
        _rolls(gen, 32),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.6))
