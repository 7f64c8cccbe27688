"""Held-out set 562 (``h562_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: lye-soap saponification regressor fed lye strength in ppm under fp16 autocast
(amp_overflow, AdamW); kayagum string-pluck 1-D U-Net denoiser fed two clips in raw int16 counts
(data_outlier, Adamax); soroban bead-flick regressor whose warm-up peak lr used the batch size
for the batch ratio (sharpness_above_limit, plain SGD); frame-drum roll ReLU Elman RNN with its
identity recurrent init scaled 1.1 (exploding_gradients, SGD momentum); washi sheet-weight
regressor whose fc1 group lr key is misspelt and falls back to 0.0 (update_ratio_out_of_range,
RMSprop); dog-sled bootie wear BCE classifier whose accumulation normaliser goes to 1e-3 at an
epoch boundary (gradient_spike, SGD Nesterov); fence-post driver GRU whose masked mean pool gets a
post with no blows logged (nonfinite, RAdam); cleaver chop-edge ReLU classifier with Adam lr typed
0.05 (loss_of_plasticity, Adam); broom-corn bristle regressor whose manual static loss scale is not
undone for one step (adam_second_moment_poisoned, Adam); skep straw-coil regressor with its L2 penalty
subtracted (loss_divergence, Adamax).
Controls: tea-whisk tine-count classifier trained to near-zero loss on a small separable set with
weight decay 0.01 (logits grow then level off, alarming-looking, NAdam); sheep-hurdle weaving
tied-embedding GRU sequence model (AdamW, warm-up + cosine, clipping, label smoothing); riddle
sieve-mesh Gaussian NLL regressor (Adagrad, ReduceLROnPlateau, accumulation 2, clipping, noisy).
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


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + offset + noise * torch.randn(batch, generator=gen)


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


# -- 1. amp overflow: lye strength logged in ppm under fp16 autocast -----------------------------


@scenario(
    family="lye_soap_saponification_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Lye-soap saponification regressor (GELU MLP on lye strength, oil blend, water ratio, "
    "stick-blend time, room temperature and fragrance load, predicting hours to trace; MSE, "
    "AdamW, fp16 autocast + GradScaler). From step 70 a new titration sheet gives lye strength "
    "in ppm (about 3e5) instead of the standardised column: autocast runs fc1 in fp16, whose "
    "range ends at 65504, fc1's output is non-finite (the same batch is finite in float32) and "
    "the loss is non-finite at step 70.",
)
def h562_lye_soap_strength_in_ppm(ctx):
    gen = seeded(5621)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 56210)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(120):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 3.0e5 + 3.0e4 * x[:, 0]
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
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("fc1's fp16 output non-finite at step 70", len(fc1_bad) > 70 and fc1_bad[70])
    ctx.check("fc1 finite before step 70", not any(fc1_bad[:70]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 70", _mean(losses[60:70]) < 0.7 * _mean(losses[:10]))


# -- 2. data outlier: two clips in raw int16 counts, 1-D U-Net denoiser ---------------------------


class _PluckUNet(nn.Module):
    """A 1-D U-Net: two downsampling stages, a bottleneck, two upsampling stages with skips."""

    def __init__(self, c=8):
        super().__init__()
        self.enc1 = nn.Conv1d(1, c, 5, padding=2)
        self.enc2 = nn.Conv1d(c, 2 * c, 5, padding=2)
        self.mid = nn.Conv1d(2 * c, 2 * c, 3, padding=1)
        self.up2 = nn.ConvTranspose1d(2 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Conv1d(4 * c, c, 3, padding=1)
        self.up1 = nn.ConvTranspose1d(c, c, 2, stride=2)
        self.dec1 = nn.Conv1d(2 * c, c, 3, padding=1)
        self.out = nn.Conv1d(c, 1, 1)

    def forward(self, x):
        x = x[:, None]
        e1 = F.silu(self.enc1(x))
        e2 = F.silu(self.enc2(F.avg_pool1d(e1, 2)))
        m = F.silu(self.mid(F.avg_pool1d(e2, 2)))
        d2 = F.silu(self.dec2(torch.cat([self.up2(m), e2], 1)))
        d1 = F.silu(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        return self.out(d1)[:, 0]


def _plucks(gen, batch=32, length=64):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.08 + 0.25 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = 0.01 + 0.04 * torch.rand(batch, 1, generator=gen)
        clean = 0.8 * torch.exp(-decay * t) * torch.sin(f * t * 6.28 + ph)
        yield clean + 0.15 * torch.randn(batch, length, generator=gen), clean


@scenario(
    family="kayagum_string_pluck_unet1d_denoiser",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Kayagum string-pluck denoiser (1-D U-Net encoder-decoder with skip connections over "
    "64-sample contact-mic clips, MSE against the clean pluck, Adamax, clipping at 1). At step "
    "90 two clips of the batch come from a recorder export left in raw int16 counts (x32767, "
    "clip and target): the loss and gradient jump for that batch, clipping holds the update, "
    "the run recovers.",
)
def h562_kayagum_int16_clips(ctx):
    gen = seeded(5622)
    model = _PluckUNet()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step != 90:
            return x, y
        x, y = x.clone(), y.clone()
        x[:2] *= 32767.0
        y[:2] *= 32767.0
        return x, y

    losses, norms = _train(ctx, model, opt, _plucks(gen), 200, F.mse_loss, alter=alter, clip=1.0)
    base = _median(losses[75:90])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 1000x at step 90", losses[90] > 1000 * base)
    ctx.check("gradient over 100x at step 90", norms[90] > 100 * _median(norms[75:90]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[75:90]))
    ctx.check("only one bad step", max(losses[92:]) < 10 * base)
    ctx.check("trained before step 90", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))


# -- 3. sharpness above limit: warm-up peak from the batch size, not the batch ratio ----------------


@scenario(
    family="soroban_bead_flick_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=5,
    heldout=True,
    note="Soroban bead-flick speed regressor (tanh MLP on finger, column, bead count, rod "
    "friction, frame tilt and operator tempo, MSE, plain SGD). The linear-scaling rule is "
    "written base_lr * batch_size instead of base_lr * batch_size / 256, so the linear warm-up "
    "climbs to lr 2.56 instead of 0.01: during the warm-up lr x top Hessian eigenvalue "
    "(measured in the run by power iteration) passes 2 and the loss blows up.",
)
def h562_soroban_warmup_peak_typo(ctx):
    gen = seeded(5623)
    model = _Net(6, hidden=32, act=nn.Tanh)
    peak = 0.02 * 128
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    batches = _readings(gen, 128, 6, 56230)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _train(ctx, model, opt, batches, 120, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(ok)), None
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check("first crossing at step 5", crossed[:1] == [5])
    ctx.check("trained first", min(ok[:30]) < 0.7 * _mean(ok[:5]))


# -- 4. exploding gradients: identity recurrent init scaled 1.1 -----------------------------------


class _DrumRollRNN(nn.Module):
    """ReLU Elman RNN over stroke readings, regresses the roll's evenness from the last state."""

    def __init__(self, d_in=4, hidden=32, gain=1.1):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.eye(hidden))
            self.rnn.bias_hh_l0.zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _strokes(gen, batch=32, length=50):
    while True:
        x = 0.5 * torch.rand(batch, length, 4, generator=gen)
        y = x[:, :, 0].std(1) * 4 - x[:, -5:, 1].mean(1)
        yield x, y


