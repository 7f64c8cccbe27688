"""Held-out set 591 (``h591_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: kayak-slalom gate-touch Huber regressor whose resumed step multiplies by the
accumulation count instead of dividing (gradient_spike, SGD Nesterov, accumulation); netsuke
carving-grain ReLU classifier fed uncentred 0..16 pixel counts with an Adam lr of 0.1
copied from a tanh baseline (loss_of_plasticity, Adam); salt-pan brine-crystal Poisson net
whose rate lost its softplus (nonfinite, NAdam); cooperage stave-char regressor under fp16
autocast fed char temperature in millikelvin (amp_overflow, AdamW, GradScaler); pesapallo
hit-zone classifier fed one shard of raw strain-gauge counts (data_outlier, Adamax);
spinning-wheel flyer-twist regressor with SGD lr typed 0.9 for 0.09 (sharpness_above_limit,
plain SGD); alphorn bore-resonance ReLU RNN whose identity recurrent init got a gain of 1.2
(exploding_gradients, SGD momentum); clog-maker sole-carve regressor whose fc1 group lr is
typed 1e-9 (update_ratio_out_of_range, ASGD, param groups); firn densification regressor
whose target normaliser drifts (loss_divergence, Adadelta); kora harp-string classifier whose
temperature is read in seconds from a milliseconds key (softmax_collapse, RMSprop).
Controls: lute fret-tagging DistilBERT token tagger (Hugging Face, tiny config, AdamW,
linear warm-up, clipping); falconry hood-fit classifier whose head is re-initialised at step
100 for a relabelled task (loss jumps then falls, alarming-looking, RAdam, label smoothing);
sail-loft luff-tension Huber regressor (Adagrad, OneCycleLR, clipping, heavy-tailed targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, digits, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


def _digit_stream(gen, batch=64):
    x, y = digits()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


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
    clip=None,
    sched=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, x, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


# -- faults ---------------------------------------------------------------------------------------


@scenario(
    "kayak_slalom_gate_touch_accum_huber_regressor",
    "SGD",
    "gradient_spike",
    heldout=True,
    onset=120,
    note="SGD Nesterov with 8-micro-batch gradient accumulation; the step resumed from the "
    "checkpoint at 120 rebuilds the scale as accum_steps instead of 1/accum_steps, so that one "
    "update carries a 64x gradient; the data and the logged loss are ordinary",
)
def h591_kayak_slalom_gate_touch_accum_huber_regressor(ctx):
    gen = seeded(5911)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen, 16, 12, 59111)
    accum = 8
    losses, norms = [], []
    for step in range(200):
        scale = accum if step == 120 else 1.0 / accum
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=1.0)
            (loss * scale).backward()
            total += float(loss.detach()) / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(total):
            break
    ctx.check("trained before the resume", _fell(losses[:120]))
    ctx.check(
        "gradient at 120 over 30x the median of 100-119",
        len(norms) > 120 and norms[120] > 30 * _median(norms[100:120]),
    )
    ctx.check(
        "the loss logged at 120 is ordinary",
        len(losses) > 120 and losses[120] < 3 * _median(losses[100:120]),
    )


@scenario(
    "netsuke_carving_grain_dead_relu_classifier",
    "Adam",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="the grain classifier reads uncentred 0..16 pixel counts and keeps the Adam lr 0.1 "
    "copied from its tanh baseline; the early large updates push most of fc2's ReLU units "
    "negative on every input and they never come back, the loss stalls",
)
def h591_netsuke_carving_grain_dead_relu_classifier(ctx):
    gen = seeded(5912)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    raw = _digit_stream(gen)
    fixed_x = digits()[0][:512] * 16.0
    dead = []

    def measure():
        with torch.no_grad():
            dead.append(dead_fraction(model.features(fixed_x)))

    measure()

    def alter(step, x, y):
        return x * 16.0, y

    def after(step, x, out, y):
        if step % 20 == 19:
            measure()

    losses, _ = _loop(
        ctx, model, opt, raw, 200, F.cross_entropy, classifier=True, alter=alter, after=after
    )
    ctx.check("under 20% of fc2's units dead at step 0", dead[0] < 0.2)
    ctx.check("over 60% of fc2's units dead at the end", dead[-1] > 0.6)
    ctx.check("the loss stalls above 0.8", _finite(losses) and _mean(losses[-20:]) > 0.8)


@scenario(
    "salt_pan_brine_crystal_poisson_net",
    "NAdam",
    "nonfinite",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="the crystal-count Poisson NLL takes log(rate) of the head's raw output: the "
    "softplus was dropped in a refactor; the head starts positive, a rate crosses zero as "
    "training pulls the low-count pans down and log of a negative gives NaN",
)
def h591_salt_pan_brine_crystal_poisson_net(ctx):
    gen = seeded(5913)
    model = _Net(8, 32, 1, nn.Tanh)
    with torch.no_grad():
        model.head.bias.fill_(2.0)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(59131)
    w = torch.randn(8, generator=g)

    def pans():
        while True:
            x = torch.randn(64, 8, generator=gen)
            rate = torch.exp(0.9 * x @ w / math.sqrt(8) - 0.5)
            yield x, torch.poisson(rate, generator=gen)

    def nll(rate, y):
        return (rate - y * torch.log(rate)).mean()

    first = {}

    def after(step, x, out, y):
        if "neg" not in first and bool((out <= 0).any()):
            first["neg"] = step

    with torch.no_grad():
        start_min = float(model(torch.randn(256, 8, generator=gen)).min())
    losses, _ = _loop(ctx, model, opt, pans(), 200, nll, after=after)
    ctx.check("every rate positive at the start", start_min > 0)
    ctx.check("the loss is NaN at the end", not math.isfinite(losses[-1]))
    ctx.check("finite for the first 10 steps", len(losses) > 10 and _finite(losses[:10]))
    ctx.check("a rate crossed zero where the loss broke", first.get("neg") == len(losses) - 1)


@scenario(
    "cooperage_stave_char_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=90,
    heldout=True,
    onset=90,
    note="fp16 autocast with a GradScaler; from step 90 the char-oven pyrometer is swapped for "
    "one that logs millikelvin and the pipeline's kelvin/1000 scaling is skipped: fc1's fp16 "
    "output overflows to inf (finite in float32) and the loss is non-finite",
)
def h591_cooperage_stave_char_fp16_regressor(ctx):
    gen = seeded(5914)
    model = _Net(10, 48, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 59141)
    losses, seen = [], {}
    for step in range(150):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 2] = (x[:, 2] * 0.05 + 0.5) * 1.0e6
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        if step == 90:
            seen["fp16"] = bool(torch.isfinite(h).all())
            seen["fp32"] = bool(torch.isfinite(model.fc1(x.float())).all())
        loss = F.mse_loss(out.float(), y)
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
    ctx.check("trained and finite before step 90", _fell(losses[:90]))
    ctx.check("fc1's fp16 output is non-finite at 90", seen.get("fp16") is False)
    ctx.check("fc1's float32 output is finite at 90", seen.get("fp32") is True)
    ctx.check("the loss is non-finite at 90", len(losses) == 91 and not math.isfinite(losses[90]))


@scenario(
    "pesapallo_hit_zone_shard_classifier",
    "Adamax",
    "data_outlier",
    heldout=True,
    onset=100,
    note="one shard of bat-sensor features was exported as raw 16-bit strain-gauge counts "
    "instead of calibrated units; its batch at step 100 is 30000 + 500x the reading, the "
    "loss and gradient jump for that batch and the run recovers",
)
def h591_pesapallo_hit_zone_shard_classifier(ctx):
    gen = seeded(5915)
    model = _Net(16, 48, 5, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 100:
            return 30000.0 + 500.0 * x, y
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 5, 59151),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    ctx.check("trained before the shard", _fell(losses[:100]))
    ctx.check(
        "loss at 100 over 20x the median of 80-99", losses[100] > 20 * _median(losses[80:100])
    )
    ctx.check(
        "gradient at 100 over 10x the median of 80-99", norms[100] > 10 * _median(norms[80:100])
    )
    ctx.check("finite after the shard", _finite(losses))


@scenario(
    "spinning_wheel_flyer_twist_lr_typo_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 0.9 for 0.09 in the twist-per-inch regressor's config: "
    "lr x the top Hessian eigenvalue is past 2 from the first step, the loss oscillates and "
    "blows up",
)
def h591_spinning_wheel_flyer_twist_lr_typo_regressor(ctx):
    gen = seeded(5916)
    model = _Net(10, 64, 1, nn.Tanh)
    lr = 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 128, 10, 59161)
    x0, y0 = next(batches)
    x0, y0 = 2.0 * x0, 2.0 * y0

    def scaled():
        for x, y in batches:
            yield 2.0 * x, 2.0 * y

    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, scaled(), 150, F.mse_loss)
    ctx.check(f"lr x sharpness past 2 at step 0 ({lr * eig:.2f})", lr * eig > 2.0)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


class _RecurrentBore(nn.Module):
    """A ReLU Elman RNN over the bore's impulse response, regressing the resonance."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.cell.weight_hh.copy_(gain * torch.eye(hidden))
            self.cell.bias_hh.zero_()
            self.cell.bias_ih.zero_()

    def forward(self, x, keep=None):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep is not None:
                h.retain_grad()
                keep.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    "alphorn_bore_resonance_gain_rnn",
    "SGD",
    "exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="IRNN-style identity init of the recurrent weights, but the gain from a sweep config "
    "is 1.2 instead of 1.0: over 30 time steps the backward signal grows through time, the "
    "gradients explode and SGD with momentum blows up",
)
def h591_alphorn_bore_resonance_gain_rnn(ctx):
    gen = seeded(5917)
    model = _RecurrentBore(4, 32, gain=1.2)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)

    def impulses():
        while True:
            x = 0.1 * torch.randn(32, 30, 4, generator=gen)
            yield x, x[:, :, 0].mean(1) * 5.0 + x[:, -5:, 1].sum(1)

    batches = impulses()
    xs, ys = next(batches)
    keep = []
    F.mse_loss(model(xs, keep), ys).backward()
    first, last = float(keep[0].grad.norm()), float(keep[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    losses, norms = _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check(
        f"backward signal at t=0 over 50x that at t=29 ({first / max(last, 1e-30):.0f}x)",
        first > 50 * last,
    )
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


@scenario(
    "clog_maker_sole_carve_frozen_group_regressor",
    "ASGD",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="ASGD with param groups; the sole-carve regressor's fc1 group lr is typed 1e-9 for "
    "1e-2, so fc1 never moves (its update/weight ratio is ~1e-9) while fc2 and the head train "
    "on random features; the loss falls only a little",
)
def h591_clog_maker_sole_carve_frozen_group_regressor(ctx):
    gen = seeded(5918)
    model = _Net(12, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-2,
    )
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 59181), 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check(f"fc1 moved under 1e-6 of its norm ({fc1_move:.1e})", fc1_move < 1e-6)
    ctx.check(f"the head moved over 1e-2 of its norm ({head_move:.1e})", head_move > 1e-2)
    ctx.check("finite", _finite(losses))


@scenario(
    "firn_densification_target_drift_regressor",
    "Adadelta",
    "loss_divergence",
    heldout=True,
    onset=60,
    note="the firn-density target is taken relative to a reference density that the "
    "preprocessing updates in place every step from 60 (a += where a = was meant): the "
    "target drifts away faster and faster, the model lags and the loss climbs steadily with "
    "no jump",
)
def h591_firn_densification_target_drift_regressor(ctx):
    gen = seeded(5919)
    model = _Net(10, 48, 1, nn.Tanh)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step, x, y):
        if step >= 60:
            return x, y + 3e-4 * (step - 60) ** 2
        return x, y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 59191), 240, F.mse_loss, alter=alter)
    best = min(_mean(losses[i : i + 10]) for i in range(30, 70))
    jumps = max(losses[i] / max(_mean(losses[i - 10 : i]), 1e-12) for i in range(70, len(losses)))
    ctx.check("trained before the drift", _fell(losses[:60]))
    ctx.check(
        f"the loss climbs to over 3x its best ({_mean(losses[-10:]) / best:.1f}x)",
        _mean(losses[-10:]) > 3 * best,
    )
    ctx.check(f"no step over 5x the mean of the 10 before ({jumps:.1f}x)", jumps < 5.0)
    ctx.check("finite", _finite(losses))


