"""Held-out set 528 (``h528_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, and one Hugging Face ELECTRA built from a tiny config.

Faults: a sitar sympathetic-string attention tagger whose attention param group is typed
lr 3e-2 with no weight decay (q.k logits grow, AdamW); an ice-climbing axe-placement ReLU
regressor whose Adam lr is typed 0.3 for 3e-4 (dead ReLUs); a peat-cutting slab moisture net
taking log of slab depth with no clamp, fed a shard with zero depths (Adagrad, Gaussian NLL); a
banjo head-tension 16-layer tanh MLP initialised with gain 4 (SGD Nesterov); a paragliding
thermal-climb regressor whose StepLR gamma is typed 10 for 0.1 (plain SGD); a letterpress
ink-coverage regressor whose trunk group lr is 0 (unfreeze never happens, RMSprop); a fog-harp
water-yield regressor fed one batch in millilitres, not litres (SGD, clipping); a canoe-slalom
gate-touch BCE classifier whose resumed step uses reduction='sum' (SGD momentum); a glacier
calving-height regressor under fp16 autocast + GradScaler fed face height in millimetres (NAdam);
an ocarina fingering classifier whose temperature is typed 0.01 for 1.0 (Adamax).

Controls: a bell-ringing change classifier with a triangular cyclical lr (SGD momentum, loss
rises and falls with each cycle); a sailmaking seam-grade Hugging Face ELECTRA classifier (AdamW,
linear warm-up then decay, clipping); a curling-stone curl Huber regressor (RAdam, OneCycleLR,
accumulation 2, clipping, noisy readings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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
    scaler=None,
    amp=False,
    accum=1,
    stop_nonfinite=True,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        loss = None
        for _ in range(accum):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            part = loss_fn(out.float(), y)
            total = backprop(step, out, y, part) if backprop is not None else part
            total = total / accum
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            loss = part.detach() if loss is None else loss + part.detach()
        loss = loss / accum
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if stop_nonfinite and not math.isfinite(losses[-1]):
            break
    return losses, norms


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)
        self.squeeze = out == 1

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if self.squeeze else out


# -- faults ---------------------------------------------------------------------------------------


class _StringAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.dim = dim
        self.max_logit = 0.0

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(self.dim)
        self.max_logit = float(logits.detach().abs().max())
        return torch.softmax(logits, -1) @ self.v(x)


class _SitarTagger(nn.Module):
    """Tags each pluck of a phrase with the sympathetic string that rings (the one whose tuning
    matches the most recent loud pluck)."""

    def __init__(self, vocab=24, dim=32, tags=12, length=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln = nn.LayerNorm(dim)
        self.attn = _StringAttention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tags)
        for m in (self.attn.q, self.attn.k, self.attn.v):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        x = x + self.attn(self.ln(x))
        return self.head(self.ln2(x))


def _pluck_batches(gen, batch=32, length=16, vocab=24, tags=12):
    while True:
        idx = torch.randint(0, vocab, (batch, length), generator=gen)
        anchor = idx[:, :1].expand(-1, length)
        yield idx, (anchor % tags)


@scenario(
    family="sitar_sympathetic_string_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="The attention param group's lr is typed 3e-2 for 3e-4 and its weight decay 0.0 "
    "(copied from the norm group); nothing bounds q and k, so q.k/sqrt(d) grows step after step.",
)
def h528_sitar_attention_logits(ctx):
    seeded(5281)
    gen = torch.Generator().manual_seed(5281)
    model = _SitarTagger()
    attn_params = list(model.attn.parameters())
    ids = {id(p) for p in attn_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": attn_params, "lr": 3e-2, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    seen = []
    batches = _pluck_batches(gen)

    def lossf(out, y):
        seen.append(model.attn.max_logit)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    losses, _ = _loop(ctx, model, opt, batches, 200, lossf, classifier=False)
    ctx.check("max attention logit grew over 20x", seen[-1] > 20 * max(seen[0], 1e-3))
    ctx.check("max attention logit ends above 30", seen[-1] > 30)


@scenario(
    family="ice_climbing_axe_placement_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    heldout=True,
    note="The Adam lr is typed 0.3 for 3e-4; the first large steps push fc2's pre-activations "
    "negative for every placement and most act2 ReLUs die; the loss stalls.",
)
def h528_axe_placement_dead_relu(ctx):
    seeded(5282)
    gen = torch.Generator().manual_seed(5282)
    model = _Net(10, hidden=48)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    batches = _readings(gen, 64, 10, 5282)
    x0, _ = next(batches)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(x0))
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("under 20% of act2 units dead at init", dead0 < 0.2)
    ctx.check("over 60% of act2 units dead", dead > 0.6)
    ctx.check("loss finite", _finite(losses))


class _LogDepth(nn.Module):
    def forward(self, x):
        return torch.log(x)  # no clamp: a zero depth gives -inf


class _PeatNet(nn.Module):
    """Mean and variance of a peat slab's moisture from spade readings and slab depth."""

    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.logf = _LogDepth()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act = nn.Tanh()
        self.mu = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        logd = self.logf(x[:, -1:])
        h = self.act(self.fc1(torch.cat([x[:, :-1], logd], 1)))
        return torch.cat([self.mu(h) + 0.3 * logd, F.softplus(self.var(h)) + 1e-4], 1)


