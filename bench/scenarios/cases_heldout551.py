"""Held-out set 551 (``h551_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: glockenspiel tremolo-roll attention tagger whose qk scale is multiplied by sqrt(d) instead
of divided (attention_logit_growth, AdamW); sinkhole seep-turbidity Huber regressor fed one bad
shard in raw counts (data_outlier, RAdam); foehn cap-cloud Gaussian-NLL regressor under fp16
autocast fed pressure in pascals (amp_overflow, Adamax); curling stone-curl regressor whose masked
sweep pool divides by an empty mask (nonfinite, NAdam); didgeridoo overtone-sweep ReLU Elman
regressor with the identity recurrent init typed 1.2 (exploding_gradients, SGD momentum);
tightrope wire-sag regressor with the anchor-encoder group lr typed 1e-9 (update_ratio_out_of_range,
RMSprop); geyser plume-colour classifier with temperature typed 1e-3 (softmax_collapse, Adagrad);
farrier quench-hiss ReLU classifier with the Adam lr typed 5e-2 whose hidden units die
(loss_of_plasticity, Adam); bagpipe drone-reed BCE net whose validation code path leaks a summed
loss into one training step (gradient_spike, SGD Nesterov); hurling sliotar-flight regressor whose
warm-up peak lr is typed 0.8 (sharpness_above_limit, plain SGD).
Controls: sand-ripple field Swin-style windowed attention classifier on generated 2-D grids
(AdamW, OneCycleLR, clipping, label smoothing); hammered-dulcimer string-course classifier with
dropout 0.5 on every layer, train loss far above its eval loss (alarming-looking, Adam,
ReduceLROnPlateau); snowshoe cornice tied-weight autoencoder (ASGD, fp16 autocast + GradScaler,
Huber, accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, digits, grad_norm, scenario, seeded


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss, out,
    y)`` returns the loss actually backpropagated, ``after(step, loss)``. Stops after a
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
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, out, y) if backprop is not None else loss
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. attention logit growth: qk scale multiplied instead of divided ----------------------------


class _RollAttention(nn.Module):
    """Single-head self-attention; ``scale`` multiplies q.k (the bug: sqrt(d) for 1/sqrt(d))."""

    def __init__(self, dim, scale):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.scale = scale
        self.max_logit = 0.0
        for lin in (self.q, self.k):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.max_logit = float(logits.detach().abs().max())
        return torch.softmax(logits, -1) @ self.v(x)


class _TremoloTagger(nn.Module):
    def __init__(self, vocab=24, dim=32, length=12, scale=1.0):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = _RollAttention(dim, scale)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.norm(x + self.attn(x)))[:, 0]


def _tremolo_batches(gen, batch=64, length=12, vocab=24):
    """Soft mallet hits (tokens below 12) and one accented bar (12 and up) somewhere in the roll;
    the label is the accented bar."""
    while True:
        x = torch.randint(0, vocab // 2, (batch, length), generator=gen)
        where = torch.randint(0, length, (batch,), generator=gen)
        y = torch.randint(vocab // 2, vocab, (batch,), generator=gen)
        x[torch.arange(batch), where] = y
        yield x, y


@scenario(
    family="glockenspiel_tremolo_roll_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Glockenspiel tremolo-roll tagger (token + position embeddings, one self-attention "
    "layer, LayerNorm, linear head; reads which bar was accented, cross-entropy, "
    "AdamW with weight decay 0 on every parameter). The attention was ported from a paper's "
    "pseudo-code and multiplies q.k by sqrt(d) instead of dividing, so the logits enter the "
    "softmax 32x too large and nothing holds q and k back: as the pointer sharpens the "
    "attention logits grow more than 20x from step 0.",
)
def h551_glockenspiel_qk_scale_inverted(ctx):
    gen = seeded(5511)
    model = _TremoloTagger(scale=math.sqrt(32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seen = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _tremolo_batches(gen),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s, loss: seen.append(model.attn.max_logit),
    )
    ctx.check("attention logits grew over 20x", seen[-1] > 20 * seen[0])
    ctx.check("attention logits over 100 at the end", seen[-1] > 100)
    ctx.check("loss stayed finite", _finite(losses))


# -- 2. data outlier: one bad shard in raw turbidity counts ---------------------------------------


@scenario(
    family="sinkhole_seep_turbidity_bad_shard_huber_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Sinkhole seep-flow regressor (ReLU MLP on turbidity, conductivity, rainfall, water "
    "table, soil moisture, temperature and two tilt readings, Huber loss, RAdam, clipping at "
    "1.0). The batch of step 120 comes from one shard whose turbidity column was written in raw "
    "sensor counts (about 4000x the standardised value) by an old logger firmware: the loss "
    "jumps more than 20x for that step, the clip holds the update, and the run recovers.",
)
def h551_sinkhole_raw_count_shard(ctx):
    gen = seeded(5512)
    model = _Net(8, 64)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = {}

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = 4000.0 * x[:, 0].abs() + 2000.0
            bad["x"] = x
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 8, 55120), 200, F.huber_loss, alter=alter, clip=1.0
    )
    before = _median(losses[100:120])
    ctx.check("one batch's inputs over 1000x the usual scale", float(bad["x"].abs().max()) > 1000)
    ctx.check("loss over 20x at step 120", losses[120] > 20 * before)
    ctx.check("gradient over 20x at step 120", norms[120] > 20 * _median(norms[100:120]))
    ctx.check("recovered within 40 steps", _mean(losses[160:170]) < 2 * before)
    ctx.check("finite", _finite(losses))
    ctx.check("trained before the bad shard", _mean(losses[110:120]) < 0.7 * _mean(losses[:10]))


# -- 3. amp overflow: barometric pressure in pascals under fp16 autocast --------------------------


class _CapCloudNet(nn.Module):
    """SiLU MLP giving the mean and log-variance of the cap cloud's base height."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _gauss_nll(out, y):
    mean, logvar = out.float().unbind(-1)
    return F.gaussian_nll_loss(mean, y, logvar.clamp(-6, 6).exp())


