"""Held-out set 577 (``h577_``): 10 faults over 10 causes and 3 healthy controls.

Faults: udu-drum port-resonance regressor fed clay-wall thickness in raw micrometres under fp16
autocast (amp_overflow, AdamW); columnar-joint basalt column-spacing regressor with SGD lr typed
4.0 for 0.04 (sharpness_above_limit, plain SGD); darts flight-grouping 20-deep tanh MLP whose
init multiplies He's gain by tanh's (exploding_gradients, SGD momentum); farrier rasp-stroke
regressor whose fc1 group lr is read from a misspelt config key, 0.0 (update_ratio_out_of_range,
RMSprop, param groups); archery nock-point classifier fed one shard in raw millimetres
(data_outlier, NAdam); wing-foil pump-stall BCE classifier whose resumed accumulation step reads
the divisor 4 as 4% (gradient_spike, SGD Nesterov); mud-crack spacing Gaussian-NLL net whose log
stem meets a zero gap (nonfinite, RAdam); steel-pan dimple-tuning regressor whose loss weight is
1e5 for one step (adam_second_moment_poisoned, Adam); mbira buzz-key classifier whose
temperature is read in seconds from a milliseconds field (softmax_collapse, Adagrad); ball-mill
charge-wear regressor whose hand-written decoupled weight decay has its sign flipped
(loss_divergence, Adamax).
Controls: kayamba shake-rhythm ReLU classifier whose planned second phase raises the lr 3x at
step 120 (alarming-looking, SGD momentum, label smoothing, clipping); ocarina fipple-melody
Hugging Face Llama decoder from a tiny config (tied embeddings, AdamW, warm-up + cosine,
clipping); slide-whistle plunger-pitch Huber regressor (Adadelta, ReduceLROnPlateau, gradient
accumulation, heavy-tailed noisy targets).
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
    after=None,
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
        if after is not None:
            after(step)
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


def _top_eig(model, loss_fn, x, y, iters=20):
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


# -- 1. amp overflow: clay-wall thickness in raw micrometres under fp16 autocast -----------------

AMP_ONSET = 75


@scenario(
    family="udu_drum_port_resonance_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Udu-drum port-resonance regressor (GELU MLP on body volume, side-port diameter, "
    "clay-wall thickness, neck length, firing temperature and slip density, predicting the "
    "Helmholtz pitch offset; MSE, AdamW, fp16 autocast + GradScaler). From step 75 a new "
    "caliper export writes the wall thickness in raw micrometres (about 1.2e5) instead of the "
    "standardised column: under autocast fc1 runs in fp16, whose range ends at 65504, so "
    "the column overflows when autocast casts fc1's input, fc1's output is non-finite (the same batch is finite in float32) and the loss is non-finite.",
)
def h577_udu_drum_micrometre_wall(ctx):
    gen = seeded(5771)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 57710)
    losses, fc1_bad, bad = [], [], None
    for step in range(130):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 2] = 1.2e5 + 5.0e3 * x[:, 2]
            bad = (x, y)
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
        fp32_loss = float(F.mse_loss(model(bad[0]), bad[1])) if bad is not None else math.nan
    ctx.check("trained finitely before the bug", _fell(losses[:AMP_ONSET]))
    ctx.check("fc1 output finite before the onset", not any(fc1_bad[:AMP_ONSET]))
    ctx.check("fc1 output non-finite at the onset", len(fc1_bad) > AMP_ONSET and fc1_bad[-1])
    ctx.check("loss first non-finite at the onset", first_bad == AMP_ONSET)
    ctx.check("same batch finite in float32", math.isfinite(fp32_loss))


# -- 2. sharpness above limit: warm-up peak lr typed 4.0 for 0.04 -------------------------------

SHARP_ONSET = 10


@scenario(
    family="columnar_joint_basalt_spacing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=SHARP_ONSET,
    heldout=True,
    note="Columnar-joint basalt column-spacing regressor (tanh MLP on flow thickness, cooling "
    "rate, water ingress, silica content, vesicle fraction and ground slope, predicting the "
    "column width; MSE, plain SGD with a linear warm-up over 100 steps). The warm-up's peak "
    "lr is typed 4.0 for 0.04: as the lr climbs, lr x (top Hessian eigenvalue) passes 2 "
    "around step 10 (the intended peak stays well below) and the loss blows up.",
)
def h577_columnar_joint_warmup_peak_typo(ctx):
    gen = seeded(5772)
    model = _Net(6, hidden=32, act=nn.Tanh)
    peak = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    batches = _readings(gen, 64, 6, 57720)
    probe = next(batches)
    products, eigs = {}, {}

    def before(step):
        if step < 40:
            eigs[step] = _top_eig(model, F.mse_loss, *probe)
            products[step] = opt.param_groups[0]["lr"] * eigs[step]

    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss, before=before, sched=sched)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    first_cross = crossed[0] if crossed else None
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(losses)]
    ctx.check("lr x sharpness below 2 at step 0", products.get(0, 9.0) < 2.0)
    ctx.check("intended peak 0.04 below 2/sharpness", 0.04 * eigs.get(0, 99.0) < 2.0)
    ctx.check(
        "crossing near the declared onset",
        first_cross is not None and abs(first_cross - SHARP_ONSET) <= 2,
    )
    ctx.check(
        "loss blows up (non-finite or over 20x its best) after the crossing",
        bool(blown) and first_cross is not None and blown[0] >= first_cross,
    )


# -- 3. exploding gradients: He gain multiplied by tanh's gain -----------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


def _depth_ratio(model, loss):
    g = torch.autograd.grad(
        loss, [model.layers[0].weight, model.layers[-1].weight], retain_graph=True
    )
    return float(g[0].norm() / (g[1].norm() + 1e-12))


@scenario(
    family="darts_flight_grouping_deep_tanh_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Darts flight-grouping regressor (20-deep tanh MLP on throw speed, release angle, "
    "flight shape, barrel weight, shaft length and oche distance, predicting the grouping "
    "radius; MSE, SGD momentum 0.9). The init helper multiplies He's gain sqrt(2) by tanh's "
    "gain 5/3 (std 2.36/sqrt(fan_in)): the net is in the chaotic regime and the gradient "
    "grows through depth, over 10x larger at layers.0 than at the last hidden layer.",
)
def h577_darts_flight_double_gain(ctx):
    gen = seeded(5773)
    gain = math.sqrt(2.0) * 5.0 / 3.0
    model = _DeepTanh(6, 32, 20, gain)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    ratios = []

    def backprop(step, loss):
        if step < 5:
            ratios.append(_depth_ratio(model, loss))
        return loss

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 57730), 150, F.mse_loss, backprop=backprop
    )
    twin = _DeepTanh(6, 32, 20, 1.0)
    x, y = next(_readings(seeded(5773), 64, 6, 57730))
    twin_ratio = _depth_ratio(twin, F.mse_loss(twin(x), y))
    ctx.check("layers.0 gradient over 10x the last hidden layer's", _median(ratios) > 10)
    ctx.check("depth growth over 10x a gain-1 twin's", _median(ratios) > 10 * twin_ratio)
    ctx.check("gradient norm over 5 early", max(norms[:20]) > 5.0)


# -- 4. update ratio out of range: fc1 group lr from a misspelt config key -----------------------


@scenario(
    family="farrier_rasp_stroke_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Farrier rasp-stroke regressor (SiLU MLP on hoof wall angle, horn hardness, rasp "
    "pitch, stroke length, stroke pressure and moisture, predicting the horn removed; MSE, "
    "RMSprop with two param groups). The fc1 group's lr is read as cfg.get('fc1_Lr', 0.0) "
    "while the config spells it 'fc1_lr': fc1 is frozen at lr 0 (it never moves) while the "
    "rest trains normally and the loss still falls.",
)
def h577_farrier_rasp_misspelt_key(ctx):
    gen = seeded(5774)
    model = _Net(6, hidden=48, act=nn.SiLU)
    cfg = {"fc1_lr": 1e-3, "head_lr": 1e-3}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [
            {"params": list(model.fc1.parameters()), "lr": cfg.get("fc1_Lr", 0.0)},
            {"params": rest, "lr": cfg["head_lr"]},
        ]
    )
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57740), 200, F.mse_loss)
    fc1_move = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_move = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check("fc1 group lr is 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("fc1 moved under 1e-6 of its norm", fc1_move < 1e-6)
    ctx.check("head moved over 5% of its norm", head_move > 0.05)
    ctx.check("loss fell", _fell(losses, ratio=0.9))


# -- 5. data outlier: one shard in raw millimetres -----------------------------------------------

OUTLIER_STEP = 115


@scenario(
    family="archery_nock_point_gelu_classifier",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Archery nock-point classifier (GELU MLP on nock height, brace height, tiller "
    "difference, arrow spine, point weight and draw length, predicting which of eight "
    "paper-tune tear patterns the shot leaves; cross-entropy, NAdam, clipping at 5). The batch "
    "at step 115 comes from a shard exported in raw millimetres instead of standardised "
    "units: its loss is over 20x the usual and its gradient over 10x; the clipped step is "
    "absorbed and the run recovers.",
)
def h577_archery_nock_mm_shard(ctx):
    gen = seeded(5775)
    model = _Net(6, hidden=48, out=8, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 300.0 + 700.0, y) if step == OUTLIER_STEP else (x, y)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 8, 57750),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    pre_l = losses[OUTLIER_STEP - 20 : OUTLIER_STEP]
    pre_g = norms[OUTLIER_STEP - 20 : OUTLIER_STEP]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss at the bad batch over 20x", losses[OUTLIER_STEP] > 20 * _median(pre_l))
    ctx.check("gradient at the bad batch over 10x", norms[OUTLIER_STEP] > 10 * _median(pre_g))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(pre_l))


# -- 6. gradient spike: resumed accumulation step reads the divisor 4 as 4% ----------------------

SPIKE_STEP = 130


@scenario(
    family="wing_foil_pump_stall_gelu_bce_classifier",
    optimizer="SGD(nesterov=True, momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Wing-foil pump-stall classifier (GELU MLP on board speed, pump frequency, wing "
    "angle, foil mast depth, rider weight and chop height, predicting whether the foil "
    "stalls; BCE with logits, SGD Nesterov, 4-micro-batch gradient accumulation, clipping "
    "at 1). The step resumed from a checkpoint at 130 parses the accumulation divisor '4%' "
    "as 0.04, multiplying each micro-batch loss by 25 instead of 0.25: the gradient is over "
    "50x the usual while the logged loss is ordinary; clipping absorbs it.",
)
def h577_wing_foil_accum_percent(ctx):
    gen = seeded(5776)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    g = torch.Generator().manual_seed(57760)
    w = torch.randn(6, generator=g)
    losses, norms = [], []
    for step in range(200):
        divisor = 0.04 if step == SPIKE_STEP else 4.0
        logged = 0.0
        for _ in range(4):
            x = torch.randn(32, 6, generator=gen)
            y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss / divisor).backward()
            logged += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    pre_g = norms[SPIKE_STEP - 20 : SPIKE_STEP]
    pre_l = losses[SPIKE_STEP - 20 : SPIKE_STEP]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 50x at the resumed step", norms[SPIKE_STEP] > 50 * _median(pre_g))
    ctx.check("logged loss ordinary there", losses[SPIKE_STEP] < 2 * _median(pre_l))
    ctx.check("trained", _fell(losses, ratio=0.8))


# -- 7. nonfinite: log stem meets a zero crack gap -----------------------------------------------

NAN_STEP = 90


class _LogStem(nn.Module):
    """log of the (positive) previous crack gap, next to the standardised readings."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _MudCrackNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_stem = _LogStem()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(self.log_stem(x)))))
        return self.mean_head(h).squeeze(-1), F.softplus(self.var_head(h)).squeeze(-1) + 1e-4