def _nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


@scenario(
    family="peat_cutting_slab_moisture_log_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logf",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Slab depth enters through log with no clamp; the shard read at step 80 holds "
    "unmeasured slabs recorded as depth 0, log(0) = -inf and the Gaussian NLL is NaN.",
)
def h528_peat_log_zero_depth(ctx):
    seeded(5283)
    gen = torch.Generator().manual_seed(5283)
    model = _PeatNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    base = _readings(gen, 64, 8, 5283)

    def batches():
        while True:
            x, y = next(base)
            depth = 0.3 + torch.rand(x.shape[0], 1, generator=gen)
            yield torch.cat([x, depth], 1), y + 0.3 * torch.log(depth[:, 0])

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[:8, -1] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, _nll, alter=alter)
    ctx.check("loss finite before step 80", _finite(losses[:80]))
    ctx.check("loss non-finite at step 80", len(losses) == 81 and not math.isfinite(losses[80]))


@scenario(
    family="banjo_head_tension_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    heldout=True,
    note="SGD Nesterov; every Linear is initialised xavier_normal_ with gain 4 (a copy of a "
    "ReLU gain table gone wrong): the 16-layer tanh stack is chaotic and the gradient grows "
    "through depth, the first layer's over 100x the last's.",
)
def h528_banjo_deep_tanh_gain(ctx):
    seeded(5284)
    gen = torch.Generator().manual_seed(5284)
    sizes = [12] + [32] * 15 + [1]
    layers = []
    for i in range(16):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < 15:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=4.0)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 12, 5284)
    ratios = []

    def after(step, loss):
        ratios.append(float(model[0].weight.grad.norm() / model[30].weight.grad.norm()))

    _loop(ctx, model, opt, batches, 80, lambda o, y: F.mse_loss(o.squeeze(-1), y), after=after)
    ctx.check("first layer gradient over 100x the last's", _mean(ratios) > 100)


@scenario(
    family="paragliding_thermal_climb_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    diverges="auto",
    onset=120,
    heldout=True,
    note="A StepLR decay meant to multiply the lr by 0.1 every 60 steps has gamma typed 10; "
    "the lr goes 0.05 -> 0.5 at step 60 -> 5 at step 120, past 2/sharpness, and the loss "
    "blows up.",
)
def h528_thermal_steplr_gamma(ctx):
    seeded(5285)
    gen = torch.Generator().manual_seed(5285)
    model = _Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    batches = _readings(gen, 64, 10, 5285)
    losses, _ = _loop(ctx, model, opt, batches, 180, F.mse_loss, sched=sched)
    pre = min(losses[:120])
    ctx.check("loss fell before step 120", _fell(losses[:120], ratio=0.9))
    ctx.check("loss finite before step 120", _finite(losses[:120]))
    ctx.check(
        "loss blows up after step 120 (100x or non-finite)",
        not _finite(losses[120:]) or max(losses[120:]) > 100 * pre,
    )


