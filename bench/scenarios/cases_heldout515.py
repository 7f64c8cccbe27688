"""Held-out set 515 (``h515_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a truffle-dog orchard-row multiple-instance learner (gated attention pool over sniff
readings, separable bags, no weight decay, BCE: the bag logit keeps growing, Adam); a gong-smith
planishing regressor whose fc1 param group has an lr multiplier typed 1e-6 (RMSprop); a
samphire-yield Gaussian-NLL net taking log of gauge readings with no clamp (a dry gauge reads 0,
NAdam); a hurdy-gurdy chien-buzz regressor whose manual loss scale of 65536 is not undone for one
step (Adam's second moment filled, updates stall); a hailstone radar-core Huber regressor fed one
shard of -999 sentinels (AdamW, clipping); a stone-skipping bounce regressor whose curriculum
loss weight is read in percent for one step (SGD Nesterov, clipping); a highline-sway deep tanh
regressor initialised with gain 4 (gradients grow through depth, SGD momentum); a kumihimo braid
pattern classifier whose temperature is read in the wrong unit (Adamax); a geyser-cone sinter
regressor with its L2 penalty subtracted (plain SGD); an alpaca-fleece ReLU regressor whose fc2
bias is initialised at -2 from a gate config (RAdam).

Controls: a velodrome madison hand-sling regressor fed alternating batches from timing gates and
hand stopwatches (Adam, OneCycleLR, clipping); an accordion bellows-shake tied autoencoder (SGD
momentum, two param groups, ReduceLROnPlateau, accumulation 2, Huber, clipping); a hang-drum
tone-field Conv1d classifier (fp16 autocast + GradScaler, AdamW, warm-up + cosine, label
smoothing 0.1, clipping).
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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
    scaler=None,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` multiplies the
    backpropagated loss, ``after(step, loss)`` after the optimizer step; fp16 autocast when a
    GradScaler is given. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            w = weight(step) if weight is not None else 1.0
            total = w * loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
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
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. output logit divergence: gated-attention MIL on separable bags, no weight decay -----------


class _GatedAttentionMIL(nn.Module):
    """Attention-based multiple-instance learner (Ilse et al. 2018): each instance is embedded,
    a gated attention pool (tanh(V h) * sigmoid(U h) -> w) weighs the instances of a bag, and the
    pooled embedding gives the bag's logit."""

    def __init__(self, d_in, hidden=32, att=16):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.att_v = nn.Linear(hidden, att)
        self.att_u = nn.Linear(hidden, att)
        self.att_w = nn.Linear(att, 1)
        self.classifier = nn.Linear(hidden, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, bags):
        h = self.embed(bags)  # (B, N, hidden)
        a = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h)))
        a = torch.softmax(a, dim=1)
        pooled = (a * h).sum(1)
        return self.classifier(pooled).squeeze(-1)


def _sniff_bags(gen, batch, seed, n=12, d=10):
    """Bags of sniff readings along an orchard row: a bag is positive when one of its readings
    comes from a truffle (a clear shift along a scent direction)."""
    g = torch.Generator().manual_seed(seed)
    scent = torch.randn(d, generator=g)
    scent = 8.0 * scent / scent.norm()
    while True:
        x = torch.randn(batch, n, d, generator=gen)
        y = (torch.rand(batch, generator=gen) < 0.5).float()
        where = torch.randint(0, n, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, where] += y[:, None] * scent
        yield x, y