@scenario(
    family="frame_drum_roll_evenness_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Frame-drum roll evenness regressor (ReLU Elman RNN over 50 strokes of onset gap, "
    "velocity, rim distance and damping, MSE, SGD momentum). The IRNN init multiplies the "
    "identity recurrent matrix by 1.1 (a gain meant for the input weights): the backward signal "
    "grows by about 1.1 per step through time, the input gradient at the first stroke is over "
    "100x that at the last, and the run blows up.",
)
def h562_drum_roll_irnn_gain_typo(ctx):
    gen = seeded(5624)
    model = _DrumRollRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratios = []
    batches = _strokes(gen)

    def probe():
        x, y = next(batches)
        x = x.clone().requires_grad_(True)
        F.mse_loss(model(x), y).backward()
        g = x.grad.norm(dim=(0, 2))
        model.zero_grad(set_to_none=True)
        return float(g[0] / (g[-1] + 1e-30))

    ratios.append(probe())
    losses, norms = _train(ctx, model, opt, batches, 150, F.mse_loss)
    ok = [v for v in losses if math.isfinite(v)]
    ctx.check("first stroke's input gradient over 100x the last's at init", ratios[0] > 100)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 100 * min(ok))


# -- 5. update ratio: fc1's group lr key misspelt, falls back to 0.0 ------------------------------


