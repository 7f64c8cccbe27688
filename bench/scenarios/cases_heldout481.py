"""Held-out set 481 (``h481_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a Tsugaru-shamisen plectrum-strike cross-modal fusion classifier (audio tokens
cross-attending to video tokens, Adam lr typed 3e-2 for 3e-4: q.k/sqrt(d) logits grow), a
verdigris patina-growth GELU regressor whose hand-written L2 penalty is subtracted (a slow climb,
SGD momentum), a currach oar-loom two-group regressor whose trunk is never unfrozen (the unfreeze
step typed 1000 in a 200-step run, RMSprop), a kyudo arrow-release SiLU regressor under fp16
autocast fed strain in microstrain from step 100 (NAdam, GradScaler), a wadi flash-flood stage
regressor fed one shard in centimetres (plain SGD, clipped), a St Elmo's fire discharge BCE net
whose current ratio has no epsilon (0/0, Adagrad), a balalaika tremolo-decay ReLU RNN whose
identity recurrent init is scaled 1.12 (Adamax), a jai-alai cesta-catch ReLU classifier whose fc1
bias is initialised at -5 (AdamW), a shepherd's-crook hook tanh Huber regressor with one loss
weight typed 500 for 5 (SGD Nesterov, clipped) and a nyckelharpa key-buzz cosine classifier whose
config log logit scale is typed 10 for log(10) (RAdam).

Controls: a tidal-creek slack-water Gaussian-NLL SiLU regressor (Adam, cosine annealing with one
warm restart halfway), a lambeg drum-roll ReLU Conv1d classifier (fp16 autocast with GradScaler,
SGD Nesterov, OneCycleLR, label smoothing, clipping), a marquetry veneer tied-weight tanh
autoencoder (Adadelta param groups, ReduceLROnPlateau, accumulation over 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(module: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in module.parameters()))


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
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
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
            if classifier and attach:
                ctx.targets(y)
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
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
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


# -- 1. attention logit growth: a cross-modal fusion classifier at Adam lr 3e-2 for 3e-4 -------------


class _CrossAttention(nn.Module):
    """Queries from one modality, keys and values from the other."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_max_logit = 0.0

    def forward(self, x, c):
        b, t, d = x.shape
        s, h = c.shape[1], self.heads
        q = self.q(x).reshape(b, t, h, -1).transpose(1, 2)
        k = self.k(c).reshape(b, s, h, -1).transpose(1, 2)
        v = self.v(c).reshape(b, s, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.last_max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _StrikeFusion(nn.Module):
    """Audio frames (queries) cross-attend to video frames of the plucking hand; the fused audio
    tokens are mean-pooled into a strike-type classifier."""

    def __init__(self, d_audio=12, d_video=10, dim=32, heads=2, t_audio=6, t_video=8, classes=4):
        super().__init__()
        self.audio_in = nn.Linear(d_audio, dim)
        self.video_in = nn.Linear(d_video, dim)
        self.audio_pos = nn.Embedding(t_audio, dim)
        self.video_pos = nn.Embedding(t_video, dim)
        self.ln_a = nn.LayerNorm(dim)
        self.ln_v = nn.LayerNorm(dim)
        self.cross = _CrossAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, inputs):
        a, v = inputs
        xa = self.audio_in(a) + self.audio_pos(torch.arange(a.shape[1]))
        xv = self.video_in(v) + self.video_pos(torch.arange(v.shape[1]))
        x = xa + self.cross(self.ln_a(xa), self.ln_v(xv))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(x.mean(1))