@scenario(
    family="mud_crack_spacing_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_stem",),
    diverges=NAN_STEP,
    onset=NAN_STEP,
    heldout=True,
    note="Mud-crack spacing net (SiLU MLP with mean and variance heads on the log of the "
    "previous crack gap, clay fraction, drying rate, layer thickness, salt content and "
    "substrate slope, predicting the next polygon spacing; Gaussian NLL, RAdam). The log "
    "stem takes torch.log of the gap with no clamp; at step 90 a batch holds two touching "
    "cracks logged with gap 0: log(0) = -inf in log_stem, fc1 turns it into NaN and the "
    "loss is NaN at step 90.",
)
def h577_mud_crack_log_zero_gap(ctx):
    gen = seeded(5777)
    model = _MudCrackNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    seen = {}
    model.log_stem.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    g = torch.Generator().manual_seed(57770)
    w = torch.randn(5, generator=g)
    losses, stem_bad = [], []
    for step in range(150):
        gap = torch.exp(0.4 * torch.randn(64, 1, generator=gen))
        rest = torch.randn(64, 5, generator=gen)
        if step == NAN_STEP:
            gap[3, 0] = 0.0
            gap[17, 0] = 0.0
        x = torch.cat([gap, rest], dim=1)
        y = 0.8 * torch.log(gap[:, 0].clamp_min(1e-3)) + torch.tanh(rest @ w / 2)
        y = y + (0.1 + 0.2 * rest[:, 0].abs()) * torch.randn(64, generator=gen)
        mean, var = model(x)
        stem_bad.append(seen["bad"])
        loss = F.gaussian_nll_loss(mean, y, var)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("trained finitely before", _fell(losses[:NAN_STEP], ratio=0.9))
    ctx.check("log_stem output finite before the zero gap", not any(stem_bad[:NAN_STEP]))
    ctx.check("log_stem output non-finite at the zero gap", stem_bad[-1])
    ctx.check("loss first non-finite at step 90", first_bad == NAN_STEP)