class _InkNet(nn.Module):
    def __init__(self, d_in=10, hidden=40):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.act = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.trunk(x))).squeeze(-1)


@scenario(
    family="letterpress_ink_coverage_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    heldout=True,
    note="The trunk group starts at lr 0 to be unfrozen at epoch 2, but the unfreeze compares "
    "the step to 2 * len(dataset) (samples, not batches) and never fires; the trunk's update "
    "ratio is 0 all run while the head trains.",
)
def h528_ink_trunk_never_unfrozen(ctx):
    seeded(5286)
    gen = torch.Generator().manual_seed(5286)
    model = _InkNet()
    opt = torch.optim.RMSprop(
        [
            {"params": model.trunk.parameters(), "lr": 0.0},
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    dataset_len, batch = 3200, 64
    unfreeze_at = 2 * dataset_len  # bug: in samples; meant 2 * dataset_len // batch

    def before(step):
        if step == unfreeze_at:
            opt.param_groups[0]["lr"] = 3e-3

    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    batches = _readings(gen, batch, 10, 5286)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, before=before)
    ctx.check(
        "trunk weights unchanged", float((model.trunk[0].weight.detach() - w0).abs().max()) == 0.0
    )
    ctx.check(
        "head weights moved", float((model.head.weight.detach() - h0).norm() / h0.norm()) > 0.05
    )


@scenario(
    family="fog_harp_water_yield_gelu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    onset=100,
    heldout=True,
    note="One shard from a newer logger reports the harp's daily water yield in millilitres, "
    "not litres: the batch at step 100 has targets 1000x; the loss jumps, clipping holds the "
    "step, and the run recovers.",
)
def h528_fog_harp_millilitre_batch(ctx):
    seeded(5287)
    gen = torch.Generator().manual_seed(5287)
    model = _Net(10, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _readings(gen, 64, 10, 5287)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    losses, norms = _loop(ctx, model, opt, batches, 200, F.mse_loss, alter=alter, clip=1.0)
    before = _mean(losses[90:100])
    ctx.check("loss at step 100 over 1000x the steps before", losses[100] > 1000 * before)
    ctx.check("gradient at step 100 over 100x the median", norms[100] > 100 * sorted(norms)[100])
    ctx.check("recovered: last losses under 2x pre-onset", _mean(losses[-10:]) < 2 * before)


@scenario(
    family="canoe_slalom_gate_touch_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    onset=120,
    heldout=True,
    note="SGD momentum; the run is resumed at step 120 from a checkpoint whose loss config "
    "says reduction='sum', for that one step only (the next config reload restores 'mean'): "
    "the gradient is 64x, the logged loss is ordinary.",
)
def h528_canoe_gate_sum_reduction(ctx):
    seeded(5288)
    gen = torch.Generator().manual_seed(5288)
    model = _Net(12, hidden=40, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    base = _grades(gen, 64, 12, 2, 5288, spread=1.5)

    def batches():
        while True:
            x, y = next(base)
            yield x, y.float()

    def backprop(step, out, y, loss):
        if step == 120:
            return F.binary_cross_entropy_with_logits(out.float(), y, reduction="sum")
        return loss

    losses, norms = _loop(
        ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits, backprop=backprop
    )
    med = sorted(norms[100:120])[10]
    ctx.check("gradient at step 120 over 30x the steps before", norms[120] > 30 * med)
    ctx.check("logged loss at step 120 ordinary", losses[120] < 2 * max(losses[100:120]))
    ctx.check("run finite", _finite(losses))


class _CalvingNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="glacier_calving_height_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 90 a new survey feed reports ice-face height "
    "in millimetres instead of metres; fc1's fp16 output exceeds 65504 and overflows to inf, "
    "the loss is NaN from step 90 on; the scaler skips every step and halves its scale again and "
    "again (the loop keeps going, as a GradScaler loop does).",
)
def h528_calving_millimetre_fp16(ctx):
    seeded(5289)
    gen = torch.Generator().manual_seed(5289)
    model = _CalvingNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = _readings(gen, 64, 8, 5289)
    overflow, f32 = [], []

    def alter(step, x, y):
        if step >= 90:
            x = x.clone()
            x[:, 0] = (x[:, 0] * 20.0 + 60.0) * 1000.0  # face height, mm
        return x, y

    def after(step, loss):
        if step >= 90:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                xb, _ = alter(step, *next(batches))
                overflow.append(not bool(torch.isfinite(model.fc1(xb)).all()))
            if step == 90:
                with torch.no_grad():
                    f32.append(bool(torch.isfinite(model.fc1(xb.float())).all()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        130,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
        after=after,
        stop_nonfinite=False,
    )
    ctx.check("fp16 fc1 output overflows after step 90", sum(overflow) > 0.5 * len(overflow))
    ctx.check("scale fell over 100x after onset", ctx.scales[-1] < ctx.scales[89] / 100)
    ctx.check("loss finite before onset", _finite(losses[:90]))
    ctx.check("loss non-finite from step 90", not math.isfinite(losses[90]))
    ctx.check("fc1 output finite in float32 at step 90", f32 == [True])


class _OcarinaNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=8, temperature=0.01):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))) / self.temperature