def _strikes(gen, batch=32, t_audio=6, t_video=8):
    """The audio carries a marker of the video frame the strike lands on (one-hot, noisy); the
    strike type is the quadrant of the plectrum's (x, y) in that frame."""
    frame_id = torch.eye(t_video)
    while True:
        hit = torch.randint(0, t_video, (batch,), generator=gen)
        marker = frame_id[hit][:, None, :].expand(-1, t_audio, -1)
        a = torch.cat(
            [
                marker + 0.3 * torch.randn(batch, t_audio, t_video, generator=gen),
                torch.randn(batch, t_audio, 4, generator=gen),
            ],
            -1,
        )
        xy = torch.randn(batch, t_video, 2, generator=gen)
        v = torch.cat([frame_id.expand(batch, -1, -1), xy], -1)
        pick = xy[torch.arange(batch), hit]
        y = (pick[:, 0] > 0).long() * 2 + (pick[:, 1] > 0).long()
        yield (a, v), y


@scenario(
    family="tsugaru_shamisen_plectrum_crossmodal_fusion_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("cross",),
    diverges=None,
    heldout=True,
    note="Tsugaru-shamisen plectrum-strike classifier: a hand-written cross-modal fusion model "
    "whose audio-frame tokens cross-attend to the video frames of the plucking hand (pre-LN, no "
    "QK-norm), mean-pooled into a 4-way strike-type head, cross-entropy. The Adam lr is typed "
    "3e-2 for 3e-4 with no weight decay: the cross-attention's q.k/sqrt(d) logits grow step "
    "after step.",
)
def h481_shamisen_fusion_lr(ctx) -> None:
    seeded(4811)

    def run(net, lr, attach):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        mx = []

        def after(step):
            mx.append(net.cross.last_max_logit)

        g = torch.Generator().manual_seed(48110)
        losses, _ = _loop(
            ctx,
            net,
            opt,
            _strikes(g),
            200,
            F.cross_entropy,
            classifier=True,
            after=after,
            attach=attach,
        )
        return losses, mx

    torch.manual_seed(48111)
    _, ref = run(_StrikeFusion(), 3e-4, False)
    torch.manual_seed(48112)
    model = _StrikeFusion()
    losses, mx = run(model, 3e-2, True)
    ctx.check("at the intended lr 3e-4 the logits stay under 10", max(ref) < 10)
    ctx.check("max |q.k/sqrt(d)| over 20x its start", mx[-1] > 20 * mx[0])
    ctx.check("max |q.k/sqrt(d)| over 50 at the end", mx[-1] > 50)
    ctx.check("still growing over the last half", _mean(mx[-20:]) > 1.5 * _mean(mx[90:110]))


# -- 2. loss divergence: a hand-written L2 penalty subtracted -----------------------------------------


@scenario(
    family="verdigris_patina_growth_gelu_regressor",
    optimizer="SGD momentum",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Verdigris patina-growth regressor (GELU MLP on humidity, chloride, sulphur and "
    "exposure features, MSE, SGD momentum 0.9). The L2 penalty is added by hand to the "
    "backpropagated loss but written loss - wd * sum(p**2): every weight is pushed outwards a "
    "little each step, the fit degrades and the loss climbs slowly with no other mechanism.",
)
def h481_verdigris_l2_sign(ctx) -> None:
    gen = seeded(4812)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    wd = 0.05

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    w0 = _wnorm(model)
    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4812), 250, F.mse_loss, backprop=backprop
    )
    w1 = _wnorm(model)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 100, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 3. update ratio: a trunk that is never unfrozen ----------------------------------------------