@scenario(
    family="truffle_dog_orchard_row_gated_attention_mil",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("classifier",),
    diverges=None,
    heldout=True,
    note="Truffle-dog orchard-row detector, a hand-written attention-based multiple-instance "
    "learner: each row is a bag of 12 sniff readings, a gated attention pool (tanh(V h) * "
    "sigmoid(U h) -> w, softmax over the bag) pools the instance embeddings and a linear "
    "classifier (init std 0.01) gives the bag's logit (BCE, Adam lr 1e-2). The bags are separable, the config has "
    "weight_decay typed 0 for 1e-2 and no label smoothing: nothing holds the classifier and the "
    "bag logits keep growing to push correct probabilities towards 0 and 1.",
)
def h515_truffle_dog_mil_logits_grow(ctx):
    gen = seeded(5151)
    model = _GatedAttentionMIL(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(_sniff_bags(torch.Generator().manual_seed(1), 128, 51510))[0]
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(probe).abs().mean()))

    with torch.no_grad():
        first = float(model(probe).abs().mean())
    losses, _ = _train(
        ctx,
        model,
        opt,
        _sniff_bags(gen, 32, 51510),
        300,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    late, mid = _mean(peaks[-20:]), _mean(peaks[100:120])
    ctx.check("mean |bag logit| over 20x its start", late > 20 * first)
    ctx.check("still growing over the last two thirds", late > 1.1 * mid)
    ctx.check("loss fell and finite", _fell(losses, ratio=0.3))


# -- 2. update ratio: fc1 group's lr multiplier typed 1e-6 ----------------------------------------


@scenario(
    family="gong_smith_planish_two_group_relu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Gong-smith planishing regressor (ReLU MLP on hammer weight, blow count, bronze "
    "temperature, rim thickness and boss height readings, predicts the pitch shift, MSE, RMSprop "
    "lr 1e-3). The model is trained with two param groups whose lr is base lr times a per-group "
    "multiplier; fc1's multiplier, left from a freeze-then-unfreeze experiment, is typed 1e-6 "
    "for 1.0: fc1 stays at its init while fc2 and the head train.",
)
def h515_gong_smith_fc1_multiplier_typo(ctx):
    gen = seeded(5152)
    model = _Net(12, 48, 1)
    base = 1e-3
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": base * 1e-6},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": base},
        ]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 12, 51520), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(model.fc1.weight, w1) < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("the rest still trained", _fell(losses, ratio=0.9))


# -- 3. nonfinite: log of a gauge reading with no clamp ------------------------------------------


class _LogFeatures(nn.Module):
    """Takes the log of the first ``k`` (positive) readings, passes the rest through."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)


class _GaussianNet(nn.Module):
    def __init__(self, d_in, k, hidden=48):
        super().__init__()
        self.logfeat = _LogFeatures(k)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x)))))
        return self.head(h)


def _gaussian_nll(out, y):
    mu, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (logvar + (y - mu) ** 2 / logvar.exp())).mean()


def _samphire(gen, batch, seed):
    """Saltmarsh readings: salinity, tidal cover hours, sun hours (positive, log-normal) and
    five standardised site features; yield depends on their logs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g) / math.sqrt(8)
    while True:
        pos = torch.exp(0.5 * torch.randn(batch, 3, generator=gen))
        rest = torch.randn(batch, 5, generator=gen)
        z = torch.cat([pos.log(), rest], 1)
        y = torch.tanh(z @ w) + 0.2 * (1 + z[:, 0].abs()) * torch.randn(batch, generator=gen)
        yield torch.cat([pos, rest], 1), y


@scenario(
    family="saltmarsh_samphire_yield_log_feature_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=100,
    heldout=True,
    onset=100,
    note="Saltmarsh samphire-yield Gaussian-NLL SiLU net (salinity, tidal cover and sun hours "
    "enter through a log-feature layer, five site features pass through; the head gives a mean "
    "and a log-variance, NAdam lr 2e-3). The log layer has no clamp; at step 100 a shard from a "
    "dried-out salinity gauge reads exactly 0: log(0) = -inf, fc1's outputs for those rows are "
    "infinite, SiLU and fc2 turn them into NaN and the loss is NaN at step 100.",
)
def h515_samphire_log_zero_gauge(ctx):
    gen = seeded(5153)
    model = _GaussianNet(8, 3)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:8, 0] = 0.0
            with torch.no_grad():
                seen["log"] = bool(torch.isfinite(model.logfeat(x)).all())
                seen["fc1"] = not bool(torch.isfinite(model.fc1(model.logfeat(x))).all())
        return x, y

    losses, _ = _train(ctx, model, opt, _samphire(gen, 64, 51530), 200, _gaussian_nll, alter=alter)
    ctx.check("finite before step 100", _finite(losses[:100]))
    ctx.check("the loss is NaN at step 100", len(losses) == 101 and math.isnan(losses[100]))
    ctx.check("log layer output non-finite at 100", seen.get("log") is False)
    ctx.check("fc1 output non-finite at 100", seen.get("fc1") is True)
    ctx.check("it was learning before", _mean(losses[90:100]) < _mean(losses[:10]))


# -- 4. adam second moment: a manual loss scale not undone for one step ---------------------------