@scenario(
    family="foehn_cap_cloud_barometric_fp16_nll_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Foehn cap-cloud base-height regressor (SiLU MLP on lee-side pressure, crest wind, "
    "humidity, temperature lapse and two gust readings, Gaussian NLL, Adamax, fp16 autocast + "
    "GradScaler). From step 80 the station feed switches from standardised hPa anomalies to raw "
    "pressure in pascals (about 1e5) with no conversion: autocast runs fc1 in fp16, whose range "
    "ends at 65504, fc1's output overflows (the same batch is finite in float32) and the loss is "
    "non-finite at step 80.",
)
def h551_foehn_pressure_in_pascals(ctx):
    gen = seeded(5513)
    model = _CapCloudNet(6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 6, 55130)
    bad_x = None
    for step in range(130):
        x, y = next(batches)
        if step >= 80:
            x = x.clone()
            x[:, 0] = 101325.0 + 900.0 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = _gauss_nll(out, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("fc1's fp16 output non-finite at step 80", len(fc1_bad) > 80 and fc1_bad[80])
    ctx.check("fc1 finite before step 80", not any(fc1_bad[:80]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 80", _mean(losses[70:80]) < _mean(losses[:10]) - 0.2)


# -- 4. nonfinite: masked sweep pool divides by an empty mask -------------------------------------


class _SweepPool(nn.Module):
    """Mean of the per-sample features over the samples where the sweepers were brushing."""

    def __init__(self):
        super().__init__()
        self.nan_seen = False

    def forward(self, h, mask):
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        self.nan_seen = bool(torch.isnan(pooled).any())
        return pooled


class _CurlNet(nn.Module):
    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.pool = _SweepPool()
        self.head = nn.Linear(hidden, 1)

    def forward(self, xm):
        x, mask = xm
        return self.head(self.pool(torch.tanh(self.enc(x)), mask)).squeeze(-1)


def _curl_batches(gen, batch=32, length=16, d_in=5, empty_at=None):
    g = torch.Generator().manual_seed(55140)
    w = torch.randn(d_in, generator=g)
    i = 0
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        mask = (torch.rand(batch, length, generator=gen) < 0.5).float()
        mask[:, 0] = 1.0
        if i == empty_at:
            mask[3] = 0.0  # a delivery the sweepers never touched
        y = torch.tanh((x @ w * mask).sum(1) / mask.sum(1).clamp(min=1))
        i += 1
        yield (x, mask), y


@scenario(
    family="curling_stone_curl_masked_pool_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("pool",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Curling stone-curl regressor (per-sample tanh encoder over the 16 broom-pressure "
    "samples of a delivery, a masked mean over the samples where the sweepers brushed, linear "
    "head, MSE, NAdam). The pool divides by the mask's count with no clamp; at step 70 the "
    "batch holds a delivery that nobody swept, the count is 0, 0/0 gives NaN in the pool and "
    "the loss is NaN at step 70.",
)
def h551_curling_unswept_delivery(ctx):
    gen = seeded(5514)
    model = _CurlNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    pool_nan = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        _curl_batches(gen, empty_at=70),
        120,
        F.mse_loss,
        after=lambda s, loss: pool_nan.append(model.pool.nan_seen),
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first NaN at step 70", first_bad == 70)
    ctx.check("the pool's output NaN at step 70", len(pool_nan) > 70 and pool_nan[70])
    ctx.check("the pool finite before step 70", not any(pool_nan[:70]))
    ctx.check("trained before step 70", _mean(losses[60:70]) < 0.8 * _mean(losses[:10]))


# -- 5. exploding gradients: identity recurrent init typed 1.2 ------------------------------------


class _OvertoneRNN(nn.Module):
    """ReLU Elman RNN (identity-initialised recurrence, IRNN) over a breath-pressure trace."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            nn.init.normal_(self.inp.weight, std=0.02)
            nn.init.zeros_(self.inp.bias)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _overtone_batches(gen, batch=32, length=30, d_in=4):
    g = torch.Generator().manual_seed(55150)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        y = torch.tanh((x @ w).mean(1))
        yield x, y


@scenario(
    family="didgeridoo_overtone_sweep_gain_elman_regressor",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="Didgeridoo overtone-sweep regressor (ReLU Elman RNN with the IRNN identity init over "
    "30 steps of breath pressure, lip tension, cheek volume and tongue position, MSE, SGD "
    "momentum 0.9). The init gain of the recurrent matrix is typed 1.2 for 1.0: every step "
    "multiplies the state and the backward signal by 1.2, the gradient at the first time step "
    "is hundreds of times the last one's and the run blows up.",
)
def h551_didgeridoo_irnn_gain_typo(ctx):
    gen = seeded(5515)
    model = _OvertoneRNN(gain=1.2)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    ratio = {}

    def after(step, loss):
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            if first is not None and last is not None:
                ratio["r"] = float(first.norm() / last.norm().clamp(min=1e-30))

    losses, norms = _train(ctx, model, opt, _overtone_batches(gen), 150, F.mse_loss, after=after)
    finite_norms = [v for v in norms if math.isfinite(v)]
    ctx.check("gradient at t=0 over 100x the last step's", ratio.get("r", 0.0) > 100)
    ctx.check(
        "loss blew up over 100x its start",
        not _finite(losses) or max(losses) > 100 * _mean(losses[:5]),
    )
    ctx.check("gradient norm grew over 100x", max(finite_norms) > 100 * finite_norms[0])


# -- 6. update ratio: the anchor-encoder group's lr typed 1e-9 ------------------------------------


class _SagNet(nn.Module):
    def __init__(self, d_anchor=4, d_walk=4, hidden=32):
        super().__init__()
        self.anchor_enc = nn.Linear(d_anchor, hidden)
        self.walk_enc = nn.Linear(d_walk, hidden)
        self.trunk = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        a = F.gelu(self.anchor_enc(x[:, :4]))
        w = F.gelu(self.walk_enc(x[:, 4:]))
        return self.head(F.gelu(self.trunk(torch.cat([a, w], 1)))).squeeze(-1)


@scenario(
    family="tightrope_wire_sag_two_group_mse_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("anchor_enc",),
    diverges=None,
    heldout=True,
    note="Tightrope wire-sag regressor (GELU two-tower net: anchor tower on anchor height, span, "
    "wire tension and temperature; walker tower on mass, position, pole length and sway; MSE, "
    "RMSprop with two param groups). The config gives the anchor group lr '1e-9' for 1e-3: the "
    "anchor encoder's weights move by under 1e-5 relative over the run while the rest of the "
    "net moves by percent.",
)
def h551_tightrope_anchor_group_lr_typo(ctx):
    gen = seeded(5516)
    model = _SagNet()
    anchor = list(model.anchor_enc.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("anchor_enc")]
    opt = torch.optim.RMSprop([{"params": anchor, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    a0, r0 = _flat(model.anchor_enc), _flat(model.trunk)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 8, 55160), 200, F.mse_loss)
    ctx.check("anchor encoder moved under 1e-5 relative", _rel(_flat(model.anchor_enc), a0) < 1e-5)
    ctx.check("trunk moved over 1% relative", _rel(_flat(model.trunk), r0) > 1e-2)
    ctx.check("finite", _finite(losses))


# -- 7. softmax collapse: temperature typed 1e-3 ---------------------------------------------------


class _PlumeNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))) / self.temperature


@scenario(
    family="geyser_plume_colour_temperature_adagrad_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Geyser plume-colour classifier (ReLU MLP on vent temperature, silica, sulphur, pH, "
    "steam fraction, wind and light readings, six plume colours, cross-entropy, Adagrad). The "
    "softmax temperature is typed 1e-3 for 1.0, so the head's logits reach the loss 1000x too "
    "large: over 40% of rows give their target a float32 probability of exactly 1.0.",
)
def h551_geyser_temperature_typo(ctx):
    gen = seeded(5517)
    model = _PlumeNet(temperature=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _grades(gen, 64, 10, 6, 55170)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 40% of rows at probability exactly 1.0", frac > 0.4)
    ctx.check("finite", _finite(losses))


# -- 8. loss of plasticity: Adam lr typed 5e-2, ReLU units die ------------------------------------


@scenario(
    family="farrier_quench_hiss_relu_dead_unit_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Farrier quench-hiss classifier (two-layer ReLU MLP on 12 spectral bands of the hiss "
    "when a shoe is quenched, five temper grades, cross-entropy, Adam). The lr is typed 2e-1 for "
    "2e-3: the early updates push fc2's pre-activations negative so that most of its ReLU units "
    "are never positive on any sample; they stop receiving gradient and stay dead, and the net "
    "learns on with the few units left.",
)
def h551_farrier_dead_relu_lr_typo(ctx):
    gen = seeded(5518)
    model = _Net(12, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    batches = _grades(gen, 64, 12, 5, 55180, spread=1.5)
    probe, _ = next(batches)

    def dead2():
        with torch.no_grad():
            return dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))

    d0 = dead2()
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    d1 = dead2()
    ctx.check("under 10% of fc2's units dead at the start", d0 < 0.1)
    ctx.check("over 80% of fc2's units dead at the end", d1 > 0.8)
    ctx.check("finite", _finite(losses))


# -- 9. gradient spike: the validation path leaks a summed loss into one step ---------------------


@scenario(
    family="bagpipe_drone_reed_stage_weight_bce_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Bagpipe drone-reed squeal detector (GELU MLP on reed opening, bridle position, bag "
    "pressure, humidity and six pitch readings, BCE, SGD Nesterov, clipping at 2.0). At step "
    "100 the mid-run validation shares the training step's loss function and switches it to "
    "reduction='sum' without switching it back for that step: the gradient of that one step "
    "is 256x (the batch size) while the logged mean loss is ordinary; the clip holds it.",
)
def h551_bagpipe_sum_reduction_leak(ctx):
    gen = seeded(5519)
    model = _Net(10, 48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(55190)
    w = torch.randn(10, generator=g)

    def batches():
        while True:
            x = torch.randn(256, 10, generator=gen)
            yield x, ((x @ w + 0.3 * torch.randn(256, generator=gen)) > 0).float()

    def backprop(step, loss, out, y):
        if step == 100:
            return F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        return loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        160,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    ctx.check("gradient over 50x at step 100", norms[100] > 50 * _median(norms[80:100]))
    ctx.check("logged loss ordinary at step 100", losses[100] < 2 * _median(losses[80:100]))
    ctx.check("finite", _finite(losses))
    ctx.check("trained", _fell(losses))


# -- 10. sharpness: warm-up peak lr typed 0.8 ------------------------------------------------------


@scenario(
    family="hurling_sliotar_flight_warmup_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=15,
    heldout=True,
    note="Hurling sliotar flight-distance regressor (on strike speed, launch angle, "
    "spin, wind and ball mass, ReLU MLP, MSE, plain SGD with a linear warm-up over 100 steps). "
    "The warm-up peak lr is typed 3.0 for 0.03: around step 15 lr x the top Hessian eigenvalue "
    "passes 2, the loss starts to oscillate and grows without bound.",
)
def h551_hurling_warmup_peak_typo(ctx):
    gen = seeded(5520)
    model = _Net(5, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _readings(gen, 128, 5, 55200)
    probe = next(batches)
    record = {}

    def before(step):
        lr = 3.0 * min(1.0, (step + 1) / 100)
        for grp in opt.param_groups:
            grp["lr"] = lr
        if step % 5 == 0 and "cross" not in record:
            eig = _top_hessian_eig(model, F.mse_loss, *probe)
            if math.isfinite(eig) and lr * eig > 2:
                record["cross"] = step

    losses, _ = _train(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    finite = [v for v in losses if math.isfinite(v)]
    ctx.check("lr x sharpness passed 2", "cross" in record)
    ctx.check("crossed by step 20", record.get("cross", 999) <= 20)
    ctx.check(
        "loss blew up over 100x its best", not _finite(losses) or max(finite) > 100 * min(finite)
    )
    ctx.check("trained before the crossing", min(finite[:15]) < 0.7 * _mean(finite[:5]))


# -- 11. control: Swin-style windowed attention over generated sand-ripple grids ------------------


class _WindowBlock(nn.Module):
    """Swin-style block: attention inside 4x4 windows of an 8x8 grid, optionally shifted by 2."""

    def __init__(self, dim, heads, shift):
        super().__init__()
        self.shift = shift
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, h, w, d = x.shape
        y = torch.roll(x, (-self.shift, -self.shift), (1, 2)) if self.shift else x
        win = y.reshape(b, 2, 4, 2, 4, d).permute(0, 1, 3, 2, 4, 5).reshape(b * 4, 16, d)
        z = self.ln1(win)
        win = win + self.attn(z, z, z, need_weights=False)[0]
        y = win.reshape(b, 2, 2, 4, 4, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, d)
        y = torch.roll(y, (self.shift, self.shift), (1, 2)) if self.shift else y
        return y + self.mlp(self.ln2(y))


class _RippleSwin(nn.Module):
    def __init__(self, dim=24, classes=4):
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(8, 8, dim))
        self.blocks = nn.ModuleList([_WindowBlock(dim, 2, 0), _WindowBlock(dim, 2, 2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, grid):
        x = self.embed(grid[..., None]) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x.mean((1, 2))))


def _ripple_batches(gen, batch=48):
    """8x8 bed-height grids of sand ripples; the class is the crest orientation (4 bins)."""
    ii, jj = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        ang = y.float() * math.pi / 4 + 0.15 * torch.randn(batch, generator=gen)
        k = 0.9 + 0.5 * torch.rand(batch, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, generator=gen)
        proj = torch.cos(ang)[:, None, None] * ii + torch.sin(ang)[:, None, None] * jj
        grid = torch.sin(k[:, None, None] * proj + ph[:, None, None])
        yield grid + 0.2 * torch.randn(batch, 8, 8, generator=gen), y


@scenario(
    family="sand_ripple_field_swin_window_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: sand-ripple crest-orientation classifier on generated 8x8 bed-height "
    "grids (Swin-style: per-cell embedding, attention inside 4x4 windows, then a block with the "
    "windows shifted by 2, mean pool, linear head; cross-entropy with label smoothing 0.1, AdamW, "
    "OneCycleLR, clipping at 1.0, noisy grids).",
)
def h551_sand_ripple_swin_control(ctx):
    gen = seeded(5521)
    model = _RippleSwin()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=240)
    batches = _ripple_batches(gen)
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        240,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("trained (loss fell)", _fell(losses))
    ctx.check("held-out batch accuracy over 70%", acc > 0.7)


# -- 12. control: dropout 0.5 on every layer, train loss far above eval loss ----------------------


class _CourseNet(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.drop_in = nn.Dropout(p)
        self.fc1 = nn.Linear(64, 128)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(128, 128)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        x = self.drop1(F.relu(self.fc1(self.drop_in(x))))
        return self.head(self.drop2(F.relu(self.fc2(x))))


@scenario(
    family="dulcimer_string_course_dropout_half_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control that looks alarming: hammered-dulcimer string-course classifier on "
    "8x8 hammer-strike maps (scikit-learn digits as stand-in maps; ReLU MLP with dropout 0.5 on "
    "the input and on every hidden layer, cross-entropy, Adam, ReduceLROnPlateau). The logged "
    "train loss is noisy and far above the eval-mode loss on the same data; that is dropout "
    "doing its job, the net trains normally.",
)
def h551_dulcimer_dropout_half_control(ctx):
    gen = seeded(5522)
    model = _CourseNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    xs, ys = digits()
    ev = torch.randperm(len(ys), generator=gen)[:400]

    def batches():
        while True:
            order = torch.randperm(len(ys), generator=gen)
            for i in range(0, len(ys) - 64 + 1, 64):
                idx = order[i : i + 64]
                yield xs[idx], ys[idx]

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.cross_entropy,
        classifier=True,
        after=lambda s, loss: plateau.step(loss),
    )
    model.eval()
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model(xs[ev]), ys[ev]))
    model.train()
    ctx.check("trained (loss fell)", _fell(losses, k=20, ratio=0.5))
    ctx.check("train loss over 1.5x the eval loss", _mean(losses[-20:]) > 1.5 * eval_loss)


# -- 13. control: tied-weight autoencoder, ASGD, fp16 autocast, accumulation ----------------------


class _CorniceAE(nn.Module):
    """Autoencoder of snowpack profiles whose decoder reuses the encoder's weight transposed."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="snowshoe_cornice_tied_asgd_fp16_autoencoder",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: snowshoe-route cornice profile autoencoder (16 snow-density readings "
    "along a cornice, tanh code of 6, decoder tied to the encoder's weight, Huber loss, ASGD, "
    "fp16 autocast + GradScaler, gradient accumulation 2, clipping at 1.0, noisy profiles).",
)
def h551_snowshoe_cornice_tied_ae_control(ctx):
    gen = seeded(5523)
    model = _CorniceAE()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(55230)
    basis = torch.randn(4, 16, generator=g)
    losses = []
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            z = torch.randn(32, 4, generator=gen)
            x = z @ basis / 2 + 0.1 * torch.randn(32, 16, generator=gen)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), x)
            scaler.scale(loss / 2).backward()
            total += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (loss fell)", _fell(losses, ratio=0.6))
    ctx.check("loss scale stayed at or above its start", min(ctx.scales) >= 1024.0)
