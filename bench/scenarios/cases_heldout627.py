"""Held-out set 627 (``h627_``): 10 faults over 10 causes and 3 healthy controls, all
hand-written models on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed nonlinear score of the readings."""
    w = torch.randn(n_in, 32, generator=gen) / math.sqrt(n_in)
    v = torch.randn(32, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (torch.tanh(x @ w) @ v).argmax(1)


def _linear_classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class Tower(nn.Module):
    def __init__(self, n_in: int, hidden: int, out: int, act=F.relu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# -- a hand-written transformer encoder --------------------------------------------------------------


class EncAttention(nn.Module):
    """Bidirectional multi-head attention written out by hand (logits kept for inspection)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(b, t, h, d // h).transpose(1, 2) for f in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_logits = logits.detach()
        y = torch.softmax(logits, -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class EncLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = EncAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class PizzicatoEncoder(nn.Module):
    """Reads a phrase of plucked-note features (amplitude, decay, ... plus a 'query' flag),
    classifies the string of the flagged note from a CLS token."""

    def __init__(self, n_in: int = 6, dim: int = 32, heads: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(n_in, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.layers = nn.ModuleList([EncLayer(dim, heads), EncLayer(dim, heads)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = torch.cat([self.cls.expand(len(x), -1, -1), h], 1) + self.pos[:, : x.shape[1] + 1]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h[:, 0]))


def _phrases(gen: torch.Generator, batch: int = 32, t: int = 16, classes: int = 4):
    """Each note: 4 random timbre features + a string id code + a flag; the label is the string
    of the one flagged note."""
    while True:
        s = torch.randint(0, classes, (batch, t), generator=gen)
        feats = torch.randn(batch, t, 4, generator=gen)
        code = (s.float() - 1.5)[..., None]
        flag = torch.zeros(batch, t, 1)
        pick = torch.randint(0, t, (batch,), generator=gen)
        flag[torch.arange(batch), pick] = 1.0
        yield torch.cat([feats, code, flag], -1), s[torch.arange(batch), pick]


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="pizzicato_string_pick_sdpa_free_encoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    heldout=True,
    note="hand-written 2-layer encoder without QK-norm; the no-decay param group's name filter "
    "'attn' also catches the q/k projections, trained at lr 1e-2 with no weight decay, and the "
    "pointer task keeps sharpening attention: q.k/sqrt(d) logits grow over 20x",
)
def h627_pizzicato_encoder_qk_growth(ctx: Context) -> None:
    gen = seeded(6271)
    model = PizzicatoEncoder()
    no_decay = [p for n, p in model.named_parameters() if "attn" in n or "bias" in n]
    decay = [p for n, p in model.named_parameters() if not ("attn" in n or "bias" in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "lr": 1e-2, "weight_decay": 0.1},
            {"params": no_decay, "lr": 1e-2, "weight_decay": 0.0},
        ]
    )
    ctx.attach(model, opt)
    batches = _phrases(gen)
    peaks: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        peaks.append(max(float(layer.attn.last_logits.abs().max()) for layer in model.layers))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("attention logit max grew over 20x", max(peaks[-10:]) > 20 * max(peaks[:5]))
    ctx.check("loss fell, finite", _mean(ls[-10:]) < 0.7 * ls[0] and _finite(ls))


@scenario(
    family="agate_band_pattern_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="softmax temperature 0.5 divided by 1000 as if given in milli-units: logits divided "
    "by 0.0005, the float32 softmax saturates and over 40% of rows give the target exactly 1.0",
)
def h627_agate_band_temperature_units(ctx: Context) -> None:
    gen = seeded(6272)
    model = Tower(16, 32, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _linear_classes(gen)
    temperature = 0.5 / 1000  # bug: config holds 0.5 already
    frac: list[float] = []
    for _ in range(250):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        frac.append(collapsed_fraction(logits.detach(), y))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 40% of rows collapsed to p=1.0", _mean(frac[-10:]) > 0.4)
    ctx.check("fewer collapsed at the start", frac[0] < _mean(frac[-10:]))
    ctx.check("finite", _finite(ctx.losses))


class PeleHairNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_feat = LogFeature()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.fc2(F.silu(self.fc1(self.log_feat(x)))))
        return self.head(h)


class LogFeature(nn.Module):
    """log of the strand-diameter reading (column 0); the clamp_min(1e-3) was dropped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


@scenario(
    family="pele_hair_strand_length_gaussian_nll_net",
    optimizer="ASGD",
    cause="nonfinite",
    where=("log_feat",),
    diverges=90,
    onset=90,
    heldout=True,
    note="in-model log(strand diameter) without its clamp; at step 90 the micrometer reads 0 for "
    "a strand below its resolution, log(0) = -inf, the Gaussian NLL is NaN",
)
def h627_pele_hair_log_zero(ctx: Context) -> None:
    gen = seeded(6273)
    model = PeleHairNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 90
    for step in range(150):
        x, y = next(batches)
        x = x.clone()
        x[:, 0] = torch.exp(0.3 * x[:, 0])  # diameter > 0
        if step == onset:
            x[5, 0] = 0.0  # below the micrometer's resolution
        out = model(x)
        loss = F.gaussian_nll_loss(out[:, :1], y, F.softplus(out[:, 1:]) + 1e-3)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", _mean(ls[onset - 10 : onset]) < _mean(ls[:10]) - 0.1)
    ctx.check("finite before onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))
    with torch.no_grad():
        probe = torch.zeros(1, 8)
        ctx.check(
            "log_feat gives -inf on a zero reading", bool(model.log_feat(probe)[0, 0] < -1e30)
        )


@scenario(
    family="sabkha_crust_salinity_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="one conductivity probe logged raw microsiemens instead of millisiemens: at step 80 one "
    "sample's readings are 1000x; Huber keeps the residual bounded but the gradient bursts",
)
def h627_sabkha_salinity_raw_units(ctx: Context) -> None:
    gen = seeded(6274)
    model = Tower(8, 32, 1, act=F.silu)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 80
    for step in range(180):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[3] = x[3] * 1000.0
        loss = F.huber_loss(model(x), y, delta=0.5)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient over 10x at onset", g[onset] > 10 * _median(g[onset - 20 : onset]))
    ctx.check("loss fell before onset", ctx.losses[onset - 1] < 0.7 * ctx.losses[0])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="bladderwrack_float_count_bce_accum_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=70,
    heldout=True,
    note="SGD momentum with 4-micro-batch accumulation; the loss-weight schedule returns a percent "
    "(100.0) instead of 1.0 for step 70 only: the accumulated gradient bursts 100x from the loss "
    "weight, not from the data; clipped at 5, the run recovers",
)
def h627_bladderwrack_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(6275)
    model = Tower(16, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _classes(gen, k=2, batch=16)
    onset = 70
    raw: list[float] = []
    for step in range(180):
        weight = 100.0 if step == onset else 1.0  # bug: percent at the epoch boundary
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y.float())
            (weight * loss / 4).backward()
            total += float(loss.detach()) / 4
        raw.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("raw gradient over 30x at onset", raw[onset] > 30 * _median(raw[onset - 20 : onset]))
    ctx.check("logged loss at onset ordinary", ls[onset] < 2 * _mean(ls[onset - 10 : onset]))
    ctx.check("recovered", _mean(ls[-10:]) < 1.2 * _mean(ls[onset - 10 : onset]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="helictite_twist_rate_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0", "2"),
    diverges="auto",
    heldout=True,
    note="10-layer ReLU MLP initialised with gain 1.6 x kaiming (a copied init constant): "
    "activations and gradients grow layer over layer, the gradient at layer 0's output is over 20x that at layer 8's "
    "and the plain-SGD run blows up",
)
def h627_helictite_init_gain(ctx: Context) -> None:
    gen = seeded(6276)
    sizes = [8] + [32] * 9 + [1]
    layers: list[nn.Module] = []
    for i in range(10):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.normal_(lin.weight, std=1.6 * math.sqrt(2.0 / sizes[i]))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < 9:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=3e-5)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratio = 0.0
    for step in range(150):
        x, y = next(batches)
        hidden: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(model):
            h = layer(h)
            if i in (0, 16):
                h.retain_grad()
                hidden.append(h)
        loss = F.mse_loss(h, y)
        loss.backward()
        if step == 0:
            ratio = float(hidden[0].grad.norm() / hidden[1].grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("gradient at layer 0's output over 20x that at layer 8's", ratio > 20)
    ctx.check("loss blew up (over 1e6 or non-finite)", not _finite(ls) or max(ls) > 1e6)


@scenario(
    family="truffle_hound_find_depth_group_typo_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="two param groups; the trunk's lr typed 3e-9 for 3e-3: fc1 and fc2 never move while the "
    "head trains on random features",
)
def h627_truffle_hound_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(6277)
    model = Tower(8, 32, 1, act=F.silu)
    opt = torch.optim.Adam(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 3e-9},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w1 = model.fc1.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    relh = float((model.head.weight - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 relative", rel1 < 1e-5)
    ctx.check("head moved over 1e-1 relative", relh > 1e-1)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hornito_spatter_vent_dead_bias_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="fc2's bias initialised to -3.0 by a copied gate-bias init: over 90% of fc2's ReLU units "
    "never fire, get no gradient and stay dead; the loss stalls near chance",
)
def h627_hornito_dead_bias(ctx: Context) -> None:
    gen = seeded(6278)
    model = Tower(16, 32, 4)
    nn.init.constant_(model.fc2.bias, -3.0)  # bug: meant for a gating layer
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    dead: list[float] = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        pre = model.fc2(F.relu(model.fc1(x)))
        dead.append(float((pre <= 0).all(0).float().mean()))
        loss = F.cross_entropy(model.head(F.relu(pre)), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 90% of fc2 units dead at the end", dead[-1] > 0.9)
    ctx.check("loss stalls near chance", _mean(ctx.losses[-10:]) > 0.8 * math.log(4))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="thunderegg_cavity_fill_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="at step 60 one batch's fill fractions arrive in per-mille units (x1000): one giant "
    "gradient fills Adam's second moment (beta2 0.999) and the updates stall for the rest of the "
    "run while the loss is still far above its floor",
)
def h627_thunderegg_per_mille(ctx: Context) -> None:
    gen = seeded(6279)
    model = Tower(8, 32, 1, act=torch.tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 60
    upd: list[float] = []
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient over 100x at onset", g[onset] > 100 * _median(g[onset - 20 : onset]))
    ctx.check(
        "updates stalled over 10x after onset",
        _mean(upd[onset + 30 : onset + 100]) < 0.1 * _mean(upd[onset - 20 : onset]),
    )
    ctx.check(
        "loss stopped falling",
        _mean(ls[-10:]) > 0.8 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="dreikanter_facet_wind_smoothing_sign_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="hand-written label smoothing with eps typed -0.2: wrong classes get negative target "
    "mass, the loss rewards pushing their log-probabilities to -inf and the head's logits grow "
    "without bound (over 20x)",
)
def h627_dreikanter_negative_smoothing(ctx: Context) -> None:
    gen = seeded(62710)
    model = Tower(16, 32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _classes(gen)
    eps = -0.2  # typo: 0.2
    peak: list[float] = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        target = F.one_hot(y, 4).float() * (1 - eps) + eps / 4
        loss = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
        peak.append(float(logits.detach().abs().max()))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("head logits grew over 20x", _mean(peak[-5:]) > 20 * _mean(peak[:5]))
    ctx.check("loss went below 0 (unbounded)", ctx.losses[-1] < 0)


# -- healthy controls --------------------------------------------------------------------------------


@scenario(
    family="muirburn_patch_rotation_unfreeze_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="gradual unfreezing: a trunk pretrained on a related burn-age task is frozen while the "
    "new head trains, then unfrozen at step 100 at a 10x lower lr (Adam, 1e-4 vs 1e-3); the "
    "gradient norm rises and the update norm jumps over 2x there, the loss keeps falling "
    "(healthy, alarming-looking)",
)
def h627_muirburn_gradual_unfreeze(ctx: Context) -> None:
    gen = seeded(62711)
    model = Tower(16, 256, 4)
    batches = _classes(gen)
    # pretraining on a related task (3 classes), before the run being watched
    pre_head = nn.Linear(256, 4)
    pre_opt = torch.optim.Adam([*model.parameters(), *pre_head.parameters()], lr=3e-3)
    pre = _classes(torch.Generator().manual_seed(62711))  # same readings, older survey
    for _ in range(150):
        x, y = next(pre)
        F.cross_entropy(pre_head(model.features(x)), y).backward()
        pre_opt.step()
        pre_opt.zero_grad(set_to_none=True)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    for p in trunk:
        p.requires_grad_(False)
    opt = torch.optim.Adam(
        [{"params": trunk, "lr": 1e-4}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    ctx.attach(model, opt)
    w0 = model.fc1.weight.detach().clone()
    upd: list[float] = []
    for step in range(220):
        if step == 100:
            for p in trunk:
                p.requires_grad_(True)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 99:
            ctx.check("trunk frozen until 100", bool(torch.equal(model.fc1.weight, w0)))
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check("gradient norm rises at 100", _mean(g[100:110]) > 1.2 * _mean(g[90:100]))
    ctx.check("update norm jumps over 2x at 100", _mean(upd[100:110]) > 2 * _mean(upd[90:100]))
    ctx.check("loss fell after unfreezing", _mean(ls[-10:]) < _mean(ls[90:100]))
    ctx.check("loss fell, finite", _mean(ls[-10:]) < 0.75 * _mean(ls[:10]) and _finite(ls))


@scenario(
    family="eelgrass_shoot_density_onecycle_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gaussian-NLL mean/variance net with AdamW weight decay, OneCycleLR, gradient clipping at "
    "1.0 and noisy targets (5% of readings with a x3 noise): an ordinary healthy run",
)
def h627_eelgrass_onecycle_nll(ctx: Context) -> None:
    gen = seeded(62712)
    model = Tower(8, 32, 2, act=F.silu)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    ctx.attach(model, opt)
    batches = _regression(gen)
    for _ in range(200):
        x, y = next(batches)
        noisy = torch.rand(len(y), 1, generator=gen) < 0.05
        y = torch.where(noisy, y + 0.3 * torch.randn(len(y), 1, generator=gen), y)
        out = model(x)
        loss = F.gaussian_nll_loss(out[:, :1], y, F.softplus(out[:, 1:]) + 1e-4)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell by over 1 nat", _mean(ls[-10:]) < ls[0] - 1.0)
    ctx.check("finite", _finite(ls))


@scenario(
    family="septarian_nodule_crack_fp16_huber_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a torch.amp.GradScaler, NAdam with a linear warm-up then "
    "ReduceLROnPlateau, Huber loss: an ordinary healthy mixed-precision run",
)
def h627_septarian_fp16_nadam(ctx: Context) -> None:
    gen = seeded(62713)
    model = Tower(8, 32, 1, act=F.gelu)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    for step in range(180):
        if step < 20:
            for group in opt.param_groups:
                group["lr"] = 2e-3 * (step + 1) / 20
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.huber_loss(out.float(), y, delta=0.5)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        if step >= 20:
            plateau.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _mean(ls[-10:]) < 0.5 * ls[0])
    ctx.check("finite, scale finite", _finite(ls) and _finite(ctx.scales))
