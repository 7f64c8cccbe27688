"""Held-out set 576 (``h576_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: spinning-top precession-rate regressor fed raw spin-encoder ticks under fp16 autocast
(amp_overflow, AdamW); besom-binding tension regressor whose hand-written L2 penalty is
subtracted from the loss (loss_divergence, SGD momentum); harmonium reed-voicing regressor whose
warm-up peak lr is typed 2.0 for 0.2 (sharpness_above_limit, plain SGD); fighter-kite line
12-deep tanh MLP initialised with xavier gain 5.3 for 5/3 (exploding_gradients, SGD momentum);
cuckoo-clock bellows pitch regressor whose body group lr is typed 1e-9 (update_ratio_out_of_range,
RMSprop, param groups); real-tennis chase-line classifier fed one shard in raw millimetres
(data_outlier, NAdam); croquet hoop-run BCE classifier whose resumed accumulation step skips the
division and sums the loss (gradient_spike, SGD Nesterov); glockenspiel bar-decay Gaussian NLL
net whose variance head has no softplus clamp (nonfinite, RAdam); rugby-fives glove-strike ReLU
classifier with Adam lr typed 1e-1 for 1e-3 (loss_of_plasticity, Adam); accordion bellows-reversal
classifier whose temperature is stored in milliseconds (softmax_collapse, Adagrad).
Controls: pibroch gracenote tied GRU language model whose loss is averaged over 16 to 480
tokens a batch (alarming-looking, AdamW, warm-up, clipping); frost-flower crystal-mask U-Net
over generated images (BCE, Adam, OneCycleLR); pleacher cut-depth Huber regressor (ASGD,
ReduceLROnPlateau, heavy-tailed noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded, text_batches


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
    clip=None,
    sched=None,
    plateau=None,
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
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
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


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: raw spin-encoder ticks under fp16 autocast ----------------------------------


@scenario(
    family="spinning_top_precession_rate_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Spinning-top precession-rate regressor (GELU MLP on spin rate, tilt, top mass, tip "
    "radius, centre-of-mass height and floor friction, MSE, AdamW, fp16 autocast + "
    "GradScaler). From step 70 a firmware update logs the spin rate as raw encoder ticks per "
    "minute (about 1.5e5) instead of the standardised column: autocast runs fc1 in fp16, "
    "whose range ends at 65504, fc1's output is non-finite (the same batch is finite in "
    "float32) and the loss is non-finite at step 70.",
)
def h576_spinning_top_encoder_ticks(ctx):
    gen = seeded(5761)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57610)
    losses, fc1_bad, bad_x, bad_y = [], [], None, None
    for step in range(120):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 1.5e5 + 4.0e3 * x[:, 0]
            bad_x, bad_y = x, y
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    with torch.no_grad():
        fp32_loss = float(F.mse_loss(model(bad_x), bad_y)) if bad_x is not None else math.nan
    ctx.check("trained finitely before the bug", _fell(losses[:70]))
    ctx.check("fc1 output finite before step 70", not any(fc1_bad[:70]))
    ctx.check("fc1 output non-finite at step 70", len(fc1_bad) > 70 and fc1_bad[70])
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. loss divergence: L2 penalty subtracted from the loss -------------------------------------


@scenario(
    family="broom_squire_besom_bind_tension_tanh_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Broom-squire besom binding-tension regressor (tanh MLP on birch-twig count, bundle "
    "girth, wire gauge, handle taper, twig moisture and binding turns, MSE, SGD momentum 0.9). A "
    "hand-written L2 penalty is added as loss - wd * sum(w**2) (a sign slip), so the "
    "optimiser is pushed to grow every weight: the net fits first, then the weights more "
    "than double and the logged data loss climbs slowly, with no jump, to over twice its best.",
)
def h576_besom_l2_sign_slip(ctx):
    gen = seeded(5762)
    model = _Net(6, hidden=48, act=nn.Tanh)
    wd = 8e-3
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        penalty = sum((p * p).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - wd * penalty

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57620), 300, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


SHARP_ONSET = 5


# -- 3. sharpness above limit: warm-up peak lr typed 2.0 for 0.2 ---------------------------------


@scenario(
    family="harmonium_reed_voicing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHARP_ONSET,
    heldout=True,
    note="Harmonium reed-voicing regressor (tanh MLP on reed length, tongue thickness, curve "
    "depth, bellows pressure, cell volume and brass hardness, predicting the pitch offset; "
    "MSE, plain SGD with a linear warm-up over 40 steps). The warm-up's peak lr is typed 2.0 "
    "for 0.2: as the lr climbs, lr x (top Hessian eigenvalue) passes 2 and the loss blows up.",
)
def h576_harmonium_warmup_peak_typo(ctx):
    gen = seeded(5763)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    batches = _readings(gen, 64, 6, 57630)
    probe = next(batches)
    products = {}

    def before(step):
        if step % 2 == 1 and step < 40:
            products[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, *probe)

    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss, before=before, sched=sched)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    first_cross = crossed[0] if crossed else None
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness below 2 at step 1", products.get(1, 9.0) < 2.0)
    ctx.check("lr x sharpness passes 2 during warm-up", first_cross is not None)
    ctx.check(
        "loss blows up (over 20x its best) after the crossing",
        bool(blown) and first_cross is not None and blown[0] >= first_cross,
    )
    ctx.check(
        "crossing near the declared onset",
        first_cross is not None and abs(first_cross - SHARP_ONSET) <= 2,
    )


# -- 4. exploding gradients: xavier gain typed 5.3 for 5/3 ---------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="kite_line_fighter_glass_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Fighter-kite line-cut regressor (12-deep tanh MLP on manja glass coating, line "
    "gauge, wind speed, crossing angle, pull rate and humidity, predicting cut time; MSE, SGD "
    "momentum 0.9). The init uses xavier_normal_ with gain 5.3 where tanh's gain 5/3 was "
    "meant: the net is in the chaotic regime, the gradient grows through depth from the head "
    "to layers.0 (over 20x larger there than at the last hidden layer); the run stays finite.",
)
def h576_kite_line_xavier_gain_typo(ctx):
    gen = seeded(5764)
    model = _DeepTanh(6, 32, 12, 5.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios = []

    def backprop(step, loss):
        if step < 5:
            g = torch.autograd.grad(
                loss, [model.layers[0].weight, model.layers[-1].weight], retain_graph=True
            )
            ratios.append(float(g[0].norm() / (g[1].norm() + 1e-12)))
        return loss

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57640), 150, F.mse_loss, backprop=backprop
    )
    ctx.check("layers.0 gradient over 20x the last hidden layer's", _median(ratios) > 20)
    ctx.check("gradient norm over 10 early", max(norms[:20]) > 10.0)
    twin = _DeepTanh(6, 32, 12, 5.0 / 3.0)
    x, y = next(_readings(seeded(5764), 64, 6, 57640))
    g = torch.autograd.grad(F.mse_loss(twin(x), y), [twin.layers[0].weight, twin.layers[-1].weight])
    twin_ratio = float(g[0].norm() / (g[1].norm() + 1e-12))
    ctx.check("depth growth over 10x a gain-5/3 twin's", _median(ratios) > 10 * twin_ratio)
    ctx.check("finite throughout", _finite(losses))


# -- 5. update ratio out of range: body group lr typed 1e-9 --------------------------------------


@scenario(
    family="cuckoo_clock_bellows_pitch_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Cuckoo-clock bellows pitch regressor (SiLU MLP on bellows length, pipe bore, weight "
    "drop, leather stiffness, hinge friction and case volume; MSE, RMSprop with two param "
    "groups). The fc1 group's lr is typed 1e-9 for 1e-3: fc1 never moves (relative update "
    "about 1e-9 a step) while the rest trains normally; the loss still falls, slowly.",
)
def h576_cuckoo_bellows_group_typo(ctx):
    gen = seeded(5765)
    model = _Net(6, hidden=48, act=nn.SiLU)
    body = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop([{"params": body, "lr": 1e-9}, {"params": rest, "lr": 1e-3}])
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57650), 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", fc1_move < 1e-5)
    ctx.check("head moved over 5% of its norm", head_move > 0.05)
    ctx.check("finite throughout", _finite(losses))


# -- 6. data outlier: one shard in raw millimetres -----------------------------------------------


@scenario(
    family="real_tennis_chase_line_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Real-tennis chase-line classifier (GELU MLP on ball speed, bounce height, spin, "
    "distance from the back wall, gallery height and side-wall angle, predicting which of "
    "eight chase lines the second bounce falls on; cross-entropy, NAdam, clipping at 5). The "
    "batch at step 120 comes from a shard exported in raw millimetres instead of "
    "standardised units: its loss is over 20x the usual and its gradient over 10x, the "
    "clipped step is absorbed and the run recovers.",
)
def h576_real_tennis_mm_shard(ctx):
    gen = seeded(5766)
    model = _Net(6, hidden=48, out=8, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 400.0 + 900.0, y) if step == 120 else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 8, 57660),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    ctx.check("trained before the shard", _fell(losses[:120]))
    ctx.check(
        "loss at step 120 over 20x the median before", losses[120] > 20 * _median(losses[100:120])
    )
    ctx.check(
        "gradient at step 120 over 10x the median before", norms[120] > 10 * _median(norms[100:120])
    )
    ctx.check(
        "recovers: last 20 under 2x the 20 before the shard",
        _mean(losses[-20:]) < 2 * _mean(losses[100:120]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 7. gradient spike: resumed accumulation step sums instead of averaging -----------------------


class _Bce(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="croquet_hoop_run_wire_bce_classifier",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="Croquet hoop-run classifier (GELU MLP on mallet speed, approach angle, hoop width "
    "clearance, lawn speed, ball spin and distance, predicting whether the ball runs the hoop; "
    "BCE with logits, SGD Nesterov, 4 micro-batches of 16 accumulated per step). The step "
    "resumed from a checkpoint at step 130 rebuilds its loss with reduction='sum' and "
    "without the 1/4: that one step's gradient is 64x the usual while the logged loss is "
    "ordinary; the normal steps after it recover.",
)
def h576_croquet_resume_sum(ctx):
    gen = seeded(5767)
    model = _Bce(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(57670)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    for step in range(200):
        logged = 0.0
        for _ in range(4):
            x = torch.randn(16, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(16, generator=gen)) > 0).float()
            ctx.targets(y.long())
            out = model(x)
            if step == 130:
                micro = F.binary_cross_entropy_with_logits(out, y, reduction="sum")
                logged += float(F.binary_cross_entropy_with_logits(out, y)) / 4
            else:
                micro = F.binary_cross_entropy_with_logits(out, y) / 4
                logged += float(micro.detach())
            micro.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        loss = torch.tensor(logged)
        losses.append(logged)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses[:130]))
    ctx.check(
        "gradient at step 130 over 30x the median before", norms[130] > 30 * _median(norms[100:130])
    )
    ctx.check("logged loss at step 130 ordinary", losses[130] < 3 * _median(losses[100:130]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[110:130]))
    ctx.check("finite throughout", _finite(losses))


# -- 8. nonfinite: Gaussian NLL whose variance head has no clamp -----------------------------------


class _MeanVar(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll_unclamped(out, y):
    mean, var = out[:, 0], out[:, 1]  # the softplus on var was dropped in a refactor
    return (0.5 * torch.log(var) + 0.5 * (y - mean) ** 2 / var).mean()


NLL_NAN_STEP = 52


@scenario(
    family="glockenspiel_bar_decay_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=NLL_NAN_STEP,
    heldout=True,
    note="Glockenspiel bar-decay regressor (SiLU MLP with a mean head and a variance head on "
    "bar length, width, alloy, mallet hardness, strike point and mounting felt, Gaussian NLL, "
    "RAdam). A refactor dropped the softplus on the variance head: as the fit sharpens the "
    "predicted variance is driven toward 0 and below it for some bars, log(var) of a "
    "negative number is NaN and the loss is NaN.",
)
def h576_glockenspiel_var_unclamped(ctx):
    gen = seeded(5768)
    model = _MeanVar(6)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    min_var = []

    def loss_fn(out, y):
        min_var.append(float(out[:, 1].min()))
        return _gauss_nll_unclamped(out, y)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57680, noise=0.02), 200, loss_fn)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("variance positive at start", min_var[0] > 0)
    ctx.check("loss first NaN at the declared step", first_bad == NLL_NAN_STEP)
    ctx.check(
        "a predicted variance is <= 0 at that step",
        first_bad is not None and min_var[first_bad] <= 0,
    )
    ctx.check("finite before", first_bad is not None and _finite(losses[:first_bad]))


# -- 9. loss of plasticity: Adam lr typed 1e-1 for 1e-3 ------------------------------------------


@scenario(
    family="rugby_fives_glove_strike_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Rugby-fives glove-strike classifier (ReLU MLP on hand speed, contact height, glove "
    "padding, ball hardness, wall distance and spin, predicting one of six strokes; "
    "cross-entropy, Adam). The lr is typed 1e-1 for 1e-3 and the first steps push most of "
    "fc2's ReLU units negative on every input: over 40% of act2 is dead by step 50 and stays "
    "dead to the end, and the loss stops improving.",
)
def h576_rugby_fives_dead_relu(ctx):
    gen = seeded(5769)
    model = _Net(6, hidden=64, out=6, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    probe = torch.randn(512, 6, generator=torch.Generator().manual_seed(576900)) * 2.0
    dead = []

    def before(step):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(probe))))
            dead.append(float((h <= 0).all(0).float().mean()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 6, 57690),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("act2 alive at start (under 10% dead)", dead[0] < 0.1)
    ctx.check("over 40% of act2 dead by step 50", dead[50] > 0.4)
    ctx.check("still over 40% dead at the end", dead[-1] > 0.4)
    ctx.check("finite throughout", _finite(losses))


# -- 10. softmax collapse: temperature stored in milliseconds ------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, out, temperature):
        super().__init__(d_in, hidden=48, out=out, act=nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="accordion_bellows_reversal_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Accordion bellows-reversal classifier (ReLU MLP on bellows pressure, stroke speed, "
    "air-button use, reed-block count, phrase length and tempo, predicting one of five "
    "reversal points; cross-entropy, Adagrad). The logit temperature is read from a config "
    "that stores it in milliseconds and divided by 1000 once more (0.001 instead of 1): "
    "the head's logits are scaled 1000x and over 40% of rows' float32 softmax gives the "
    "target exactly 1.0.",
)
def h576_accordion_temperature_ms(ctx):
    gen = seeded(57610)
    model = _TempNet(6, 5, 1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    batches = _classes(gen, 64, 6, 5, 576100)
    probe = next(batches)
    losses, _ = _train(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe[0]).float(), -1)
    collapsed = float((p.gather(1, probe[1][:, None]) == 1.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", collapsed > 0.4)
    ctx.check("loss finite", _finite(losses))


# -- control 1 (alarming-looking): token-averaged loss over 16..480 tokens a batch -----------------


class _TiedGru(nn.Module):
    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.gru(self.emb(idx))[0])


@scenario(
    family="pibroch_gracenote_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Pibroch gracenote language model (tied-weight GRU over a byte stream standing in for "
    "canntaireachd notation; cross-entropy, AdamW, linear warm-up 20 steps then cosine, "
    "clipping at 1). Each batch is padded to 32 positions but holds between 1 and 15 real "
    "sequences of varying length, and the loss is the mean over its real tokens: the token "
    "count varies over tenfold between batches and the per-batch loss jumps around, yet the "
    "run is healthy and the loss falls.",
)
def h576_pibroch_token_mean_control(ctx):
    gen = seeded(57611)
    model = _TiedGru()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    text = text_batches(gen, batch=16, length=32)
    counts = []

    def batches():
        while True:
            x, y = next(text)
            rows = int(torch.randint(1, 16, (1,), generator=gen))
            lengths = torch.randint(16, 33, (16,), generator=gen)
            mask = (torch.arange(32)[None, :] < lengths[:, None]) & (
                torch.arange(16)[:, None] < rows
            )
            counts.append(int(mask.sum()))
            yield x, torch.where(mask, y, -100)

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1), ignore_index=-100)

    losses, _ = _train(ctx, model, opt, batches(), steps, loss_fn, clip=1.0, sched=sched)
    diffs = [abs(b - a) for a, b in zip(losses[100:], losses[101:], strict=False)]
    ctx.check("token count varies over 10x", max(counts) >= 10 * min(counts))
    ctx.check("loss fell", _fell(losses, k=20, ratio=0.8))
    ctx.check(
        "per-batch loss noisy: mean step-to-step jump over 5% in the second half",
        _mean(diffs) > 0.05 * _mean(losses[100:]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- control 2: frost-flower crystal-mask U-Net over generated images ----------------------------


class _UNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.enc1 = nn.Conv2d(1, c, 3, padding=1)
        self.enc2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.mid = nn.Conv2d(2 * c, 4 * c, 3, padding=1)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Conv2d(4 * c, 2 * c, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))
        m = F.relu(self.mid(F.max_pool2d(e2, 2)))
        d2 = F.relu(self.dec2(torch.cat([self.up2(m), e2], 1)))
        d1 = F.relu(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        return self.out(d1)


def _frost_images(gen, batch=16, size=16):
    """Noisy images of thin crystal streaks radiating from a seed; the mask marks the streaks."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        cx, cy = (torch.rand(2, batch, 1, 1, generator=gen) * (size - 6) + 3).unbind(0)
        ang = torch.rand(batch, 3, generator=gen) * math.pi
        mask = torch.zeros(batch, size, size)
        for k in range(3):
            a = ang[:, k, None, None]
            dist = ((xx - cx) * torch.sin(a) - (yy - cy) * torch.cos(a)).abs()
            reach = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() < 6
            mask = torch.maximum(mask, ((dist < 0.8) & reach).float())
        img = mask + 0.4 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], mask[:, None]


