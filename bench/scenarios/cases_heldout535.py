"""Held-out set 535 (``h535_``): 10 faults over 10 causes and 3 healthy controls.

Faults: hardanger-fiddle drone-motif attention tagger with its QK-layernorm switched off by a
config key typo (attention_logit_growth, AdamW, tied embedding); curling ice-pebble grade classifier
with nll_loss on raw logits (output_logit_divergence, Adamax); maple-sap
run-flow Poisson regressor with an in-model batch standardiser that has no eps, a stuck-sensor
shard (nonfinite, RMSprop); cider-press pomace-cake moisture regressor with one shard in grams
(data_outlier, SGD momentum); sled-dog harness-pull Huber regressor whose epoch-end batch uses
reduction='sum' (gradient_spike, plain SGD, clipped); dulcimer hammer-strike embedding classifier
whose embedding group lr is typed 1e-9 (update_ratio_out_of_range, RAdam); cobblestone sett
crown-height regressor with a warm-up peak lr typed 10x (sharpness_above_limit, plain SGD);
thermal-soaring climb-rate deep tanh regressor with an init gain typed 3.0 (exploding_gradients,
SGD Nesterov); bobbin-lace pricking-grade classifier with a temperature typed in milli-units
(softmax_collapse, Adam); glacier-surge moraine-push regressor whose target calibration drifts
(loss_divergence, Adagrad).
Controls: sea-shanty halyard-verse Hugging Face GPT-NeoX decoder (AdamW, warm-up + cosine,
clipping), basket-weaving stake-grade student distilled at temperature 8 from a teacher trained
first (NAdam, label smoothing, the alarming-looking control), ice-fishing tip-up flag multi-label
BCE net (fp16 autocast + GradScaler, ASGD, OneCycleLR, param groups).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digits, grad_norm, scenario, seeded, text_batches


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, out, y,
    loss)`` returns the loss actually backpropagated, ``after(step, loss)``. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y.reshape(-1))
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, out, y, loss) if backprop is not None else loss
        total.backward()
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. attention logit growth: QK-layernorm off by a config typo ---------------------------------


class _QKAttention(nn.Module):
    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        hd = dim // heads
        self.q_ln = nn.LayerNorm(hd) if qk_norm else nn.Identity()
        self.k_ln = nn.LayerNorm(hd) if qk_norm else nn.Identity()
        self.last_logit_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, -1).transpose(1, 2)
            for z in (self.q(x), self.k(x), self.v(x))
        )
        q, k = self.q_ln(q), self.k_ln(k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.last_logit_max = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _DroneTagger(nn.Module):
    """Tags each note of a fiddle phrase with the phrase's drone string (its first note); the
    output head is tied to the note embedding."""

    def __init__(self, vocab=24, dim=32, heads=2, length=16, qk_norm=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _QKAttention(dim, heads, qk_norm)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1]))
        x = x + self.attn(self.ln1(x))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.ln_f(x) @ self.emb.weight.T


def _drone_phrases(gen, batch=32, length=16, vocab=24):
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = x[:, :1].expand(batch, length).clone()
        yield x, y


@scenario(
    family="hardanger_fiddle_drone_motif_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Hardanger-fiddle drone tagger (one pre-LN attention block over a 16-note phrase, head "
    "tied to the note embedding, cross-entropy, AdamW lr 1e-2 with weight decay 0 on the "
    "attention weights). The config asks for QK-layernorm with the key 'qk_layernrom'; the "
    "model reads 'qk_layernorm', finds nothing and builds the attention without it. Every note "
    "must attend to the first one, nothing bounds q and k, and the attention logits "
    "q.k/sqrt(d) grow steadily to tens of times their starting size.",
)
def h535_hardanger_qk_norm_key_typo(ctx):
    gen = seeded(5351)
    config = {"qk_layernrom": True}
    model = _DroneTagger(qk_norm=config.get("qk_layernorm", False))
    attn_params = [p for n, p in model.named_parameters() if n.startswith("attn.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("attn.")]
    opt = torch.optim.AdamW(
        [{"params": attn_params, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.01}],
        lr=1e-2,
    )
    maxes = []

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _drone_phrases(gen),
        200,
        lm,
        classifier=True,
        after=lambda s, v: maxes.append(model.attn.last_logit_max),
    )
    ctx.check("QK-layernorm really absent", isinstance(model.attn.q_ln, nn.Identity))
    ctx.check("max attention logit grows over 20x", maxes[-1] > 20 * maxes[0])
    ctx.check("max attention logit over 30 at the end", maxes[-1] > 30)
    ctx.check("finite", _finite(losses))


# -- 2. output logit divergence: nll_loss on raw logits (log_softmax missing) ------------------


@scenario(
    family="curling_ice_pebble_grade_raw_logit_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Curling ice-pebble grade classifier (ReLU MLP on droplet size, water temperature, "
    "sheet humidity and nip time, Adamax lr 0.01). The model used to end in nn.LogSoftmax; a "
    "refactor moved the head to raw logits but the loop still calls F.nll_loss(out, y), which "
    "is then -logit[target], unbounded below: the loss goes negative and keeps falling, and the "
    "head's logits grow without bound (over 20x and still growing).",
)
def h535_curling_nll_on_raw_logits(ctx):
    gen = seeded(5352)
    model = _Net(8, 48, 4, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=0.01)
    logit_max = []

    def loss_fn(out, y):
        logit_max.append(float(out.detach().abs().max()))
        return F.nll_loss(out, y)  # log_softmax missing since the refactor

    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 8, 4, 53520, spread=0.6), 200, loss_fn, classifier=True
    )
    ctx.check("max |logit| grows over 20x", logit_max[-1] > 20 * logit_max[0])
    ctx.check("still growing: last over 1.5x step 120's", logit_max[-1] > 1.5 * logit_max[120])
    ctx.check(
        "loss negative and falling (unbounded below)", losses[-1] < 0 and losses[-1] < losses[120]
    )
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: batch standardiser with no eps, a stuck sensor ---------------------------------


class _BatchStd(nn.Module):
    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)  # no eps


class _SapNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.norm = _BatchStd()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.norm(x)))).squeeze(-1)  # log-rate


@scenario(
    family="maple_sap_run_flow_batchstd_poisson_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("norm",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Maple-sap run drip-count regressor (in-model batch standardiser, tanh MLP, Poisson NLL "
    "on the log-rate, RMSprop lr 3e-3). The standardiser divides by the batch std with no eps. "
    "At step 90 a shard from a sugar bush whose frost-depth probe froze in place arrives: that "
    "column is constant across the batch, (x - mean) / std is 0/0, NaN flows into the loss at "
    "step 90.",
)
def h535_maple_sap_batchstd_no_eps(ctx):
    gen = seeded(5353)
    model = _SapNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 6, 53530)

    def batches():
        for x, y in base:
            rate = torch.exp(0.8 * y + 1.0)
            yield 3.0 * x + 10.0, torch.poisson(rate, generator=gen)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 2] = -4.0  # the frozen probe reads its floor value
        return x, y

    stats = {}

    def loss_fn(out, y):
        if len(stats) == 0 and not torch.isfinite(out).all():
            stats["nan_out"] = True
        return F.poisson_nll_loss(out, y, log_input=True)

    losses, _ = _loop(ctx, model, opt, batches(), 160, loss_fn, alter=alter)
    ctx.check("finite before step 90", _finite(losses[:90]))
    ctx.check("loss fell before the fault", _mean(losses[80:90]) < 0.8 * _mean(losses[:10]))
    ctx.check("loss NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))
    ctx.check("model output non-finite on the stuck-sensor batch", stats.get("nan_out", False))


# -- 4. data outlier: one shard in grams -----------------------------------------------------------


@scenario(
    family="cider_press_pomace_cake_moisture_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Cider-press pomace-cake moisture regressor (ReLU MLP on press pressure, cloth weave, "
    "apple variety mix, rack count, MSE, SGD momentum 0.9 lr 0.01, clipping at 5). One shard "
    "at step 110 comes from a press log that stored water mass in grams rather than kilograms: "
    "its targets are 1000x, the loss jumps by orders of magnitude for that one batch, the "
    "gradient bursts, clipping holds the step and the run recovers.",
)
def h535_cider_press_grams_shard(ctx):
    gen = seeded(5354)
    model = _Net(7, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 110 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 7, 53540), 200, F.mse_loss, alter=alter, clip=5.0
    )
    pre = _median(losses[90:110])
    ctx.check("loss at step 110 over 1000x the median before", losses[110] > 1000 * pre)
    ctx.check("gradient at 110 over 100x its median", norms[110] > 100 * _median(norms[90:110]))
    ctx.check("recovers: last 20 under 2x the pre-fault median", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 5. gradient spike: reduction='sum' on the epoch-end batch ------------------------------------


@scenario(
    family="sled_dog_harness_pull_silu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=125,
    heldout=True,
    note="Sled-dog harness-pull regressor (SiLU MLP on dog weight, gangline position, snow "
    "temperature, grade and trail speed, Huber, plain SGD lr 0.05, clipping at 1). The "
    "epoch-end path (step 125) builds its own loss with reduction='sum' instead of 'mean': "
    "the backpropagated loss is 128x the logged one for that step, the gradient bursts over "
    "30x with an ordinary batch and an ordinary logged loss; clipping keeps the run on track.",
)
def h535_sled_dog_epoch_end_sum(ctx):
    gen = seeded(5355)
    model = _Net(5, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def backprop(step, out, y, loss):
        if step == 125:
            return F.huber_loss(out, y, reduction="sum")
        return loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 5, 53550),
        200,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    pre = _median(losses[105:125])
    ctx.check("gradient at 125 over 30x its median", norms[125] > 30 * _median(norms[105:125]))
    ctx.check("logged loss at 125 ordinary (under 2x median)", losses[125] < 2 * pre)
    ctx.check("loss fell overall", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 6. update ratio: embedding group lr typed 1e-9 -----------------------------------------------


class _StrikeNet(nn.Module):
    def __init__(self, vocab=40, dim=24, classes=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 48)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(48, classes)

    def forward(self, idx):
        return self.head(self.act1(self.fc1(self.emb(idx).mean(1))))


def _strike_patterns(gen, batch=64, length=12, vocab=40, classes=5):
    g = torch.Generator().manual_seed(53560)
    weights = torch.rand(classes, vocab, generator=g) ** 4 + 0.01
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.multinomial(weights[y], length, replacement=True, generator=gen)
        yield x, y


@scenario(
    family="dulcimer_hammer_strike_embedding_classifier",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("emb",),
    diverges=None,
    heldout=True,
    note="Hammered-dulcimer strike-pattern classifier (embedding bag of course/hammer tokens, "
    "ReLU MLP, cross-entropy, RAdam lr 3e-3 with the embedding in its own group). The "
    "embedding group's lr is typed 3e-9 for 3e-3: the embedding stays at its random init "
    "(moves under 1e-5 of its norm), only the MLP learns on top of random token vectors, the "
    "loss falls a little and stalls; nothing blows up.",
)
def h535_dulcimer_embedding_lr_typo(ctx):
    gen = seeded(5356)
    model = _StrikeNet()
    opt = torch.optim.RAdam(
        [
            {"params": model.emb.parameters(), "lr": 3e-9},
            {"params": list(model.fc1.parameters()) + list(model.head.parameters())},
        ],
        lr=3e-3,
    )
    e0, h0 = _flat(model.emb), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _strike_patterns(gen), 200, F.cross_entropy, classifier=True)
    ctx.check("embedding moved under 1e-5 of its norm", _rel(_flat(model.emb), e0) < 1e-5)
    ctx.check("head moved over 1e-2 of its norm", _rel(_flat(model.head), h0) > 1e-2)
    ctx.check("finite", _finite(losses))


# -- 7. sharpness above limit: warm-up peak typed 10x ---------------------------------------------


def _sharpness(model, x, y, loss_fn, iters=12):
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="cobblestone_sett_crown_height_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="Cobblestone sett crown-height regressor (ReLU MLP on sett size, bedding sand depth, "
    "joint width, compaction passes and traffic load, MSE, plain SGD, linear warm-up over 40 "
    "steps). The peak lr is typed 1.5 for 0.15: while it ramps, lr x sharpness passes 2 "
    "(measured with a Hessian power iteration) and the loss climbs by orders of magnitude.",
)
def h535_cobblestone_warmup_peak_typo(ctx):
    gen = seeded(5357)
    model = _Net(5, 48, 1, nn.ReLU)
    peak = 1.5
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 40, 1.0))
    probe = next(_readings(torch.Generator().manual_seed(1), 256, 5, 53570))
    products = {}

    def before(step):
        if step % 5 == 0 and step <= 60:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _sharpness(model, probe[0], probe[1], F.mse_loss)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 53570), 150, F.mse_loss, before=before, sched=sched
    )
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2)
    ctx.check("lr x sharpness over 2 during the ramp", max(products.values()) > 2)
    ctx.check(
        "loss blows up: over 100x its best or non-finite",
        not _finite(losses) or max(finite[20:]) > 100 * min(finite),
    )


# -- 8. exploding gradients: init gain typed 1.6 through 12 layers --------------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=6, width=32, depth=16, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        mods = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, 0.0, gain / math.sqrt(a))
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.Tanh()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="thermal_soaring_climb_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Thermal-soaring climb-rate regressor (16-layer tanh MLP on ground heating, lapse rate, "
    "wind shear, cloud base and glider sink rate, MSE, SGD Nesterov lr 1e-2). The init helper "
    "takes the weight std as gain / sqrt(fan_in) with the gain typed 3.0 for 1.0: the net sits "
    "in the chaotic regime, each layer multiplies the backpropagated gradient, and the first "
    "layer's gradient is over 20x the last hidden layer's; the loss stays finite but trains "
    "poorly.",
)
def h535_thermal_soaring_init_gain(ctx):
    gen = seeded(5358)
    model = _DeepNet(gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    ratio = {}

    def backprop(step, out, y, loss):
        if step == 0:
            loss.backward(retain_graph=True)
            ratio["r"] = float(
                model.layers[0].weight.grad.norm() / model.layers[-2].weight.grad.norm()
            )
            model.zero_grad(set_to_none=True)
        return loss

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53580), 120, F.mse_loss, backprop=backprop
    )
    ctx.check("first layer's gradient over 20x the last hidden layer's", ratio["r"] > 20)
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: temperature in milli-units ----------------------------------------------


@scenario(
    family="bobbin_lace_pricking_grade_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bobbin-lace pricking grade classifier (ReLU MLP on pin spacing, card thickness, thread "
    "count and ground type, cross-entropy, Adam lr 1e-3). The softmax temperature comes from a "
    "config field of 1.0 that the code takes as milli-units and divides by 1000: logits "
    "are multiplied by 1000, the target probabilities round to exactly 1.0 in float32 and the "
    "wrong rows carry huge losses.",
)
def h535_bobbin_lace_temperature_units(ctx):
    gen = seeded(5359)
    model = _Net(10, 48, 6, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tau_config = 1.0  # the config gives 1.0; the code takes the field as milli-units
    tau = tau_config / 1000
    collapsed = []

    def loss_fn(out, y):
        z = out / tau
        p = torch.softmax(z.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))
        return F.cross_entropy(z, y)

    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 6, 53590, spread=0.8), 150, loss_fn, classifier=True
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: drifting target calibration ---------------------------------------------


@scenario(
    family="glacier_surge_moraine_push_drift_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Glacier-surge moraine-push regressor (tanh MLP on basal water pressure, ice thickness, "
    "bed slope, till porosity, MSE, Adagrad lr 0.05). From step 60 the label pipeline's "
    "calibration gain is updated each batch with a running-average bug that compounds: the "
    "targets' scale creeps up by about 1.5% a step. Adagrad's shrinking steps cannot follow, "
    "the loss, after fitting, climbs slowly with no jump to several times its best.",
)
def h535_glacier_surge_calibration_drift(ctx):
    gen = seeded(53510)
    model = _Net(4, 48, 1, nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    gain = [1.0]

    def alter(step, x, y):
        if step >= 60:
            gain[0] *= 1.015
        return x, gain[0] * y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 4, 53510), 220, F.mse_loss, alter=alter)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 60, 5))
    means = [_mean(losses[i : i + 10]) for i in range(50, len(losses), 10)]
    jumps = max(b / a for a, b in zip(means[:-1], means[1:], strict=False))
    ctx.check("loss fitted first (best under 0.5x start)", best < 0.5 * _mean(losses[:5]))
    ctx.check("last 20 over 3x its best", _mean(losses[-20:]) > 3 * best)
    ctx.check("no 10-step mean over 3x the previous one", jumps < 3)
    ctx.check("finite", _finite(losses))


# -- 11. control: Hugging Face GPT-NeoX from a tiny config ----------------------------------------


@scenario(
    family="sea_shanty_halyard_verse_gpt_neox_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sea-shanty halyard-verse language model: a Hugging Face GPT-NeoX built from a tiny "
    "config (2 layers, width 32, rotary on a quarter of the head), next-byte cross-entropy on "
    "byte windows, AdamW lr 3e-3 with weight decay 0.1, linear warm-up 20 steps then cosine, "
    "clipping at 1. An ordinary run.",
)
def h535_sea_shanty_neox(ctx):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    gen = seeded(53511)
    config = GPTNeoXConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        rotary_pct=0.25,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )

    def lm(out, y):
        logits = out.logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        lm,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell below 0.7x its start", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 12. control (alarming-looking): distillation at temperature 8 --------------------------------


@scenario(
    family="basket_weaving_stake_grade_distilled_student",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Basket-weaving stake-grade student (a narrow ReLU MLP on 8x8 willow-stake cross-section "
    "scans, the bundled digits) distilled from a wider teacher trained first in the same run: "
    "loss = 0.9 * T^2 * KL(teacher/T || student/T) + 0.1 * cross-entropy with label smoothing "
    "0.1, T = 8, NAdam lr 2e-3. It looks alarming: the T^2 factor makes the loss and the "
    "gradients large and the soft-target term sits well above zero at the end, while the "
    "student's raw logits grow to match the teacher's; the student learns the task well.",
)
def h535_basket_weaving_distill_t8(ctx):
    gen = seeded(53512)
    x_all, y_all = digits()
    order = torch.randperm(len(y_all), generator=gen)
    tr, te = order[:1400], order[1400:]
    teacher = _Net(64, 128, 10, nn.ReLU)
    t_opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        idx = tr[torch.randint(0, len(tr), (64,), generator=gen)]
        t_opt.zero_grad()
        F.cross_entropy(teacher(x_all[idx]), y_all[idx]).backward()
        t_opt.step()
    teacher.eval()
    with torch.no_grad():
        t_acc = float((teacher(x_all[te]).argmax(1) == y_all[te]).float().mean())

    def batches():
        while True:
            idx = tr[torch.randint(0, len(tr), (64,), generator=gen)]
            yield x_all[idx], y_all[idx]

    student = _Net(64, 24, 10, nn.ReLU)
    opt = torch.optim.NAdam(student.parameters(), lr=2e-3)
    temp = 8.0
    cur_x = [None]

    def alter(step, x, y):
        cur_x[0] = x
        return x, y

    def loss_fn(out, y):
        with torch.no_grad():
            t_logits = teacher(cur_x[0])
        kl = F.kl_div(
            F.log_softmax(out / temp, -1),
            F.log_softmax(t_logits / temp, -1),
            log_target=True,
            reduction="batchmean",
        )
        return 0.9 * temp**2 * kl + 0.1 * F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(ctx, student, opt, batches(), 250, loss_fn, classifier=True, alter=alter)
    with torch.no_grad():
        s_acc = float((student(x_all[te]).argmax(1) == y_all[te]).float().mean())
    ctx.check("teacher trained (held-out accuracy over 0.9)", t_acc > 0.9)
    ctx.check("student learns (held-out accuracy over 0.85)", s_acc > 0.85)
    ctx.check("loss fell", _fell(losses))


# -- 13. control: fp16 autocast + GradScaler, ASGD, OneCycleLR ------------------------------------


@scenario(
    family="ice_fishing_tipup_flag_fp16_gelu_classifier",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-fishing tip-up flag predictor (GELU MLP on ice thickness, water depth, bait type, "
    "light and barometric trend, four multi-label BCE outputs, fp16 autocast with a "
    "torch.amp.GradScaler, ASGD with the head in its own group at half the lr, OneCycleLR "
    "without momentum cycling, noisy labels). An ordinary mixed-precision run.",
)
def h535_ice_fishing_fp16_asgd(ctx):
    gen = seeded(53513)
    model = _Net(8, 64, 4, nn.GELU)
    opt = torch.optim.ASGD(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters())},
            {"params": model.head.parameters(), "lr": 0.05},
        ],
        lr=0.1,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.4, 0.2], total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.Generator().manual_seed(535130)
    w = torch.randn(8, 4, generator=g)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 8, generator=gen)
        y = (x @ w + 0.5 * torch.randn(64, 4, generator=gen) > 0).float()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell below 0.7x its start", _fell(losses))
    ctx.check("finite", _finite(losses))