@scenario(
    family="hurdy_gurdy_chien_buzz_onset_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Hurdy-gurdy chien-buzz onset tanh regressor (wheel speed, coup strength, chien "
    "tension, rosin age and string gauge features, MSE, Adam lr 1e-3, betas 0.9/0.999). The "
    "training code scales the loss by 65536 by hand for a half-precision export path and divides "
    "the gradients back before the step; on the step after the checkpoint at step 100 the "
    "unscale is skipped: one gradient 65536x the usual fills Adam's second moment and the updates "
    "afterwards are a small fraction of what they were.",
)
def h515_hurdy_gurdy_loss_scale_not_undone(ctx):
    gen = seeded(5154)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, roots = [], {}
    prev = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        cur = [p.detach().clone() for p in model.parameters()]
        moves.append(float(sum((c - q).norm() ** 2 for c, q in zip(cur, prev, strict=True)) ** 0.5))
        prev[:] = cur
        if step in (99, 100):
            v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
            roots[step] = float(v.sqrt().median())

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 51540, noise=0.1),
        260,
        F.mse_loss,
        weight=lambda s: 65536.0 if s == 100 else 1.0,
        after=after,
    )
    ctx.check("gradient at 100 over 1000x the median", norms[100] > 1000 * _median(norms[:100]))
    ctx.check("median sqrt(v) over 30x after the spike", roots[100] > 30 * roots[99])
    ctx.check(
        "updates after under 0.2x those before",
        _mean(moves[130:170]) < 0.2 * _mean(moves[60:100]),
    )
    ctx.check("finite", _finite(losses))


# -- 5. data outlier: a shard of -999 sentinels ---------------------------------------------------


@scenario(
    family="hailstone_radar_core_sentinel_huber_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Hailstone radar-core size regressor (ReLU MLP on reflectivity, differential "
    "reflectivity, echo-top height, updraft and freezing-level features, Huber loss, AdamW lr "
    "2e-3, clipping at 1). One shard (step 120) comes from a radar whose missing gates were "
    "written as -999 instead of NaN-and-drop: the loss and gradient jump on that batch, clipping "
    "holds the update and the run recovers.",
)
def h515_hailstone_sentinel_shard(ctx):
    gen = seeded(5155)
    model = _Net(10, 48, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :4] = -999.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 51550, noise=0.1),
        240,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    before = _median(losses[100:120])
    ctx.check("loss at 120 over 100x the steps before", losses[120] > 100 * before)
    ctx.check("gradient at 120 over 20x the median", norms[120] > 20 * _median(norms[:120]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[100:120]))
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: curriculum loss weight read in percent -------------------------------------


@scenario(
    family="stone_skipping_bounce_count_nesterov_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Stone-skipping bounce-count GELU regressor (stone mass, flatness, spin, throw angle, "
    "speed and water chop features, MSE on the log count, SGD Nesterov momentum 0.9 lr 0.01, "
    "clipping at 1). At the curriculum switch (step 140) the stage loss weight is read from a "
    "table written in percent: 100 instead of 1.0 for that one step. The logged loss is ordinary; "
    "the gradient is 100x, clipping holds the update.",
)
def h515_stone_skipping_weight_percent(ctx):
    gen = seeded(5156)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 51560, noise=0.1),
        220,
        F.mse_loss,
        weight=lambda s: 100.0 if s == 140 else 1.0,
        clip=1.0,
    )
    ctx.check("gradient at 140 over 30x the median", norms[140] > 30 * _median(norms[:140]))
    ctx.check("logged loss at 140 ordinary", losses[140] < 3 * _median(losses[120:140]))
    ctx.check("trained and finite", _fell(losses))


# -- 7. exploding gradients: a deep tanh stack initialised with gain 4 ---------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width=64, depth=10, gain=5 / 3):
        super().__init__()
        mods = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.Tanh()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