@scenario(
    family="currach_oar_loom_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Currach oar-loom flex regressor (ReLU MLP on stroke rate, oar length, load and "
    "sea-state features, MSE, RMSprop with two param groups). The trunk (fc1) is meant to be "
    "frozen for a 10-step head warm-up by setting its group's lr to 0, then unfrozen; the "
    "unfreeze step is typed 1000 for 10 in a 200-step run, so fc1 keeps receiving gradients "
    "but never moves.",
)
def h481_currach_never_unfrozen(ctx) -> None:
    gen = seeded(4813)
    model = _Net(10, 48, 1)
    trunk = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop([{"params": trunk, "lr": 0.0}, {"params": rest, "lr": 1e-3}])
    unfreeze_at = 1000  # typed for 10
    fc1_grads = []

    def before(step):
        if step == unfreeze_at:
            opt.param_groups[0]["lr"] = 1e-3

    w_fc1 = model.fc1.weight.detach().clone()
    w_head = model.head.weight.detach().clone()

    ctx.attach(model, opt)
    data = _readings(gen, 64, 10, 4813)
    losses = []
    for step in range(200):
        before(step)
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        fc1_grads.append(float(model.fc1.weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    moved_fc1 = float((model.fc1.weight - w_fc1).norm() / w_fc1.norm())
    moved_head = float((model.head.weight - w_head).norm() / w_head.norm())
    ctx.check("fc1 receives gradients (median norm over 1e-3)", _median(fc1_grads) > 1e-3)
    ctx.check("fc1 moved under 1e-6 of its norm", moved_fc1 < 1e-6)
    ctx.check("the head moved over 5% of its norm", moved_head > 0.05)
    ctx.check("finite", _finite(losses))


# -- 4. amp overflow: strain in microstrain under fp16 autocast ----------------------------------

KYUDO_STEP = 100


@scenario(
    family="kyudo_arrow_release_fp16_silu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=KYUDO_STEP,
    heldout=True,
    onset=KYUDO_STEP,
    note="Kyudo arrow-release speed regressor (SiLU MLP on bow strain, draw length and release "
    "timing, MSE, NAdam, fp16 autocast with a GradScaler). From step 100 a replaced strain "
    "gauge logs microstrain where the pipeline expects strain: the strain column is 1e6x, fc1's "
    "fp16 output overflows to inf (float32 stays finite) and the loss is non-finite from 100.",
)
def h481_kyudo_microstrain_fp16(ctx) -> None:
    gen = seeded(4814)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 8, 4814)
    losses, fp16_inf, fp32_finite = [], False, False
    for step in range(160):
        x, y = next(data)
        if step >= KYUDO_STEP:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e6
            if step == KYUDO_STEP:
                with torch.no_grad():
                    with torch.autocast("cpu", dtype=torch.float16):
                        fp16_inf = not bool(torch.isfinite(model.fc1(x)).all())
                    fp32_finite = bool(torch.isfinite(model.fc1(x)).all())
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        losses.append(float(loss))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained before the fault", _fell(losses[:KYUDO_STEP]))
    ctx.check("fc1's fp16 output is inf at the onset", fp16_inf)
    ctx.check("fc1's float32 output stays finite", fp32_finite)
    ctx.check(
        "the loss is first non-finite at the onset",
        _finite(losses[:KYUDO_STEP]) and not math.isfinite(losses[KYUDO_STEP]),
    )


# -- 5. data outlier: one shard in centimetres --------------------------------------------------

WADI_STEP = 120


@scenario(
    family="wadi_flash_flood_stage_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WADI_STEP,
    note="Wadi flash-flood stage regressor (ReLU MLP on rainfall, upstream gauge and soil "
    "features, MSE, plain SGD, clipping at 1.0). One shard (step 120) comes from a station that "
    "logs stages in centimetres where the rest use metres: inputs and targets are 100x for one "
    "batch, the loss and gradient spike, and the run recovers.",
)
def h481_wadi_centimetre_shard(ctx) -> None:
    gen = seeded(4815)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def alter(step, x, y):
        if step == WADI_STEP:
            return x * 100.0, y * 100.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4815), 240, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[WADI_STEP - 20 : WADI_STEP])
    ctx.check("loss over 20x at the shard", losses[WADI_STEP] > 20 * pre)
    ctx.check(
        "gradient over 10x the median at the shard",
        norms[WADI_STEP] > 10 * _median(norms[WADI_STEP - 40 : WADI_STEP]),
    )
    ctx.check("recovers (last 10 under 2x before)", _mean(losses[-10:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 6. nonfinite: a current ratio with no epsilon ----------------------------------------------

ELMO_STEP = 90


class _DischargeRatio(nn.Module):
    """The share of corona current in the total (corona + leakage), appended to the readings."""

    def forward(self, x):
        ratio = x[:, :1] / (x[:, :1] + x[:, 1:2])  # no eps
        return torch.cat([ratio, x[:, 2:]], 1)


class _ElmoNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.ratio = _DischargeRatio()
        self.fc1 = nn.Linear(d_in - 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.ratio(x)))))).squeeze(-1)