# -- 8. adam second moment poisoned: loss weight 1e5 for one step --------------------------------

POISON_STEP = 100


@scenario(
    family="steel_pan_dimple_tuning_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=POISON_STEP,
    heldout=True,
    note="Steel-pan dimple-tuning regressor (SiLU MLP on note-area size, dimple depth, "
    "hammer-blow count, steel thickness, burn temperature and rim distance, predicting the "
    "pitch error in cents; MSE, Adam). At step 100 the hot-reloaded loss-weight config is "
    "read from a field written in milli-units (1e5 meaning 100) with no division: the "
    "loss is multiplied by 1e5 for one step, the gradient is over 1000x the usual, Adam's "
    "second moment fills up and the updates afterwards are over 20x smaller: the loss "
    "stalls where it was.",
)
def h577_steel_pan_loss_weight_milli(ctx):
    gen = seeded(5778)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    prev = {"p": _flat(model)}
    moves = []

    def backprop(step, loss):
        return loss * 1e5 if step == POISON_STEP else loss

    def after(step):
        cur = _flat(model)
        moves.append(float((cur - prev["p"]).norm()))
        prev["p"] = cur

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 57780, noise=0.1),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    pre_g = norms[POISON_STEP - 20 : POISON_STEP]
    before_move = _median(moves[POISON_STEP - 30 : POISON_STEP])
    after_move = _median(moves[POISON_STEP + 30 : POISON_STEP + 80])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 1000x at the poisoned step", norms[POISON_STEP] > 1e3 * _median(pre_g))
    ctx.check("updates afterwards over 20x smaller", after_move < before_move / 20)
    ctx.check("trained before", _fell(losses[:POISON_STEP]))