@scenario(
    family="slackline_highline_sway_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.2"),
    diverges=None,
    heldout=True,
    note="Highline sway regressor, a 12-layer tanh MLP on anchor span, webbing stretch, tension, "
    "wind and walker mass features (MSE, SGD momentum 0.9 lr 1e-3). The init helper's gain is "
    "typed 5 for 5/3 (the /3 dropped): the stack is in the chaotic regime, the gradient grows by a constant factor "
    "per layer towards the input and the first layers get gradients hundreds of times the last "
    "hidden layer's; the run ends far above what the same stack with gain 5/3 reaches.",
)
def h515_highline_sway_init_gain(ctx):
    gen = seeded(5157)
    model = _DeepTanh(10, depth=12, gain=5.0)
    ref = _DeepTanh(10, depth=12)
    x0, y0 = next(_readings(torch.Generator().manual_seed(2), 128, 10, 51570))
    for m in (model, ref):
        F.mse_loss(m(x0), y0).backward()
    g_first = float(model.layers[0].weight.grad.norm())
    g_last = float(model.layers[22].weight.grad.norm())
    g_ref = float(ref.layers[0].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 51570), 200, F.mse_loss)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)
    ref.zero_grad(set_to_none=True)
    ref_losses = []
    ref_batches = _readings(torch.Generator().manual_seed(5157), 64, 10, 51570)
    for _ in range(200):
        x, y = next(ref_batches)
        loss = F.mse_loss(ref(x), y)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_losses.append(float(loss))
    ctx.check("first layer's gradient over 100x the last's", g_first > 100 * g_last)
    ctx.check("first gradient over 20x a gain-5/3 model's", g_first > 20 * g_ref)
    ctx.check(
        "ends over 1.5x a gain-5/3 model's loss",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: temperature read in the wrong unit --------------------------------------


@scenario(
    family="kumihimo_braid_pattern_temperature_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kumihimo braid-pattern GELU classifier (bobbin count, tama weight, marudai height, "
    "thread twist and strand crossing features, 6 patterns, cross-entropy, Adamax lr 2e-3). The "
    "logits are divided by a temperature the config gives as 50 (percent, meaning 0.5); the code "
    "reads it as a fraction of 100 twice and uses 0.005: the softmax saturates and most rows' "
    "target probability rounds to exactly 1.0.",
)
def h515_kumihimo_temperature_unit(ctx):
    gen = seeded(5158)
    net = _Net(12, 48, 6, act=nn.GELU)
    temperature = 50 / 100 / 100

    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) / temperature

    model = Tempered()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 51580, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
    )
    x, y = next(_grades(torch.Generator().manual_seed(3), 512, 12, 6, 51580, spread=0.8))
    with torch.no_grad():
        raw = net(x)
    ctx.check("over half the rows at exactly 1.0", collapsed_fraction(raw / temperature, y) > 0.5)
    ctx.check("under 5% at the meant 0.5", collapsed_fraction(raw / 0.5, y) < 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: L2 penalty subtracted ----------------------------------------------------


@scenario(
    family="geyser_cone_sinter_l2_sign_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Geyser-cone sinter growth SiLU regressor (silica concentration, water temperature, "
    "eruption interval, splash radius and cooling features, MSE, plain SGD lr 0.02). The "
    "hand-written L2 term is subtracted instead of added (loss - 0.1 * sum w^2): the weights "
    "grow a little every step and the loss climbs slowly after its early best, with no jump.",
)
def h515_geyser_sinter_l2_sign(ctx):
    gen = seeded(5159)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    wd = 0.1

    def penalised(out, y):
        return F.mse_loss(out, y)

    losses = []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 51590)
    for _ in range(260):
        x, y = next(batches)
        loss = penalised(model(x), y)
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        (loss - wd * l2).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(losses[:100])
    smooth = [_mean(losses[i : i + 10]) for i in range(len(losses) - 9)]
    jumps = max(b / a for a, b in zip(smooth[:-1], smooth[1:], strict=False))
    ctx.check("weights over 1.5x their start", w1 > 1.5 * w0)
    ctx.check("loss over 2x its early best", _mean(losses[-10:]) > 2 * best)
    ctx.check("still climbing", _mean(losses[-10:]) > _mean(losses[-60:-50]))
    ctx.check("no jump: 10-step mean never rises over 1.5x in a step", jumps < 1.5)


# -- 10. loss of plasticity: fc2 bias initialised from a gate config -----------------------------


@scenario(
    family="alpaca_shearing_fleece_dead_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Alpaca-shearing fleece-weight ReLU regressor (age, staple length, micron, body "
    "condition and shearing interval features, MSE, RAdam lr 2e-3). The init helper takes "
    "bias_init from the shared config, where -2.0 is meant for a sigmoid gate: fc2's biases "
    "start at -2, most of act2's ReLUs are never positive, get no gradient and stay dead; the "
    "model stalls near the target variance.",
)
def h515_alpaca_fleece_gate_bias(ctx):
    gen = seeded(51510)
    model = _Net(10, 48, 1)
    nn.init.constant_(model.fc2.bias, -2.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 51600), 200, F.mse_loss)
    x, y = next(_readings(torch.Generator().manual_seed(4), 512, 10, 51600))
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(x))))
    var = float(y.var())
    ctx.check("over 80% of act2's units dead", dead > 0.8)
    ctx.check("stalls above 0.6x the target variance", _mean(losses[-20:]) > 0.6 * var)
    ctx.check("finite", _finite(losses))