@scenario(
    family="st_elmos_fire_discharge_silu_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("ratio",),
    diverges=ELMO_STEP,
    heldout=True,
    onset=ELMO_STEP,
    note="St Elmo's fire discharge detector on a ship's mast (SiLU MLP, BCE with logits, "
    "Adagrad). A feature is the corona current's share of the total, computed as "
    "corona / (corona + leakage) with no epsilon; at step 90 a batch holds a reading from a "
    "sensor that was switched off (both currents 0), 0/0 gives NaN and the loss is NaN at 90.",
)
def h481_elmo_zero_over_zero(ctx) -> None:
    gen = seeded(4816)
    model = _ElmoNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(48160)
    w = torch.randn(9, generator=g)

    def data():
        while True:
            x = torch.randn(64, 10, generator=gen)
            x[:, :2] = torch.rand(64, 2, generator=gen) + 0.1
            ratio = x[:, :1] / (x[:, :1] + x[:, 1:2])
            feats = torch.cat([ratio, x[:, 2:]], 1)
            y = (feats @ w + 3 * (ratio[:, 0] - 0.5) > 0).float()
            yield x, y

    def alter(step, x, y):
        if step == ELMO_STEP:
            x = x.clone()
            x[5, :2] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, data(), 150, F.binary_cross_entropy_with_logits, alter=alter)
    ctx.check("trained before the fault", _fell(losses[:ELMO_STEP], ratio=0.8))
    ctx.check("finite before the onset", _finite(losses[:ELMO_STEP]))
    ctx.check(
        "the loss is NaN at the onset",
        len(losses) > ELMO_STEP and math.isnan(losses[ELMO_STEP]),
    )


# -- 7. exploding gradients: an identity recurrent init scaled 1.12 -------------------------------