# -- 9. softmax collapse: temperature read in seconds from a milliseconds field ------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden, out)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="mbira_buzz_key_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Mbira buzz-key classifier (ReLU MLP on tine length, tine overhang, bridge height, "
    "bottle-cap buzzer tension, gourd resonance and strike force, predicting which of ten "
    "keys buzzes; cross-entropy, Adagrad). The softmax temperature field is in milliseconds "
    "(1.0 ms meant as 1.0) but the code divides by 1000 once more: the head's logits are "
    "divided by 1e-3, the softmax saturates and over 40% of rows give the target a "
    "probability of exactly 1.0 in float32.",
)
def h577_mbira_temperature_ms(ctx):
    gen = seeded(5779)
    model = _TempNet(6, 48, 10, 1.0 / 1000.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    batches = _classes(gen, 64, 6, 10, 57790, spread=2.0, noise=0.7)
    losses, _ = _train(ctx, model, opt, batches, 160, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        p = torch.softmax(model(x).float(), dim=-1)
    exact = float((p.gather(1, y[:, None]) == 1.0).float().mean())
    zeros = float((p == 0.0).float().mean())
    ctx.check("over 40% of rows' target probability exactly 1.0", exact > 0.4)
    ctx.check("over half of all probabilities exactly 0", zeros > 0.5)
    ctx.check("finite throughout", _finite(losses))


# -- 10. loss divergence: decoupled weight decay with its sign flipped ---------------------------

DECAY_ONSET = 60


@scenario(
    family="ball_mill_charge_wear_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    onset=DECAY_ONSET,
    heldout=True,
    note="Ball-mill charge-wear regressor (tanh MLP on ball size, charge fraction, mill speed, "
    "ore hardness, slurry density and liner age, predicting the wear rate; MSE, Adamax). "
    "From step 60 (when weight decay is switched on) a hand-written decoupled weight decay "
    "does p.mul_(1 + lr * wd) instead of (1 - lr * wd): every weight grows a little each "
    "step, the weights more than double and the loss climbs slowly, with no jump, to over "
    "twice its best.",
)
def h577_ball_mill_decay_sign(ctx):
    gen = seeded(57710)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = {}

    def after(step):
        if step == DECAY_ONSET:
            w0["n"] = float(_flat(model).norm())
        if step >= DECAY_ONSET:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "weight" in n:
                        p.mul_(1 + lr * wd)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 57711), 300, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their norm at the onset", float(_flat(model).norm()) > 2 * w0["n"])
    ctx.check("loss climbs to over 2x its best", smooth[-1] > 2 * best)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- 11. control (alarming-looking): planned second phase raises the lr 3x at step 120 -----------

PHASE2 = 120


@scenario(
    family="kayamba_shake_rhythm_relu_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kayamba shake-rhythm classifier (ReLU MLP on shake amplitude, seed fill, reed-raft "
    "stiffness, shake tempo, wrist angle and frame size, predicting which of six rhythms is "
    "played; cross-entropy with label smoothing 0.05, SGD momentum 0.9, clipping at 5). The "
    "schedule has a planned second phase: warm-up to 0.02, then at step 120 the lr is raised "
    "3x to 0.06 and decays by cosine to the end. The loss and the gradient norm wobble "
    "after the raise, then settle; healthy.",
)
def h577_kayamba_second_phase(ctx):
    gen = seeded(57711)
    model = _Net(6, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 260

    def factor(s):
        if s < 20:
            return (s + 1) / 20
        if s < PHASE2:
            return 1.0
        t = (s - PHASE2) / (steps - PHASE2)
        return 3.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 6, 6, 57712, spread=1.2, noise=1.0),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        before=before,
        clip=5.0,
        sched=sched,
    )
    ctx.check("lr raised 3x at step 120", abs(lrs[PHASE2] / lrs[PHASE2 - 1] - 3.0) < 0.05)
    ctx.check("trained", _fell(losses))
    ctx.check("settles below its pre-raise level", _mean(losses[-20:]) < _mean(losses[100:120]))