# -- controls ---------------------------------------------------------------------------------------


def _madison(gen, batch, seed):
    """Alternating batches: even ones from timing gates (precise), odd ones from hand
    stopwatches (noisy): the per-batch loss swings between two levels."""
    src = _readings(gen, batch, 10, seed, noise=0.05)
    k = 0
    while True:
        x, y = next(src)
        if k % 2 == 1:
            y = y + 0.8 * torch.randn(batch, generator=gen)
        k += 1
        yield x, y


@scenario(
    family="velodrome_madison_handsling_two_source_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Velodrome madison hand-sling exit-speed SiLU regressor (rider masses, entry speeds, "
    "arm extension, banking and lap-split features, MSE, Adam with OneCycleLR to 3e-3, clipping "
    "at 1). The loader mixes two sources half and half, alternating batches: timing-gate data "
    "(noise 0.05) and hand-stopwatch data (noise 0.8), so the per-batch loss swings between two "
    "levels while both fall. Healthy.",
)
def h515_velodrome_two_source_control(ctx):
    gen = seeded(51511)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    losses, _ = _train(
        ctx, model, opt, _madison(gen, 64, 51610), steps, F.mse_loss, clip=1.0, sched=sched
    )
    gates, watches = losses[0::2], losses[1::2]
    ctx.check("gate batches fell", _fell(gates, ratio=0.3))
    ctx.check("stopwatch batches fell", _fell(watches, ratio=0.9))
    ctx.check(
        "two levels: stopwatch over 5x gates", _median(watches[-30:]) > 5 * _median(gates[-30:])
    )


class _TiedAutoencoder(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return F.linear(h, self.enc.weight.t(), self.dec_bias)


def _bellows(gen, batch, seed, d=16, k=4):
    """Bellows-shake pressure snapshots on a low-dimensional manifold plus sensor noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(k, d, generator=g) / math.sqrt(k)
    while True:
        z = torch.randn(batch, k, generator=gen)
        x = z @ basis + 0.05 * torch.randn(batch, d, generator=gen)
        yield x, x


@scenario(
    family="accordion_bellows_shake_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Accordion bellows-shake tied autoencoder (16 pressure taps, a tanh code of 6, the "
    "decoder uses the encoder's weight transposed; Huber loss, SGD momentum 0.9, two param "
    "groups (weights lr 0.05, decoder bias lr 0.02), ReduceLROnPlateau, accumulation 2, clipping "
    "at 2). Healthy.",
)
def h515_accordion_tied_ae_control(ctx):
    gen = seeded(51512)
    model = _TiedAutoencoder()
    opt = torch.optim.SGD(
        [
            {"params": model.enc.parameters(), "lr": 0.05},
            {"params": [model.dec_bias], "lr": 0.02},
        ],
        momentum=0.9,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _bellows(gen, 32, 51620),
        200,
        F.huber_loss,
        clip=2.0,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("loss fell under 0.5x", _fell(losses, ratio=0.5))


class _ToneConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x[:, None]))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _tone_fields(gen, batch, classes=5, n=64):
    """Tap recordings of a hang drum's tone fields: a decaying partial per field, plus noise."""
    t = torch.arange(n) / n
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 3.0 + 2.5 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * f[:, None] * t + phase) * torch.exp(-3 * t)
        yield x + 0.3 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="hang_drum_tone_field_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Hang-drum tone-field Conv1d classifier (tap recordings, 5 fields, cross-entropy with "
    "label smoothing 0.1, fp16 autocast + GradScaler, AdamW lr 1e-2 weight decay 1e-2, linear "
    "warm-up 20 steps then cosine, clipping at 1). Healthy.",
)
def h515_hang_drum_fp16_control(ctx):
    gen = seeded(51513)
    model = _ToneConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    steps, warm = 200, 20

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _train(
        ctx,
        model,
        opt,
        _tone_fields(gen, 32),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell under 0.6x and finite", _fell(losses, ratio=0.6))