@scenario(
    family="washi_paper_sheet_weight_two_group_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Washi paper sheet-weight regressor (SiLU MLP on kozo fibre length, neri dose, vat "
    "temperature, dip count, press time and drying board, MSE, RMSprop with two param groups). "
    "fc1's group lr is read as cfg.get('fc1_lr', 0.0) while the config spells 'fc1_Lr': fc1 "
    "runs at lr 0 and never moves while fc2 and the head train.",
)
def h562_washi_fc1_lr_key_typo(ctx):
    gen = seeded(5625)
    model = _Net(6, hidden=48, act=nn.SiLU)
    cfg = {"fc1_Lr": 2e-3, "lr": 2e-3}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [
            {"params": list(model.fc1.parameters()), "lr": cfg.get("fc1_lr", 0.0)},
            {"params": rest, "lr": cfg["lr"]},
        ]
    )
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 56250), 200, F.mse_loss)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc1 never moved", bool(torch.equal(_flat(model.fc1), fc1_0)))
    ctx.check(
        "head moved over 1e-2 relative",
        float((_flat(model.head) - head_0).norm() / head_0.norm()) > 1e-2,
    )
    ctx.check("fc1's group lr is 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("loss fell somewhat", _fell(losses, ratio=0.9))


# -- 6. gradient spike: accumulation normaliser floors to 1e-3 at an epoch boundary -------------


@scenario(
    family="dog_sled_bootie_wear_accum_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Dog-sled bootie wear classifier (GELU MLP on trail miles, snow crust, temperature, "
    "paw size, fabric weight and gait, BCE of 'worn through by the checkpoint', SGD Nesterov, "
    "gradient accumulation over 2 micro-batches, clipping at 1). The loss normaliser is "
    "max(n_micro // accum, 1e-3); at the epoch boundary (step 120) the partial window has one "
    "micro-batch, the integer division gives 0 and the backpropagated loss is 1000x for that "
    "one step: the gradient bursts, the logged loss is ordinary, clipping bounds the update.",
)
def h562_sled_bootie_accum_normaliser(ctx):
    gen = seeded(5626)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(56260)
    w = torch.randn(6, generator=g)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        n_micro = 1 if step == 120 else 2
        scale = 1.0 / max(n_micro // 2, 1e-3) / n_micro
        logged = 0.0
        for _ in range(n_micro):
            x = torch.randn(32, 6, generator=gen)
            y = (x @ w + 0.3 * torch.randn(32, generator=gen) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * scale).backward()
            logged = logged + loss.detach() / n_micro
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(logged))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 120", norms[120] > 100 * _median(norms[100:120]))
    ctx.check("logged loss ordinary at 120", losses[120] < 2 * _mean(losses[110:120]) + 0.05)
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: masked mean pool over a post with no blows logged ------------------------------


class _MaskedMean(nn.Module):
    def forward(self, h, mask):
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class _PostDriver(nn.Module):
    """GRU over hammer blows, masked mean pool over the logged blows, linear head."""

    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.pool = _MaskedMean()
        self.head = nn.Linear(hidden, 1)

    def forward(self, inp):
        x, mask = inp
        h, _ = self.gru(x)
        return self.head(self.pool(h, mask)).squeeze(-1)


@scenario(
    family="fence_post_driver_refusal_masked_pool_gru_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("pool",),
    diverges=75,
    onset=75,
    heldout=True,
    note="Fence-post driver refusal-depth regressor (GRU over up to 20 logged hammer blows of "
    "force, sink and rebound, masked mean pool over the logged blows, linear head, MSE, "
    "RAdam). The pool divides by the count of logged blows with no clamp; at step 75 a post "
    "driven while the logger was off has no blows logged, 0/0 gives NaN in the pool and the "
    "loss is NaN at step 75.",
)
def h562_fence_post_empty_blow_log(ctx):
    gen = seeded(5627)
    model = _PostDriver()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = {}

    def batches():
        step = 0
        while True:
            x = torch.randn(32, 20, 3, generator=gen)
            n = torch.randint(5, 21, (32,), generator=gen)
            mask = (torch.arange(20)[None] < n[:, None]).float()
            y = (x[..., 1] * mask).sum(1) / n * 2 + 0.1 * n
            if step == 75:
                mask[3] = 0.0
                bad["inp"] = (x, mask)
            step += 1
            yield (x, mask), y

    losses, _ = _train(ctx, model, opt, batches(), 130, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 75", first_bad == 75)
    ctx.check("a row with no blows logged", "inp" in bad and float(bad["inp"][1].sum(1).min()) == 0)
    if "inp" in bad:
        with torch.no_grad():
            h, _ = model.gru(bad["inp"][0])
            ctx.check("pool gives NaN", bool(torch.isnan(model.pool(h, bad["inp"][1])).any()))
    ctx.check("trained before step 75", _mean(losses[65:75]) < 0.7 * _mean(losses[:10]))


# -- 8. loss of plasticity: Adam lr typed 0.05 kills the ReLUs -----------------------------------


@scenario(
    family="cleaver_chop_edge_grade_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Cleaver chop edge-grade classifier (ReLU MLP on blade angle, steel hardness, bevel "
    "width, chop force, board wood and edge roll, cross-entropy over 5 grades, Adam). The lr is "
    "typed 0.05 for 0.005: the first large steps push fc2's pre-activations negative for every "
    "input, over 40% of act2's units die and never come back, and the loss stalls well above where it "
    "was heading, without blowing up.",
)
def h562_cleaver_adam_lr_typo(ctx):
    gen = seeded(5628)
    model = _Net(6, hidden=64, out=5, act=nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(56280)
    protos = 1.5 * torch.randn(5, 6, generator=g)

    def batches():
        while True:
            y = torch.randint(0, 5, (64,), generator=gen)
            yield protos[y] + torch.randn(64, 6, generator=gen), y

    probe = next(batches())[0]

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
        batches(),
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


# -- 9. adam second moment poisoned: a static loss scale not undone for one step -----------------


@scenario(
    family="broom_corn_bristle_yield_loss_scale_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Broom-corn bristle-yield regressor (SiLU MLP on stalk height, panicle length, seed "
    "moisture, curing days, row spacing and variety, MSE, Adam). A static loss scale of 65536 "
    "kept from an old fp16 recipe is undone by hand after backward; at step 100 the checkpoint "
    "branch skips the unscale, one gradient 65536x its size reaches Adam and fills its second "
    "moment, and the updates afterwards are hundreds of times smaller: the loss never gets back below where it was at step 100.",
)
def h562_broom_corn_loss_scale_not_undone(ctx):
    gen = seeded(5629)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 6, 56290, offset=1.0)
    ctx.attach(model, opt)
    losses, norms, moves = [], [], []
    for step in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * 65536.0).backward()
        if step != 100:
            for p in model.parameters():
                p.grad /= 65536.0
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        before = _flat(model)
        opt.step()
        moves.append(float((_flat(model) - before).norm()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 1000x at step 100", norms[100] > 1000 * _median(norms[80:100]))
    ctx.check("updates over 20x smaller after", _mean(moves[160:240]) < _mean(moves[60:100]) / 20)
    ctx.check("still learning before", _mean(losses[90:100]) < 0.8 * _mean(losses[40:50]))
    ctx.check("never back below its onset level", _mean(losses[220:240]) > _mean(losses[90:100]))


# -- 10. loss divergence: a hand-written L2 penalty subtracted instead of added --------------------


@scenario(
    family="skep_straw_coil_negative_l2_relu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Skep straw-coil tension regressor (ReLU MLP on straw length, bramble binding, coil "
    "diameter, dampness, stitch spacing and turn count, MSE, Adamax). The L2 penalty moved out "
    "of the optimizer into the loss is written 'loss - 0.1 * sum(w ** 2)': the net fits first, "
    "then the penalty rewards growing weights, the weights grow steadily and the logged MSE "
    "climbs slowly, with no jump, to well over twice its best.",
)
def h562_skep_l2_sign_slip(ctx):
    gen = seeded(56210)
    model = _Net(6, hidden=48, act=nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - 0.1 * penalty

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 562100), 300, F.mse_loss, backprop=backprop
    )
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    jumps = [smooth[i + 5] / smooth[i] for i in range(len(smooth) - 5)]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fitted first", best < 0.5 * smooth[0])
    ctx.check("weights over 2x their init norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2.5x its best", smooth[-1] > 2.5 * best)
    ctx.check("best reached before the last third", smooth.index(best) < 2 * len(smooth) // 3)
    ctx.check("no jump: 5-step moving mean never doubles", max(jumps) < 2.0)


# -- control 1 (alarming-looking): near-zero loss on a small separable set, weight decay 0.01 ------


@scenario(
    family="tea_whisk_chasen_tine_count_wd_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tea-whisk (chasen) tine-count classifier (GELU MLP on bamboo diameter, split count, "
    "tine curl, tip thickness, knot height and drying days, cross-entropy over 4 tine counts, "
    "NAdam with weight decay 0.01). The 96 training whisks are linearly separable, so the loss "
    "goes to near zero and the logits grow for a while, which looks alarming; weight decay "
    "balances the shrinking cross-entropy gradient and the logits level off. Healthy.",
)
def h562_tea_whisk_separable_wd(ctx):
    gen = seeded(56211)
    model = _Net(6, hidden=32, out=4, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(562110)
    protos = 3.0 * torch.randn(4, 6, generator=g)
    ys = torch.arange(96) % 4
    xs = protos[ys] + 0.4 * torch.randn(96, 6, generator=g)
    peaks = []

    def batches():
        while True:
            idx = torch.randperm(96, generator=gen)[:32]
            yield xs[idx], ys[idx]

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(xs).abs().max()))

    losses, _ = _train(
        ctx, model, opt, batches(), 300, F.cross_entropy, classifier=True, after=after
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss near zero", _mean(losses[-20:]) < 0.05)
    ctx.check("logits grew over 3x from step 5", max(peaks) > 3 * peaks[5])
    late, later = _mean(peaks[200:250]), _mean(peaks[250:])
    ctx.check("logits level off: last two 50-step means within 10%", abs(later - late) < 0.1 * late)


# -- control 2: tied-embedding GRU over weaving moves, warm-up + cosine, label smoothing -----------


class _WeaveGRU(nn.Module):
    def __init__(self, vocab=16, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h, _ = self.gru(self.emb(idx))
        return self.head(h)


def _weave_moves(gen, batch=32, length=24, vocab=16):
    g = torch.Generator().manual_seed(562120)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), -1)
    while True:
        s = torch.randint(0, vocab, (batch,), generator=gen)
        seq = [s]
        for _ in range(length):
            s = torch.multinomial(trans[s], 1, generator=gen)[:, 0]
            seq.append(s)
        seq = torch.stack(seq, 1)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="sheep_hurdle_weaving_tied_gru_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sheep-hurdle (wattle) weaving sequence model: a GRU predicting the next of 16 rod "
    "moves (over, under, turn at the sail, ...), tied embedding and output weights, "
    "cross-entropy with label smoothing 0.1, AdamW, linear warm-up 20 steps then cosine decay, "
    "clipping at 1. Healthy.",
)
def h562_sheep_hurdle_weave_gru(ctx):
    gen = seeded(56212)
    model = _WeaveGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    total = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 200)),
    )

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, 16), y.reshape(-1), label_smoothing=0.1)

    def alter(step, x, y):
        ctx.targets(y.reshape(-1))
        return x, y

    losses, _ = _train(
        ctx, model, opt, _weave_moves(gen), total, loss_fn, alter=alter, clip=1.0, sched=sched
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("head tied to the embedding", model.head.weight is model.emb.weight)


# -- control 3: Gaussian NLL regressor, ReduceLROnPlateau, accumulation 2, noisy -----------------


class _MeshNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.mean(h).squeeze(-1), F.softplus(self.var(h)).squeeze(-1) + 1e-3


@scenario(
    family="riddle_sieve_mesh_pass_gaussian_nll_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Riddle (hand sieve) mesh pass-fraction regressor (SiLU MLP with mean and softplus "
    "variance heads on mesh size, wire gauge, soil moisture, shake rate, load and stone "
    "share, Gaussian NLL, Adagrad, gradient accumulation over 2 micro-batches, clipping at "
    "5, ReduceLROnPlateau; heteroscedastic noisy targets). Healthy.",
)
def h562_riddle_sieve_gaussian_nll(ctx):
    gen = seeded(56213)
    model = _MeshNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    base = _readings(gen, 32, 6, 562130, noise=0.0)
    ctx.attach(model, opt)
    losses, window = [], []
    for _step in range(200):
        logged = 0.0
        for _ in range(2):
            x, y = next(base)
            y = y + (0.05 + 0.2 * x[:, 1].abs()) * torch.randn(32, generator=gen)
            mu, var = model(x)
            loss = F.gaussian_nll_loss(mu, y, var)
            (loss / 2).backward()
            logged = logged + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(logged))
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
        window.append(losses[-1])
        if len(window) == 10:
            plateau.step(_mean(window))
            window = []
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell by over 0.5 nats", _mean(losses[-20:]) < _mean(losses[:10]) - 0.5)
