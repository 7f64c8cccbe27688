"""Held-out set 587 (``h587_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

See each scenario's ``note=`` for the fault, how it is induced and what its checks measure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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
    after=None,
    accum=1,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        total_logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accum).backward()
            total_logged = total_logged + loss.detach() / accum
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss_t = total_logged if accum > 1 else loss.detach()
        losses.append(float(loss_t))
        ctx.step(loss_t)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
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
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop2 = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x))))))

    def forward(self, x):
        out = self.head(self.features(x))
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


# -- 1. amp overflow: spoke-tenon shoulder logged in raw micrometres under fp16 autocast ----------

AMP_ONSET = 90


@scenario(
    family="wheelwright_spoke_tenon_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=AMP_ONSET,
    onset=AMP_ONSET,
    heldout=True,
    note="Wheelwright spoke-tenon regressor (GELU MLP on tenon shoulder width, spoke taper, "
    "oak moisture, hub mortise angle, felloe dish and drive force, predicting the fit "
    "tightness; MSE, AdamW, fp16 autocast + GradScaler). From step 90 a new caliper logs the "
    "shoulder width in raw micrometres (about 3e5) instead of the standardised column: "
    "autocast runs fc1 in fp16, whose range ends at 65504, fc1's output is non-finite (the "
    "same batch is finite in float32) and the loss is non-finite at step 90.",
)
def h587_wheelwright_tenon_micrometres(ctx):
    gen = seeded(5871)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 58710)
    losses, fc1_bad, fc1_dtypes, bad_x = [], [], [], None
    for step in range(140):
        x, y = next(batches)
        if step >= AMP_ONSET:
            x = x.clone()
            x[:, 0] = 3.0e5 + 8.0e3 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_dtypes.append(seen["fc1"][0])
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
    with torch.no_grad():
        fp32_finite = bool(torch.isfinite(model.fc1(bad_x)).all()) if bad_x is not None else False
    ctx.check("fc1 ran in float16 under autocast", fc1_dtypes[0] == torch.float16)
    ctx.check("finite and falling before the onset", _fell(losses[:AMP_ONSET], ratio=0.8))
    ctx.check(
        "fc1's fp16 output non-finite at the onset",
        fc1_bad[AMP_ONSET] if len(fc1_bad) > AMP_ONSET else False,
    )
    ctx.check("the same batch is finite through fc1 in float32", fp32_finite)
    ctx.check(
        "loss non-finite at step 90",
        len(losses) == AMP_ONSET + 1 and not math.isfinite(losses[AMP_ONSET]),
    )


# -- 2. data outlier: one shard of board-speed readings in raw GPS units ---------------------------

OUTLIER_STEP = 110


@scenario(
    family="hydrofoil_pump_glide_silu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=OUTLIER_STEP,
    heldout=True,
    note="Hydrofoil pump-glide regressor (SiLU MLP on pump cadence, mast length, front-wing "
    "area, rider weight, board speed and chop height, predicting the glide distance; Huber "
    "loss, NAdam, clipping at 1.0). The batch at step 110 comes from a bad shard whose board "
    "speed and cadence columns are raw GPS/IMU counts (about x400) and whose targets are in "
    "centimetres instead of metres: that one step's loss is over 20x the median and the "
    "gradient over 10x; the run recovers afterwards.",
)
def h587_hydrofoil_bad_shard(ctx):
    gen = seeded(5872)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == OUTLIER_STEP:
            x = x.clone()
            x[:, 1] = 400.0 * x[:, 1]
            x[:, 4] = 400.0 * x[:, 4]
            y = 100.0 * y
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58720), 200, F.huber_loss, alter=alter, clip=1.0
    )
    before = losses[OUTLIER_STEP - 30 : OUTLIER_STEP]
    gbefore = norms[OUTLIER_STEP - 30 : OUTLIER_STEP]
    ctx.check("finite", _finite(losses))
    ctx.check(
        "loss over 20x the median at the bad shard", losses[OUTLIER_STEP] > 20 * _median(before)
    )
    ctx.check(
        "gradient over 10x the median at the bad shard", norms[OUTLIER_STEP] > 10 * _median(gbefore)
    )
    ctx.check(
        "recovers: last 20 steps within 2x the pre-shard median",
        _mean(losses[-20:]) < 2 * _median(before),
    )
    ctx.check("trained before the shard", _fell(losses[:OUTLIER_STEP]))


# -- 3. sharpness above limit: SGD lr typed 2.5 for 0.025 -----------------------------------------


@scenario(
    family="clapper_bridge_slab_span_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Clapper-bridge slab-span regressor (tanh MLP on slab length, thickness, granite "
    "density, pier spacing, flood height and lichen cover, predicting the safe load; MSE, "
    "plain SGD). The config's learning rate is typed 2.5 for 0.025: the top Hessian "
    "eigenvalue at initialisation times the lr is already past 2, the loss oscillates with "
    "growing amplitude and blows up.",
)
def h587_clapper_bridge_lr_typo(ctx):
    gen = seeded(5873)
    model = _Net(6, hidden=48, act=nn.Tanh)
    lr = 2.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 64, 6, 58730)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check("lr x top Hessian eigenvalue > 2 at init", lr * eig > 2.0)
    ctx.check(
        "loss blows up: non-finite or over 100x the first",
        (not _finite(losses)) or peak > 100 * losses[0],
    )


# -- 4. exploding gradients: identity-initialised ReLU RNN with its scale typed 1.35 -------------


class _IRNN(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _tide_series(gen, batch, t, d_in):
    while True:
        x = torch.randn(batch, t, d_in, generator=gen)
        y = torch.tanh(x[:, -5:, 0].mean(1) + 0.5 * x[:, :, 1].mean(1))
        yield x, y


@scenario(
    family="saltmarsh_creek_meander_relu_irnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="Saltmarsh creek-meander regressor (identity-initialised ReLU RNN over 30 tide-gauge "
    "readings of water level, sediment load and salinity, predicting the bank migration; "
    "MSE, SGD momentum 0.9). The IRNN init scales the recurrent identity by 1.15 instead of "
    "1.0 (a leftover from a sweep): the backward signal grows through time, the gradient"
    " at the first reading is over 20x the last reading's at init and the run blows up.",
)
def h587_saltmarsh_meander_irnn(ctx):
    gen = seeded(5874)
    model = _IRNN(3, 32)
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(1.15 * torch.eye(32))
        model.rnn.weight_ih_l0.mul_(1.0)
        model.rnn.bias_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _tide_series(gen, 32, 30, 3)
    x0, y0 = next(batches)
    x0 = x0.clone().requires_grad_(True)
    F.mse_loss(model(x0), y0).backward()
    ratio = float(x0.grad[:, 0].norm() / x0.grad[:, -1].norm())
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss)
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check("gradient at the first reading over 20x the last reading's at init", ratio > 20)
    ctx.check(
        "loss blows up: non-finite or over 100x the first",
        (not _finite(losses)) or peak > 100 * losses[0],
    )


# -- 5. gradient spike: resumed accumulation step divides by 1/accum -------------------------------

SPIKE_STEP = 120


@scenario(
    family="sugarcane_press_roller_slip_bce_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=SPIKE_STEP,
    heldout=True,
    note="Sugarcane press roller-slip detector (GELU MLP on roller speed, cane feed rate, "
    "juice flow, bagasse moisture, roller gap and motor current, BCE on slip/no-slip; SGD "
    "Nesterov, clipping at 5.0). On the step the job resumes from a checkpoint (step 120) "
    "the loss weight is restored as 1/0.02 instead of 0.02 (a loss-scale key read inverted): "
    "the gradient that step is over 50x the median while the logged loss is ordinary; the "
    "run carries on.",
)
def h587_sugarcane_resume_loss_weight(ctx):
    gen = seeded(5875)
    model = _Net(6, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(58750)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 6, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(64, generator=gen)) > 0).float()
            yield x, y

    def backprop(step, loss):
        weight = 1.0 / 0.02 if step == SPIKE_STEP else 0.02
        return (weight / 0.02) * loss if step == SPIKE_STEP else loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    before = norms[SPIKE_STEP - 30 : SPIKE_STEP]
    lbefore = losses[SPIKE_STEP - 30 : SPIKE_STEP]
    ctx.check("finite", _finite(losses))
    ctx.check("gradient over 50x the median at step 120", norms[SPIKE_STEP] > 50 * _median(before))
    ctx.check(
        "logged loss at step 120 ordinary (< 3x median)", losses[SPIKE_STEP] < 3 * _median(lbefore)
    )
    ctx.check("trained", _fell(losses))


# -- 6. nonfinite: sigma head as sqrt of a raw linear output ---------------------------------------


class _SigmaNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.mu = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        sigma = torch.sqrt(self.var(h))  # the softplus was dropped "for speed"
        return torch.cat([self.mu(h), sigma], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="hydrothermal_vent_plume_sqrt_sigma_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var",),
    diverges=135,
    heldout=True,
    note="Hydrothermal-vent plume regressor (SiLU MLP on vent temperature, chimney height, "
    "current speed, depth and mineral load, predicting plume rise with a Gaussian NLL; "
    "RMSprop). The sigma head computes sqrt(var(h)) with the softplus/clamp dropped: the "
    "noise in the targets is small, training pushes var's output down, some row goes "
    "negative, sqrt gives NaN and the loss is NaN.",
)
def h587_vent_plume_sqrt_sigma(ctx):
    gen = seeded(5876)
    model = _SigmaNet(5, 32)
    with torch.no_grad():
        model.var.bias.fill_(2.0)
        model.var.weight.mul_(0.1)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    neg = []

    model.var.register_forward_hook(lambda m, i, o: neg.append(bool((o < 0).any())))
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 58760, noise=0.01), 300, _gauss_nll)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss is NaN at some step", first_bad is not None)
    ctx.check("var's output went negative at that step", first_bad is not None and neg[first_bad])
    ctx.check("finite before it for over 20 steps", first_bad is not None and first_bad > 20)


# -- 7. softmax collapse: temperature read in milliseconds -----------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, k, temperature):
        super().__init__(d_in, hidden=48, out=k)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="cajon_snare_wire_buzz_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cajon snare-wire buzz classifier (ReLU MLP on 12 spectral band energies of a slap, "
    "6 buzz kinds; cross-entropy, Adagrad). The softmax temperature is read from a "
    "'temperature_ms' key as 0.001 instead of 1.0: logits are divided by 1e-3, and over 40% "
    "of rows' target probability rounds to exactly 1.0 in float32 by the end.",
)
def h587_cajon_buzz_temperature_ms(ctx):
    gen = seeded(5877)
    model = _TempNet(12, 6, temperature=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    frac, unscaled = [], []

    def after(step, out, y):
        frac.append(collapsed_fraction(out, y))
        unscaled.append(collapsed_fraction(out * 1e-3, y))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 6, 58770),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows collapsed to exactly 1.0 at the end", _mean(frac[-10:]) > 0.4)
    ctx.check(
        "the same logits at temperature 1.0 do not collapse (< 10%)", _mean(unscaled[-10:]) < 0.1
    )


# -- 8. loss divergence: hand-written weight decay with its sign flipped ---------------------------


@scenario(
    family="tide_mill_sluice_decay_sign_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tide-mill sluice regressor (tanh MLP on pond level, tide height, sluice opening, "
    "wheel load, silt depth and season, predicting the milling hours; MSE, Adam). A "
    "hand-written decoupled weight decay applies p += lr*wd*p instead of p -= lr*wd*p: the "
    "weights grow steadily and the loss climbs slowly to over 2x its best with no jump.",
)
def h587_tide_mill_decay_sign(ctx):
    gen = seeded(5878)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=3e-3 * 4.0)  # sign bug: should be -lr*wd

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 6, 58780), 300, F.mse_loss, before=before
    )
    best = min(losses)
    jumps = max(losses[i] / _mean(losses[i - 10 : i]) for i in range(150, len(losses)))
    ctx.check("finite", _finite(losses))
    ctx.check("weights over 2x their initial norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss at the end over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("no step after 150 over 3x the previous 10 steps' mean", jumps < 3.0)


# -- 9. attention logit growth: q/k projection group at lr typed 3e-2 ------------------------------


class _Attn(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.last_logits = None

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ v


class _Tagger(nn.Module):
    def __init__(self, vocab, dim, tags):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(16, dim))
        self.attn = _Attn(dim)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tags)

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        h = self.ln(h + self.attn(h))
        return self.head(h).reshape(-1, self.head.out_features)


@scenario(
    family="whistled_syllable_attention_tagger",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Whistled-language syllable tagger (one self-attention layer over 16 whistle-pitch "
    "tokens, tagging each as one of 4 syllable kinds from its neighbours; cross-entropy, Adam, "
    "param groups). The q/k projection group's lr is typed 3e-1 for 3e-4, with no weight "
    "decay and no QK-norm: the attention logits q.k/sqrt(d) grow over 20x their initial "
    "size and the attention saturates.",
)
def h587_whistled_syllable_qk_lr(ctx):
    gen = seeded(5879)
    model = _Tagger(24, 32, 4)
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 3e-1}])

    def batches():
        while True:
            x = torch.randint(0, 24, (32, 16), generator=gen)
            y = (torch.roll(x, 1, 1) + torch.roll(x, -1, 1)) % 4
            yield x, y.reshape(-1)

    sizes = []
    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda step, out, y: sizes.append(float(model.attn.last_logits.abs().max())),
    )
    ctx.check("finite", _finite(losses))
    ctx.check("attention logits over 20x their initial max", sizes[-1] > 20 * sizes[0])


# -- 10. update ratio: Mamba layer group lr typed 1e-9 ---------------------------------------------


@scenario(
    family="bosun_pipe_call_mamba_lm",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("backbone.layers.1.mixer",),
    diverges=None,
    heldout=True,
    note="Bosun's-pipe call language model (a Hugging Face Mamba from a tiny config, 2 layers, "
    "on sequences of pipe-call note tokens; cross-entropy, Adamax, param groups per layer). "
    "The group for backbone.layers.1.mixer has its lr typed 1e-9 for 1e-3: that mixer's "
    "weights move less than 1e-5 relative while the other layer moves over 1e-2, and the "
    "loss still falls.",
)
def h587_bosun_pipe_mamba_frozen_mixer(ctx):
    from transformers import MambaConfig, MambaForCausalLM

    gen = seeded(58710)
    config = MambaConfig(
        vocab_size=32,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        use_cache=False,
    )
    model = MambaForCausalLM(config)
    frozen = model.backbone.layers[1].mixer
    ids = {id(p) for p in frozen.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adamax(
        [{"params": rest, "lr": 3e-3}, {"params": list(frozen.parameters()), "lr": 1e-9}]
    )
    f0, o0 = _flat(frozen), _flat(model.backbone.layers[0].mixer)
    g = torch.Generator().manual_seed(58711)
    calls = torch.randint(2, 32, (6, 8), generator=g)

    def batches():
        while True:
            pick = torch.randint(0, 6, (16, 5), generator=gen)
            seq = calls[pick].reshape(16, -1)[:, :33]
            yield seq[:, :-1], seq[:, 1:]

    def lm(out, y):
        return F.cross_entropy(out.logits.reshape(-1, 32), y.reshape(-1))

    losses, _ = _train(ctx, model, opt, batches(), 80, lm)
    fr = float((_flat(frozen) - f0).norm() / f0.norm())
    orr = float((_flat(model.backbone.layers[0].mixer) - o0).norm() / o0.norm())
    ctx.check("frozen mixer moved < 1e-5 relative", fr < 1e-5)
    ctx.check("layers.0 mixer moved > 1e-2 relative", orr > 1e-2)
    ctx.check("loss fell", _fell(losses))


# -- 11. control (alarming-looking): dropout 0.3 switched off at step 120 --------------------------

DROP_OFF = 120


@scenario(
    family="marimba_mallet_grip_dropout_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    onset=DROP_OFF,
    heldout=True,
    note="Marimba mallet-grip classifier (ReLU MLP (24 wide) with dropout 0.3 on 16 wrist-sensor "
    "features, 5 grips; cross-entropy with label smoothing 0.1, AdamW). The recipe switches "
    "dropout off at step 120 for the fine-tuning phase: the training loss drops sharply and "
    "the gradient norm changes, which looks alarming, but the run is healthy.",
)
def h587_marimba_grip_dropout_off(ctx):
    gen = seeded(58711)
    model = _Net(16, hidden=24, out=5, dropout=0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def before(step):
        if step == DROP_OFF:
            model.drop1.p = 0.0
            model.drop2.p = 0.0

    losses, _ = _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 16, 5, 58712, spread=1.2, noise=1.0),
        240,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        before=before,
    )
    ctx.check("trained and finite", _fell(losses))
    ctx.check(
        "loss drops when dropout goes off (mean of 10 after < 0.9x mean of 10 before)",
        _mean(losses[DROP_OFF : DROP_OFF + 10]) < 0.9 * _mean(losses[DROP_OFF - 10 : DROP_OFF]),
    )


# -- 12. control: OneCycleLR + clipping, Huber, RAdam ----------------------------------------------


@scenario(
    family="kelp_forest_canopy_onecycle_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kelp-forest canopy regressor (SiLU MLP on water temperature, nitrate, swell height, "
    "urchin density, depth and light, predicting canopy cover; Huber loss, RAdam, OneCycleLR, "
    "clipping at 1.0, noisy targets). An ordinary healthy run.",
)
def h587_kelp_canopy_onecycle(ctx):
    gen = seeded(58713)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 58714, noise=0.2),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained and finite", _fell(losses))


# -- 13. control: gradient accumulation + ReduceLROnPlateau, BCE, SGD momentum ---------------------


@scenario(
    family="snowshoe_binding_slip_accum_bce_net",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowshoe binding-slip detector (ReLU MLP on snow density, boot size, strap tension, "
    "slope, stride length and temperature, BCE on slip/no-slip with 10% flipped labels; SGD "
    "momentum 0.9, 4-micro-batch gradient accumulation, ReduceLROnPlateau). A healthy run.",
)
def h587_snowshoe_binding_accum(ctx):
    gen = seeded(58715)
    model = _Net(6, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    g = torch.Generator().manual_seed(58716)
    w = torch.randn(6, generator=g)

    def batches():
        while True:
            x = torch.randn(32, 6, generator=gen)
            y = (x @ w > 0).float()
            flip = torch.rand(32, generator=gen) < 0.1
            yield x, torch.where(flip, 1 - y, y)

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches(),
        150,
        F.binary_cross_entropy_with_logits,
        plateau=plateau,
        accum=4,
    )
    ctx.check("trained and finite", _fell(losses, ratio=0.8))