@scenario(
    family="frost_flower_crystal_mask_unet",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Frost-flower crystal-mask U-Net (two down-sampling and two up-sampling stages with "
    "skip connections, over generated 16x16 images of sea-ice frost-flower streaks in noise; "
    "BCE with logits, Adam under OneCycleLR). An ordinary healthy segmentation run.",
)
def h576_frost_flower_unet_control(ctx):
    gen = seeded(57612)
    model = _UNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=150)
    losses, _ = _train(
        ctx, model, opt, _frost_images(gen), 150, F.binary_cross_entropy_with_logits, sched=sched
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))


# -- control 3: pleacher cut-depth Huber regressor (ASGD, ReduceLROnPlateau) ----------------------


@scenario(
    family="hedge_layer_pleacher_cut_depth_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hedge-layer pleacher cut-depth regressor (tanh MLP on stem diameter, species, sap "
    "season, lean angle, billhook sharpness and stake spacing; Huber loss, ASGD, "
    "ReduceLROnPlateau). Targets carry heavy-tailed noise (Student-t, 2 degrees of freedom), "
    "which is why Huber is used; an ordinary healthy run.",
)
def h576_pleacher_huber_control(ctx):
    gen = seeded(57613)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    t = torch.distributions.StudentT(2.0)

    def noisy():
        base = _readings(gen, 64, 6, 576130, noise=0.0)
        while True:
            x, y = next(base)
            yield x, y + 0.1 * t.sample((64,)).clamp(-50, 50)

    losses, _ = _train(ctx, model, opt, noisy(), 250, F.huber_loss, plateau=plateau)
    ctx.check("loss fell", _fell(losses, k=20, ratio=0.7))
    ctx.check("finite throughout", _finite(losses))