class _TemperedNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, 48, k, nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "kora_harp_string_temperature_classifier",
    "RMSprop",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config key is temperature_ms=2.0 and the model reads it as seconds/1000, "
    "dividing the string classifier's logits by 0.002; the softmax saturates and most rows' "
    "target probability rounds to exactly 1.0 in float32",
)
def h591_kora_harp_string_temperature_classifier(ctx):
    gen = seeded(59110)
    model = _TemperedNet(16, 7, 0.002)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = []

    def after(step, x, out, y):
        seen.append(collapsed_fraction(out, y))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 7, 591101),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("under 20% of rows collapsed at step 0", seen[0] < 0.2)
    ctx.check(f"over 40% of rows collapsed at the end ({seen[-1]:.2f})", seen[-1] > 0.4)


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "lute_fret_tagging_distilbert_token_tagger",
    "AdamW",
    "healthy",
    heldout=True,
    note="a Hugging Face DistilBertForTokenClassification from a tiny config tags each "
    "tablature token with its fret band (0..2 from the token id); AdamW, "
    "linear warm-up then decay, clipping at 1.0",
)
def h591_lute_fret_tagging_distilbert_token_tagger(ctx):
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    gen = seeded(59111)
    config = DistilBertConfig(
        vocab_size=48,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        num_labels=3,
    )
    model = DistilBertForTokenClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.05, (steps - s) / (steps - warm)))
    )

    def tabs():
        while True:
            x = torch.randint(1, 48, (16, 24), generator=gen)
            yield x, (x - 1) // 16

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, 3), y.reshape(-1))

    ctx.attach(model, opt)
    batches = tabs()
    losses = []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        logits = model(input_ids=x).logits
        loss = loss_fn(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss fell and stayed finite", _fell(losses, ratio=0.6))


@scenario(
    "falconry_hood_fit_head_reset_classifier",
    "RAdam",
    "healthy",
    heldout=True,
    note="hood-fit grade classifier with label smoothing 0.1; at step 100 the grading scheme "
    "is renumbered, so the classifier head is re-initialised (and its optimizer state "
    "cleared) for the relabelled task: the loss jumps back to chance, then falls again",
)
def h591_falconry_hood_fit_head_reset_classifier(ctx):
    gen = seeded(59112)
    model = _Net(16, 48, 6, nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    perm = torch.tensor([3, 5, 0, 1, 4, 2])

    def before(step):
        if step == 100:
            model.head.reset_parameters()
            for p in model.head.parameters():
                opt.state[p] = {}

    def alter(step, x, y):
        return (x, perm[y]) if step >= 100 else (x, y)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 6, 591121),
        220,
        loss_fn,
        classifier=True,
        before=before,
        alter=alter,
    )
    jump = _mean(losses[100:103])
    ctx.check("trained before the relabel", _fell(losses[:100], ratio=0.6))
    ctx.check(
        "the loss jumps at 100 to over 2x its level before",
        jump > 2 * _mean(losses[90:100]),
    )
    ctx.check("the loss falls again after the jump", _mean(losses[-10:]) < 0.6 * jump)
    ctx.check("finite", _finite(losses))


@scenario(
    "sail_loft_luff_tension_huber_regressor",
    "Adagrad",
    "healthy",
    heldout=True,
    note="luff-tension Huber regressor on tensiometer readings with Student-t noise on the "
    "targets; Adagrad under OneCycleLR (no momentum cycling), gradient clipping at 1.0",
)
def h591_sail_loft_luff_tension_huber_regressor(ctx):
    gen = seeded(59113)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=200, cycle_momentum=False
    )
    base = _readings(gen, 64, 10, 591131)

    def noisy():
        for x, y in base:
            chi = torch.distributions.Chi2(torch.tensor(3.0)).sample((64,))
            yield x, y + 0.2 * torch.randn(64, generator=gen) / torch.sqrt(chi / 3.0)

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=0.5)

    losses, _ = _loop(ctx, model, opt, noisy(), 200, loss_fn, clip=1.0, sched=sched)
    ctx.check("the loss fell and stayed finite", _fell(losses, k=20, ratio=0.7))
