"""Held-out set 573 (``h573_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: lampwork bead mandrel-temperature regressor fed a pyrometer firmware's raw photon counts
under fp16 autocast (amp_overflow, AdamW); pumice-raft drift regressor whose warm-up lambda has
no min(1, .) so the lr keeps growing past 2/sharpness (sharpness_above_limit, plain SGD);
geyser sinter-cone 10-deep LeakyReLU MLP initialised with gain 1.4 (exploding_gradients, SGD
momentum); pipa lute fret-buzz BCE classifier whose fret-embedding group reads a misspelt lr key
and gets lr 0 (update_ratio_out_of_range, Adagrad); lobster-trap soak regressor hit by one
depth-sounder 9999 sentinel (data_outlier, RMSprop); coracle paddle-stroke Gaussian-NLL regressor
whose loss is divided by a stale valid-count of 1 for one step (gradient_spike, SGD Nesterov);
kombucha SCOBY pH net whose row normalisation takes 0/0 on a disconnected probe (nonfinite,
Adam); hurling sliotar strike classifier with NAdam lr typed 3e-1 (loss_of_plasticity, NAdam);
sandpiper flock-turn cosine classifier with its scale typed 1000 for 10 (softmax_collapse,
RAdam); salt-marsh creek silt regressor whose calibration offset accumulates every step
(loss_divergence, ASGD).
Controls: outrigger-canoe crew stroke classifier trained with a hand-written LAMB at batch 2048
with an 80-step warm-up, zero-init biases updated at ratios near 1 in the first steps
(alarming-looking, LAMB); fumarole plume-height Kolmogorov-Arnold network with learnable RBF
edge functions (Huber, Adamax, ReduceLROnPlateau, noisy readings); Hardanger fiddle drone-string
conv1d classifier (Adam, OneCycleLR, label smoothing, gradient accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


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


def _first_bad(losses):
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


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
    attach=True,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    if attach:
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
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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


def _top_eig(model, loss_fn, x, y, iters=12):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: a pyrometer firmware that reports raw photon counts -----------------------


@scenario(
    family="lampwork_bead_mandrel_flame_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Lampwork bead mandrel-temperature regressor (GELU MLP on torch oxygen flow, propane "
    "flow, flame radiance, rod diameter, turn rate and bead mass, MSE, AdamW, fp16 autocast + "
    "GradScaler). At step 90 the pyrometer is swapped for one whose firmware reports flame "
    "radiance as raw photon counts (about 1.2e5) instead of the standardised column: autocast "
    "runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the same batch "
    "is finite in float32) and the loss is non-finite at step 90.",
)
def h573_lampwork_photon_counts(ctx):
    gen = seeded(5731)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57310)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 2] = 1.2e5 + 8.0e3 * x[:, 2]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
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
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 90", _first_bad(losses) == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 2. sharpness above limit: warm-up lambda with no min(1, .) ---------------------------------

_PUMICE_ONSET = 24


@scenario(
    family="pumice_raft_drift_warmup_no_min_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=_PUMICE_ONSET,
    heldout=True,
    note="Pumice-raft drift-speed regressor (tanh MLP on wind, surface current, swell, raft "
    "area, clast size and water temperature, MSE, plain SGD with a LambdaLR warm-up). The "
    "warm-up lambda is written (step + 1) / 20 without min(1, .): after the warm-up the lr "
    "keeps growing linearly, lr x top Hessian eigenvalue (measured in the run by power "
    "iteration) passes 2 and the loss blows up.",
)
def h573_pumice_warmup_no_min(ctx):
    gen = seeded(5732)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    batches = _readings(gen, 128, 6, 57320)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _train(ctx, model, opt, batches, 160, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (
            i
            for i, v in enumerate(losses)
            if i > 0 and (not math.isfinite(v) or v > 20 * min(losses[:i]))
        ),
        None,
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check(f"first crossing at step {_PUMICE_ONSET}", crossed[:1] == [_PUMICE_ONSET])
    ctx.check("crossing after the 20-step warm-up", bool(crossed) and crossed[0] > 20)
    ctx.check("trained first", min(ok[: _PUMICE_ONSET + 1]) < 0.7 * _mean(ok[:5]))


# -- 3. exploding gradients: 10-deep LeakyReLU MLP initialised with gain 1.4 ---------------------


class _SinterDeep(nn.Module):
    def __init__(self, d_in=8, dim=48, depth=10, gain=1.4):
        super().__init__()
        sizes = [d_in] + [dim] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(dim, 1)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, a=0.1, nonlinearity="leaky_relu")
            with torch.no_grad():
                layer.weight.mul_(gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.1)
        return self.head(x).squeeze(-1)


@scenario(
    family="sinter_cone_geyser_deep_leaky_gain_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Geyser sinter-cone growth regressor (10-deep LeakyReLU MLP on silica content, "
    "discharge, water temperature, eruption interval, pool pH, wind, algae cover and season, "
    "MSE, SGD momentum). The init helper multiplies every Kaiming-initialised weight by "
    "gain=1.4 (a value meant for a different activation): the backward signal grows by about "
    "1.4 per layer towards the input, the gradient at layers.0's output is over 10x that "
    "at the last layer's at init and the run blows up.",
)
def h573_sinter_cone_init_gain(ctx):
    gen = seeded(5733)
    model = _SinterDeep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = _readings(gen, 64, 8, 57330)
    x, y = next(batches)
    back = {}
    hooks = [
        model.layers[i].register_full_backward_hook(
            lambda m, gi, go, i=i: back.__setitem__(i, float(go[0].norm()))
        )
        for i in (0, len(model.layers) - 1)
    ]
    F.mse_loss(model(x), y).backward()
    for h in hooks:
        h.remove()
    ratio = back[0] / back[len(model.layers) - 1]
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("backward signal at layers.0 over 10x the last layer's at init", ratio > 10)
    ctx.check("loss blows up to non-finite", not _finite(losses) and max(ok) > 100 * ok[0])


# -- 4. update ratio: the fret-embedding group reads a misspelt lr key and gets 0 ----------------


class _PipaNet(nn.Module):
    def __init__(self, frets=24, d_emb=8, d_num=5, hidden=48):
        super().__init__()
        self.fret_embed = nn.Embedding(frets, d_emb)
        self.fc1 = nn.Linear(d_emb + d_num, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        fret, num = x
        h = torch.cat([self.fret_embed(fret), num], 1)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(h))))).squeeze(-1)


def _pipa_batches(gen, batch=64, seed=57340):
    g = torch.Generator().manual_seed(seed)
    fret_effect = torch.randn(24, generator=g)
    w = torch.randn(5, generator=g)
    while True:
        fret = torch.randint(0, 24, (batch,), generator=gen)
        num = torch.randn(batch, 5, generator=gen)
        logit = 1.5 * fret_effect[fret] + num @ w * 0.6
        y = (logit + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield (fret, num), y


@scenario(
    family="pipa_lute_fret_embedding_frozen_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fret_embed",),
    diverges=None,
    heldout=True,
    note="Pipa lute fret-buzz classifier (fret-position embedding plus string gauge, plucking "
    "force, nail angle, humidity and fret height into a ReLU MLP, BCE, Adagrad with two param "
    "groups). The embedding group's lr is read as cfg.get('embedding_lr', 0.0) while the "
    "config spells it 'embed_lr': the group gets lr 0, fret_embed never moves (update ratio "
    "exactly 0) while the MLP trains around random fret vectors.",
)
def h573_pipa_embed_lr_key_typo(ctx):
    gen = seeded(5734)
    model = _PipaNet()
    cfg = {"lr": 0.05, "embed_lr": 0.05}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fret_embed.")]
    opt = torch.optim.Adagrad(
        [
            {"params": rest, "lr": cfg["lr"]},
            {"params": list(model.fret_embed.parameters()), "lr": cfg.get("embedding_lr", 0.0)},
        ]
    )
    emb0, fc2_0 = _flat(model.fret_embed), _flat(model.fc2)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _pipa_batches(gen),
        200,
        F.binary_cross_entropy_with_logits,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fret_embed never moved", bool(torch.equal(_flat(model.fret_embed), emb0)))
    ctx.check(
        "fc2 moved over 1e-2 relative",
        float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm()) > 1e-2,
    )
    ctx.check("embedding group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.95))


# -- 5. data outlier: one depth-sounder 9999 sentinel in one batch ------------------------------


@scenario(
    family="lobster_trap_soak_depth_glitch_rmsprop_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Lobster-trap catch regressor (SiLU MLP on soak time, depth, bottom temperature, "
    "bait age, tide phase, swell and trap spacing, MSE, RMSprop, clipping at 1). At step 120 "
    "one haul in the batch comes from a depth sounder that writes its no-reading sentinel "
    "9999 into the depth column: that sample's prediction and loss are enormous, the batch "
    "loss and gradient jump, clipping bounds the update and the run recovers.",
)
def h573_lobster_depth_sentinel(ctx):
    gen = seeded(5735)
    model = _Net(7, hidden=48, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step != 120:
            return x, y
        x = x.clone()
        x[17, 1] = 9999.0
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, 57350),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    before = _median(losses[100:120])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 100x at step 120", losses[120] > 100 * before)
    ctx.check("gradient over 50x at step 120", norms[120] > 50 * _median(norms[100:120]))
    ctx.check("only step 120 jumps", max(losses[100:120] + losses[121:140]) < 10 * before)
    ctx.check("recovers", _mean(losses[-20:]) < 2 * before)
    ctx.check("trained before", before < 0.7 * _mean(losses[:10]))


# -- 6. gradient spike: loss divided by a stale valid-count of 1 for one step --------------------


class _CoracleNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))
        return out[:, 0], F.softplus(out[:, 1]) + 1e-3


@scenario(
    family="coracle_paddle_stroke_aux_weight_nesterov_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="Coracle paddle-stroke speed regressor (tanh MLP on paddle depth, figure-of-eight "
    "width, stroke rate, load, current and hide-covering wetness, Gaussian NLL with a learned "
    "variance, SGD Nesterov, clipping at 2). The loss is summed over valid rows and divided by "
    "a valid-row counter; at step 140 the counter is stale from the last shard's tail and "
    "reads 1 instead of 256, so that one backpropagated loss is 256x: the gradient bursts, the "
    "logged (mean) loss is ordinary and clipping bounds the update.",
)
def h573_coracle_stale_valid_count(ctx):
    gen = seeded(5736)
    model = _CoracleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _readings(gen, 256, 6, 57360, noise=0.2)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(220):
        x, y = next(batches)
        mu, var = model(x)
        per_row = F.gaussian_nll_loss(mu, y, var, reduction="none")
        n_valid = 1 if step == 140 else len(y)
        total = per_row.sum() / n_valid
        loss = per_row.detach().mean()
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 140", norms[140] > 100 * _median(norms[120:140]))
    ctx.check(
        "logged loss ordinary at 140",
        abs(losses[140] - _mean(losses[130:140])) < 0.5 + 0.5 * abs(_mean(losses[130:140])),
    )
    ctx.check("trained", _mean(losses[-10:]) < _mean(losses[:10]) - 0.3)


# -- 7. nonfinite: row normalisation with var = E[x^2] - E[x]^2 and no eps -----------------------


class _RowNorm(nn.Module):
    """Standardises each probe window by its own mean and spread (no eps)."""

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        var = (x * x).mean(1, keepdim=True) - m * m
        return (x - m) / torch.sqrt(var)


class _ScobyNet(nn.Module):
    def __init__(self, window=16, extra=3, hidden=48):
        super().__init__()
        self.window = window
        self.rownorm = _RowNorm()
        self.fc1 = nn.Linear(window + 1 + extra, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        trace, rest = x[:, : self.window], x[:, self.window :]
        h = torch.cat([self.rownorm(trace), trace.mean(1, keepdim=True), rest], 1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(h))))).squeeze(-1)


@scenario(
    family="kombucha_scoby_ph_stuck_probe_rownorm_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("rownorm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Kombucha SCOBY fermentation-day regressor (a 16-sample pH probe window standardised "
    "per row, plus its mean, tea strength, sugar and room temperature, GELU MLP, MSE, Adam). "
    "The row normalisation computes var = E[x^2] - E[x]^2 and divides by sqrt(var) with no "
    "eps; at step 70 one jar's probe is disconnected and its window reads all zeros: 0/0 = "
    "NaN in rownorm and the loss is NaN at step 70.",
)
def h573_kombucha_probe_zero_window(ctx):
    gen = seeded(5737)
    model = _ScobyNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    bad = {}

    def batches():
        step = 0
        while True:
            level = 3.0 + torch.rand(64, 1, generator=gen)
            slope = 0.05 * torch.randn(64, 1, generator=gen)
            trace = level + slope * torch.arange(16) + 0.05 * torch.randn(64, 16, generator=gen)
            rest = torch.randn(64, 3, generator=gen)
            y = 2.0 * (level[:, 0] - 3.5) + 0.5 * rest[:, 0]
            x = torch.cat([trace, rest], 1)
            if step == 70:
                x[9, :16] = 0.0
                bad["x"] = x
            step += 1
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 130, F.mse_loss)
    ctx.check("loss first non-finite at step 70", _first_bad(losses) == 70)
    if "x" in bad:
        with torch.no_grad():
            out = model.rownorm(bad["x"][:, :16])
        ctx.check("rownorm output non-finite on that batch", not bool(torch.isfinite(out).all()))
    else:
        ctx.check("rownorm output non-finite on that batch", False)
    ctx.check("trained before step 70", _mean(losses[60:70]) < 0.7 * _mean(losses[:10]))


# -- 8. loss of plasticity: NAdam lr typed 3e-1 for 3e-3 kills the ReLUs --------------------------


@scenario(
    family="hurling_sliotar_strike_lr_typo_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Hurling sliotar strike-type classifier (ReLU MLP on hurley swing speed, contact "
    "height, bas angle, ball spin, wrist roll and follow-through, cross-entropy over 5 strike "
    "types, NAdam). The lr is typed 1.5e-1 for 1.5e-3: the first large steps push fc2's "
    "pre-activations negative for every input, over 40% of act2's units die and never come "
    "back, and the loss stalls without blowing up.",
)
def h573_hurling_nadam_lr_typo(ctx):
    gen = seeded(5738)
    model = _Net(6, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.NAdam(model.parameters(), lr=0.15)
    batches = _classes(gen, 64, 6, 5, 57380)
    probe = next(batches)[0]

    def dead():
        with torch.no_grad():
            a = model.act2(model.fc2(model.act1(model.fc1(probe))))
        return float((a <= 0).all(0).float().mean())

    d0 = dead()
    fracs = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s, loss: fracs.append(dead()),
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("act2 under 10% dead at init", d0 < 0.1)
    ctx.check("act2 over 40% dead at the end", fracs[-1] > 0.4)
    ctx.check("dead units stay dead (over 40% from step 80 on)", min(fracs[80:]) > 0.4)
    ctx.check("no blow-up", max(losses) < 20 * losses[0])


# -- 9. softmax collapse: cosine classifier scale typed 1000 for 10 -----------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, k, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()


class _FlockNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, k=6, scale=10.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, k, scale)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@scenario(
    family="sandpiper_flock_turn_cosine_scale_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sandpiper flock-turn classifier (ReLU MLP with a cosine-similarity head on flock "
    "heading, speed, density, tide height, wind, light, raptor distance and flock size, "
    "cross-entropy over 6 turn directions, RAdam). The cosine head's scale is typed 1000 for "
    "10.00: logits span +-1000, the softmax saturates, over 40% of rows give their target "
    "probability exactly 1.0 in float32 and the wrong rows carry huge losses.",
)
def h573_sandpiper_cosine_scale_typo(ctx):
    gen = seeded(5739)
    model = _FlockNet(scale=1000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = _classes(gen, 64, 8, 6, 57390)
    probe_x, probe_y = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe_x).float(), -1)
    exact = float((p.gather(1, probe_y[:, None]) == 1.0).float().mean())
    ctx.check("finite throughout", _finite(losses))
    ctx.check("scale is 1000", model.head.scale == 1000.0)
    ctx.check("over 40% of rows' target probability exactly 1.0", exact > 0.4)


# -- 10. loss divergence: a calibration gain that compounds every step ------------------------


@scenario(
    family="salt_marsh_creek_silt_drift_target_asgd_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Salt-marsh creek silt-deposition regressor (tanh MLP on tide range, creek width, "
    "vegetation cover, flow speed, turbidity and distance to sea, MSE, ASGD). From step 60 "
    "the silt-trap recalibration is applied as gain *= 1.006 on every batch instead of "
    "gain = 1.006: the targets drift a little further each step, the model lags behind and "
    "the loss climbs slowly, with no jump, to well over twice its best.",
)
def h573_salt_marsh_compounding_gain(ctx):
    gen = seeded(57310)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01, t0=1e9)
    base = _readings(gen, 64, 6, 573100)
    state = {"gain": 1.0}

    def batches():
        step = 0
        while True:
            x, y = next(base)
            if step >= 60:
                state["gain"] *= 1.006
            step += 1
            yield x, y * state["gain"]

    losses, _ = _train(ctx, model, opt, batches(), 280, F.mse_loss)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("target gain compounded past 3x", state["gain"] > 3.0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- control 1 (alarming-looking): LAMB at batch 2048 with a long warm-up -------------------------


class _Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020): Adam direction, layer-wise trust ratio ||w|| / ||update||;
    biases (1-d tensors) are excluded from the trust ratio and weight decay, as usual."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["t"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["t"])
                v_hat = st["v"] / (1 - b2 ** st["t"])
                r = m_hat / (v_hat.sqrt() + group["eps"])
                trust = 1.0
                if p.dim() > 1:
                    r = r + group["weight_decay"] * p
                    w_norm, r_norm = float(p.norm()), float(r.norm())
                    if w_norm > 0 and r_norm > 0:
                        trust = w_norm / r_norm
                p.add_(r, alpha=-group["lr"] * trust)


@scenario(
    family="outrigger_canoe_crew_stroke_lamb_large_batch_classifier",
    optimizer="LAMB",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Outrigger-canoe crew stroke-phase classifier (ReLU MLP with zero-initialised biases on "
    "paddle angle, blade depth, seat-to-seat timing, hull pitch, ama lift, heart rates and "
    "stroke rate, cross-entropy over 6 phases, a hand-written LAMB at batch 2048, linear "
    "warm-up over 80 of 220 steps to lr 0.02, then cosine decay). The biases are excluded from "
    "the trust ratio as usual and start at 0, so their update-to-weight ratios are near 1 or "
    "above in the first steps (and every weight matrix moves by lr of its norm each step), "
    "which looks alarming. Healthy.",
)
def h573_outrigger_lamb_warmup(ctx):
    gen = seeded(57311)
    model = _Net(12, hidden=128, out=6, act=nn.ReLU)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    opt = _Lamb(model.parameters(), lr=0.02)
    warm, total = 80, 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    ratios = []
    biases = [p for p in model.parameters() if p.dim() == 1]

    def before(step):
        ratios.append([p.detach().clone() for p in biases])

    def after(step, loss):
        prev = ratios[-1]
        ratios[-1] = max(
            float((p.detach() - q).norm() / (q.norm() + 1e-12))
            for p, q in zip(biases, prev, strict=True)
        )

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 2048, 12, 6, 573110, spread=0.8),
        total,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
        sched=sched,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("a bias update ratio over 0.5 in steps 1-5", max(ratios[1:6]) > 0.5)
    ctx.check("bias update ratios settle under 0.05 after warm-up", max(ratios[100:]) < 0.05)


# -- control 2: Kolmogorov-Arnold network with learnable RBF edge functions -----------------------


class _RBFKANLayer(nn.Module):
    """Each edge i->j carries its own function: a SiLU base term plus a learnable mix of
    Gaussian bumps on a fixed grid (FastKAN-style)."""

    def __init__(self, d_in, d_out, grid=8, lo=-2.5, hi=2.5):
        super().__init__()
        self.register_buffer("centers", torch.linspace(lo, hi, grid))
        self.width = (hi - lo) / (grid - 1)
        self.norm = nn.LayerNorm(d_in)
        self.spline = nn.Linear(d_in * grid, d_out, bias=False)
        self.base = nn.Linear(d_in, d_out)
        nn.init.normal_(self.spline.weight, std=0.1 / math.sqrt(d_in))

    def forward(self, x):
        z = self.norm(x)
        phi = torch.exp(-(((z[..., None] - self.centers) / self.width) ** 2))
        return self.base(F.silu(z)) + self.spline(phi.flatten(-2))


class _PlumeKAN(nn.Module):
    def __init__(self, d_in=7, hidden=12):
        super().__init__()
        self.kan1 = _RBFKANLayer(d_in, hidden)
        self.kan2 = _RBFKANLayer(hidden, 1)

    def forward(self, x):
        return self.kan2(self.kan1(x)).squeeze(-1)


@scenario(
    family="fumarole_vent_plume_height_rbf_kan_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fumarole plume-height regressor (two-layer Kolmogorov-Arnold network: every edge "
    "has its own learnable function, a SiLU base plus 8 Gaussian RBF bumps; on vent "
    "temperature, gas flux, SO2 fraction, wind speed, air humidity, pressure and vent "
    "diameter, Huber loss, Adamax, ReduceLROnPlateau on a 10-step mean; noisy readings with "
    "occasional gusty batches). Healthy.",
)
def h573_fumarole_rbf_kan(ctx):
    gen = seeded(57312)
    model = _PlumeKAN()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=4)
    window = []

    def after(step, loss):
        window.append(loss)
        if len(window) == 10:
            plateau.step(_mean(window))
            window.clear()

    def gusty(step, x, y):
        if step % 23 == 7:
            return x, y + 0.3 * torch.randn(y.shape, generator=gen)
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, 573120, noise=0.1),
        250,
        lambda a, b: F.huber_loss(a, b, delta=0.5),
        alter=gusty,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.5))


# -- control 3: conv1d classifier, Adam, OneCycleLR, label smoothing, accumulation, clipping ------


class _DroneConv(nn.Module):
    def __init__(self, channels=3, k=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, k)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _drone_traces(gen, batch=32, length=48, k=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        base = torch.sin(freq[:, None] * t + phase)
        x = torch.stack(
            [base, base * (0.5 + 0.1 * y[:, None]), torch.cos(freq[:, None] * t + phase)], 1
        )
        yield x + 0.4 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="hardanger_fiddle_drone_onecycle_accum_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hardanger fiddle drone-string classifier (two-layer conv1d over 48 samples of bridge "
    "pickup, sympathetic-string pickup and bow pressure, cross-entropy over 4 drone tunings "
    "with label smoothing 0.1, Adam under OneCycleLR to 3e-3, gradient accumulation over 2 "
    "micro-batches of 32, clipping at 1; noisy pickups). Healthy.",
)
def h573_hardanger_onecycle_accum(ctx):
    gen = seeded(57313)
    model = _DroneConv()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    steps, accum = 160, 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    batches = _drone_traces(gen)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / accum).backward()
            logged = logged + loss.detach() / accum
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(logged))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.7))