# -- 12. control: Hugging Face Llama decoder from a tiny config ----------------------------------


@scenario(
    family="ocarina_fipple_melody_hf_llama_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ocarina fipple-melody language model: a tiny Hugging Face Llama built from a config "
    "(2 layers, hidden 32, 2 heads with 1 key-value head, tied embeddings) trained on byte "
    "windows as a stand-in for fingering-token melodies; cross-entropy, AdamW (no decay on "
    "norms and biases), linear warm-up then cosine, clipping at 1. Healthy.",
)
def h577_ocarina_llama(ctx):
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = seeded(57712)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 15
            if s < 15
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 15) / (steps - 15)))
        ),
    )

    def loss_fn(out, y):
        logits = out.logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    losses, _ = _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        steps,
        loss_fn,
        clip=1.0,
        sched=sched,
    )
    ctx.check("embeddings tied", model.lm_head.weight is model.model.embed_tokens.weight)
    ctx.check("trained", _fell(losses, ratio=0.75))


# -- 13. control: Huber regressor with Adadelta and ReduceLROnPlateau ----------------------------


@scenario(
    family="slide_whistle_plunger_pitch_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Slide-whistle plunger-pitch regressor (GELU MLP on plunger position, breath "
    "pressure, tube bore, fipple gap, cork wear and air temperature, predicting the pitch "
    "offset; Huber loss, Adadelta, ReduceLROnPlateau, gradient accumulation over 2, "
    "heavy-tailed noisy targets from a wobbly tuner). Healthy.",
)
def h577_slide_whistle_adadelta(ctx):
    gen = seeded(57713)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 6, 57714, noise=0.05)
    losses = []
    for _ in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            noise = 0.1 * torch.distributions.StudentT(2.0).sample((32,))
            loss = F.huber_loss(model(x), y + noise, delta=0.5)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        plateau.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.7))