@scenario(
    family="ocarina_fingering_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    heldout=True,
    note="The softmax temperature is typed 0.01 for 1.0; the logits are 100x and the float32 "
    "softmax rounds most rows' target probability to exactly 1.0.",
)
def h528_ocarina_temperature_typo(ctx):
    seeded(5290)
    gen = torch.Generator().manual_seed(5290)
    model = _OcarinaNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 8, 5290, spread=0.6)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="bell_ringing_change_cyclic_lr_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control that looks alarming: SGD momentum with a triangular CyclicLR (0.01 to 0.4, "
    "25 steps up, 25 down); the loss rises with each lr peak and falls back in each trough.",
)
def h528_bell_ringing_cyclic_lr(ctx):
    seeded(5291)
    gen = torch.Generator().manual_seed(5291)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.4, step_size_up=25, mode="triangular"
    )
    losses, _ = _loop(
        ctx, model, opt, digit_batches(gen), 200, F.cross_entropy, classifier=True, sched=sched
    )
    rises = sum(
        _mean(losses[c + 20 : c + 30]) > _mean(losses[c - 5 : c + 5]) for c in (50, 100, 150)
    )
    ctx.check("loss rises towards at least two lr peaks", rises >= 2)
    ctx.check("trained: loss fell", _fell(losses, ratio=0.5))


@scenario(
    family="sailmaking_seam_grade_hf_electra_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a Hugging Face ElectraForSequenceClassification from a tiny config grades "
    "seam stitch sequences; AdamW, linear warm-up 20 steps then linear decay, clipping 1.0.",
)
def h528_sailmaking_hf_electra(ctx):
    from transformers import ElectraConfig, ElectraForSequenceClassification

    seeded(5292)
    gen = torch.Generator().manual_seed(5292)
    config = ElectraConfig(
        vocab_size=128,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ElectraForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 20, max(0.05, (steps - s) / (steps - 20)))
    )

    losses, _ = _electra_loop(ctx, model, opt, sched, gen, steps)
    ctx.check("trained: loss fell", _fell(losses, ratio=0.7))


def _electra_loop(ctx, model, opt, sched, gen, steps):
    ctx.attach(model, opt)
    batches = bert_batches(gen)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return losses, None


@scenario(
    family="curling_stone_curl_onecycle_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: RAdam with OneCycleLR (max 5e-3), gradient accumulation 2, clipping 1.0, "
    "Huber loss on noisy sweeping readings.",
)
def h528_curling_onecycle_huber(ctx):
    seeded(5293)
    gen = torch.Generator().manual_seed(5293)
    model = _Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    batches = _readings(gen, 32, 10, 5293, noise=0.2)
    losses, _ = _loop(ctx, model, opt, batches, steps, F.huber_loss, sched=sched, clip=1.0, accum=2)
    ctx.check("trained: loss fell", _fell(losses, ratio=0.7))