class _TremoloRNN(nn.Module):
    """A hand-written ReLU Elman RNN over 40 frames, regressing the decay time from the last."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tremolo(gen, batch=32, length=40):
    while True:
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3 + x[:, -5:, 1].mean(1))
        yield x, y


@scenario(
    family="balalaika_tremolo_decay_elman_rnn",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Balalaika tremolo decay-time regressor (a hand-written ReLU Elman RNN over 40 frames "
    "of pick-stroke features, MSE, Adamax). The recurrent weight gets the IRNN identity init, "
    "but scaled by a gain typed 1.12 for 1.0: gradients grow by about 1.12 per step back "
    "through time and the recurrent weight's gradient is far larger than the intended cell's.",
)
def h481_balalaika_irnn_gain(ctx) -> None:
    def run(gain, attach):
        gen = seeded(4817)
        net = _TremoloRNN(gain=gain)
        opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
        if attach:
            ctx.attach(net, opt)
        data = _tremolo(gen)
        losses, rec, ratio = [], [], []
        for step in range(100):
            x, y = next(data)
            loss = F.mse_loss(net(x), y)
            loss.backward()
            rec.append(float(net.rec.weight.grad.norm()))
            if step == 0:
                g0 = float(net.states[0].grad.norm())
                gt = float(net.states[-1].grad.norm())
                ratio.append(g0 / max(gt, 1e-30))
            if attach:
                ctx.grad_norms.append(grad_norm(net))
            opt.step()
            losses.append(float(loss))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(losses[-1]):
                break
        return losses, rec, ratio[0]

    _, rec_ref, ratio_ref = run(1.0, False)
    losses, rec, ratio = run(1.12, True)
    ctx.check("dL/dh_0 over 30x dL/dh_T at gain 1.12", ratio > 30)
    ctx.check("dL/dh_0 under 10x dL/dh_T at gain 1.0", ratio_ref < 10)
    ctx.check("rec's gradient at step 0 over 10x the gain-1.0 cell's", rec[0] > 10 * rec_ref[0])


# -- 8. loss of plasticity: fc1's bias initialised at -5 -----------------------------------------


@scenario(
    family="jai_alai_cesta_catch_relu_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Jai-alai cesta-catch outcome classifier (ReLU MLP on ball speed, spin, wall angle and "
    "player position, cross-entropy, AdamW). fc1's bias is initialised with constant_(-5.0) "
    "where the sparse-activation recipe it was copied from meant -0.05: nearly every fc1 unit "
    "is negative on every input, the ReLUs are dead from the start and the net never learns.",
)
def h481_jai_alai_dead_bias(ctx) -> None:
    def build(bias):
        net = _Net(12, 48, 5)
        with torch.no_grad():
            net.fc1.weight.mul_(0.5)
            nn.init.constant_(net.fc1.bias, bias)
        return net

    def run(net, attach):
        gen = torch.Generator().manual_seed(48180)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        losses, _ = _loop(
            ctx,
            net,
            opt,
            _grades(gen, 64, 12, 5, 4818),
            200,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        return losses

    seeded(4818)
    ref = run(build(-0.05), False)
    seeded(4818)
    model = build(-5.0)
    losses = run(model, True)
    x, _ = next(_grades(torch.Generator().manual_seed(1), 512, 12, 5, 4818))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check("the loss near chance (over 0.8 ln 5)", _mean(losses[-10:]) > 0.8 * math.log(5))
    ctx.check(
        "the intended init learns (loss under half)", _mean(ref[-10:]) < 0.5 * _mean(ref[:10])
    )


# -- 9. gradient spike: one loss weight typed 500 for 5 ------------------------------------------

CROOK_STEP = 130


@scenario(
    family="shepherds_crook_hook_tanh_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CROOK_STEP,
    note="Shepherd's-crook hook-bend regressor (tanh MLP on horn thickness, heat and steaming "
    "time, Huber, SGD Nesterov, clipping at 1.0). Batches are weighted by a per-horn-type "
    "table; the weight of the type that first appears at step 130 is typed 500 for 5.0: the "
    "logged loss is ordinary, the backpropagated gradient bursts once, clipping bounds the step "
    "and the run recovers.",
)
def h481_crook_weight_typo(ctx) -> None:
    gen = seeded(4819)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (500.0 if step == CROOK_STEP else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4819),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    med = _median(norms[CROOK_STEP - 40 : CROOK_STEP])
    pre = _mean(losses[CROOK_STEP - 20 : CROOK_STEP])
    ctx.check("gradient over 50x the median at the onset", norms[CROOK_STEP] > 50 * med)
    ctx.check("the logged loss ordinary at the onset", losses[CROOK_STEP] < 2 * pre)
    ctx.check("recovers (last 10 under 1.5x before)", _mean(losses[-10:]) < 1.5 * pre)
    ctx.check("trained and finite", _fell(losses))


# -- 10. softmax collapse: a config log logit scale typed 10 for log(10) -------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.register_buffer("log_scale", torch.tensor(float(log_scale)))

    def forward(self, z):
        cos = F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _KeyBuzzNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6, log_scale=2.302585):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = _CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="nyckelharpa_key_buzz_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Nyckelharpa key-buzz classifier (GELU MLP on tangent, string and bow spectra, a cosine "
    "head with a fixed logit scale exp(log_scale) read from the config, cross-entropy, RAdam). "
    "The config's log_scale is typed 10.0 where log(10) was meant: the scale is e^10 = 22026, the softmax saturates and "
    "most rows give their target a probability of exactly 1.0 in float32.",
)
def h481_nyckelharpa_log_scale(ctx) -> None:
    def run(log_scale, attach):
        gen = seeded(4820)
        net = _KeyBuzzNet(log_scale=log_scale)
        opt = torch.optim.RAdam(net.parameters(), lr=3e-3)
        losses, _ = _loop(
            ctx,
            net,
            opt,
            _grades(gen, 64, 16, 6, 4820, spread=0.8),
            200,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )
        x, y = next(_grades(torch.Generator().manual_seed(2), 256, 16, 6, 4820, spread=0.8))
        with torch.no_grad():
            p = torch.softmax(net(x).float(), -1).gather(1, y[:, None])
        return losses, float((p == 1.0).float().mean())

    _, ref_frac = run(math.log(10.0), False)
    losses, frac = run(10.0, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% at the intended scale 10", ref_frac < 0.05)
    ctx.check("finite", _finite(losses))


# -- controls ------------------------------------------------------------------------------------


class _SlackNet(nn.Module):
    """Mean and log-variance heads for a Gaussian NLL."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="tidal_creek_slack_warm_restart_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tidal-creek slack-water duration regressor (SiLU MLP with mean and log-variance "
    "heads, Gaussian NLL, Adam at 3e-3, CosineAnnealingWarmRestarts with T_0 = 120 over 240 "
    "steps: the rate jumps back up once halfway, the loss rises a little and falls again). "
    "A healthy control.",
)
def h481_tidal_creek_warm_restart(ctx) -> None:
    gen = seeded(4821)
    model = _SlackNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=120, eta_min=1e-5)
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4821, noise=0.1),
        240,
        _gauss_nll,
        before=before,
        sched=sched,
    )
    ctx.check("the loss fell", _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.5)
    ctx.check("the lr jumps back up at step 120", lrs[120] > 50 * lrs[119])
    ctx.check(
        "the loss rises a little after the restart",
        _mean(losses[122:135]) > _mean(losses[105:118]),
    )
    ctx.check("and falls again", _mean(losses[-10:]) < _mean(losses[122:135]))


class _DrumConv(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _drum_rolls(gen, batch=32, length=64, classes=5):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = (y.float() + 1.0)[:, None] * 0.08
        x = torch.sin(freq * t) * torch.exp(-t / 40) + 0.3 * torch.randn(
            batch, length, generator=gen
        )
        yield x, y


@scenario(
    family="lambeg_drum_roll_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lambeg drum-roll pattern classifier (ReLU Conv1d over noisy strike envelopes, "
    "cross-entropy with label smoothing 0.1, fp16 autocast with a GradScaler, SGD Nesterov "
    "under OneCycleLR, clipping after unscale_). A healthy control.",
)
def h481_lambeg_fp16_onecycle(ctx) -> None:
    gen = seeded(4822)
    model = _DrumConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _drum_rolls(gen)
    losses = []
    for _ in range(steps):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        losses.append(float(loss))
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell under 0.7x", _fell(losses))
    ctx.check("finite", _finite(losses))


class _TiedAE(nn.Module):
    """A tied-weight tanh autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=20, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        return F.linear(z, self.enc.weight.T, self.dec_bias)


def _veneers(gen, batch=64, d_in=20, code=4, seed=4823):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(code, d_in, generator=g) / math.sqrt(code)
    while True:
        x = torch.randn(batch, code, generator=gen) @ basis
        x = x + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="marquetry_veneer_tied_autoencoder",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Marquetry veneer grain-pattern autoencoder (tanh encoder, decoder tied to the "
    "encoder's weight, MSE, Adadelta with two param groups, ReduceLROnPlateau, gradient "
    "accumulation over 2, clipping at 1.0, noisy readings). A healthy control.",
)
def h481_marquetry_tied_ae(ctx) -> None:
    gen = seeded(4823)
    model = _TiedAE()
    opt = torch.optim.Adadelta(
        [
            {"params": model.enc.parameters(), "lr": 1.0},
            {"params": [model.dec_bias], "lr": 0.5},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def after(step):
        plateau.step(ctx.losses[-1])

    losses, _ = _loop(
        ctx, model, opt, _veneers(gen), 200, F.mse_loss, after=after, accumulate=2, clip=1.0
    )
    ctx.check("the loss fell under 0.7x", _fell(losses))
    ctx.check("finite", _finite(losses))
