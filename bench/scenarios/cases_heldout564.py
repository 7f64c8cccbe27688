"""Held-out set 564 (``h564_``): 10 faults over 10 causes and 3 healthy controls.

Faults: lampwork bead-mandrel attention tagger whose q/k param group lr is typed 3e-1
(attention_logit_growth, AdamW); bellfounder bronze-pour regressor whose loss weight is read in
milligrams for one step (adam_second_moment_poisoned, Adam); saddle-tree flex regressor whose
hand-written window norm has no eps and meets a stuck sensor (nonfinite, Adagrad); lute
soundboard regressor fed microvolts for volts under fp16 autocast (amp_overflow, Adam);
dragon-boat drum-cadence tanh RNN with its recurrent init gain typed 3.0 (exploding_gradients,
SGD momentum); stilt-walker sway regressor whose lr was scaled by the batch size
(sharpness_above_limit, plain SGD); cooper barrel-stave regressor whose trunk lr multiplier is
0.0 (update_ratio_out_of_range, RMSprop); luthier fret-crown regressor with one shard logged in
micrometres (data_outlier, Adamax); velodrome lap-split net whose auxiliary loss weight jumps for
one step (gradient_spike, SGD Nesterov); tanbark hide-weight regressor with its hand-written
weight decay sign flipped (loss_divergence, plain SGD).
Controls: Hugging Face OPT hurdy-gurdy wheel text LM (AdamW, warm-up + cosine, clipping);
millstone-dress furrow classifier with label noise switched on halfway (loss floor steps up,
alarming-looking, NAdam); bobsled runner glide Huber regressor (RAdam, ReduceLROnPlateau,
accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digit_batches, grad_norm, scenario, seeded, text_batches


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _first_bad(xs):
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


class _Reg(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.mid = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.out = nn.Linear(hidden, out)

    def forward(self, x):
        o = self.out(self.act2(self.mid(self.act1(self.inp(x)))))
        return o.squeeze(-1) if o.shape[-1] == 1 else o


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    backprop=None,
    alter=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
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


# -- 1. attention logit growth: q/k group lr typed 3e-1 --------------------------------------------


class _Attn(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)
        self.last_logits = None

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ self.v(x)


class _BeadTagger(nn.Module):
    def __init__(self, d_in=6, dim=24, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _Attn(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


def _bead_batches(gen, batch=32, length=10, d_in=6):
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        y = x[:, :, :4].amax(1).argmax(1)
        yield x, y


@scenario(
    family="lampwork_bead_mandrel_attention_tagger",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Lampwork bead tagger (one self-attention layer over 10 torch-heat readings along the "
    "mandrel, cross-entropy, AdamW with param groups). The q/k group's lr is typed 3e-1 instead "
    "of 3e-3 and has weight_decay 0: q and k weights grow every step and the attention logits "
    "q.k/sqrt(d) grow over 20x; the loss does not blow up.",
)
def h564_lampwork_qk_lr_typo(ctx):
    gen = seeded(5641)
    model = _BeadTagger()
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 3e-1, "weight_decay": 0.0}],
        weight_decay=0.01,
    )
    peak, q0 = [], float(model.attn.q.weight.detach().norm())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _bead_batches(gen),
        150,
        F.cross_entropy,
        classifier=True,
        after=lambda s, v: peak.append(float(model.attn.last_logits.abs().max())),
    )
    ctx.check("finite", _finite(losses))
    ctx.check("attention logits grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("q weight norm grew over 5x", float(model.attn.q.weight.norm()) > 5 * q0)
    ctx.check("loss did not blow up", max(losses) < 5 * losses[0])


# -- 2. adam second moment poisoned: loss weight read in milligrams for one step -----------------


@scenario(
    family="bellfounder_bronze_pour_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Bellfounder bronze-pour regressor (ReLU MLP on melt temperature, tin share, mould "
    "moisture, predicting the cooling time; MSE, Adam). At step 60 the per-casting loss weight "
    "is read from a sheet in milligrams instead of kilograms: the loss is multiplied by 1e6 for one "
    "step, the gradient is over 1000x, Adam's second moment fills with it and the updates "
    "afterwards are over 10x smaller; the loss stalls instead of falling.",
)
def h564_bellfounder_weight_in_mg(ctx):
    gen = seeded(5642)
    model = _Reg(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, prev = [], [_params(model)]

    def after(step, v):
        cur = _params(model)
        moves.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 56420),
        220,
        F.mse_loss,
        backprop=lambda s, loss: loss * (1.0e6 if s == 60 else 1.0),
        after=after,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("gradient over 1000x at step 60", norms[60] > 1000 * _mean(norms[50:60]))
    ctx.check("updates over 10x smaller after", _mean(moves[110:200]) < 0.1 * _mean(moves[45:60]))
    ctx.check("loss stalls above its onset level", _mean(losses[180:]) > _mean(losses[50:60]))
    ctx.check("loss at step 60 ordinary", losses[60] < 2 * _mean(losses[50:60]))
    ctx.check("trained before step 60", _mean(losses[50:60]) < 0.7 * _mean(losses[:10]))


# -- 3. nonfinite: window norm without eps meets a stuck sensor -----------------------------------


class _WindowNorm(nn.Module):
    """Divides each window by its own standard deviation (hand-written, no eps)."""

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / (x - mu).pow(2).mean(-1, keepdim=True).sqrt()


class _SaddleNet(nn.Module):
    def __init__(self, d_in=16, hidden=32):
        super().__init__()
        self.norm = _WindowNorm()
        self.body = _Reg(d_in, hidden, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.norm(x))


@scenario(
    family="saddle_tree_flex_stiffness_norm_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("norm",),
    diverges=50,
    onset=50,
    heldout=True,
    note="Saddle-tree flex regressor (a hand-written per-window standardisation of 16 strain "
    "readings, then a SiLU MLP predicting stiffness; MSE, Adagrad). The window norm divides by "
    "the window's standard deviation with no eps; at step 50 a stuck strain gauge logs a "
    "constant window: 0/0 in norm, NaN output, loss NaN at step 50.",
)
def h564_saddle_tree_stuck_gauge(ctx):
    gen = seeded(5643)
    model = _SaddleNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}
    model.norm.register_forward_hook(
        lambda m, i, o: seen.__setitem__("bad", bool((~torch.isfinite(o)).any()))
    )
    bad_flags = []

    def alter(step, x, y):
        if step == 50:
            x = x.clone()
            x[3] = 0.0
        return x, y

    def after(step, v):
        bad_flags.append(seen["bad"])

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 32, 16, 56430), 100, F.mse_loss, alter=alter, after=after
    )
    ctx.check("loss first non-finite at step 50", _first_bad(losses) == 50)
    ctx.check("norm's output non-finite at step 50", len(bad_flags) > 50 and bad_flags[50])
    ctx.check("norm finite before step 50", not any(bad_flags[:50]))
    ctx.check("trained before step 50", _mean(losses[40:50]) < 0.8 * _mean(losses[:10]))


# -- 4. amp overflow: microvolts for volts under fp16 autocast ------------------------------------


@scenario(
    family="lute_soundboard_voltage_fp16_conv_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("conv",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Lute soundboard regressor (a Conv1d over 32 piezo samples of a tap, then a GELU head "
    "predicting the plate's mode frequency; MSE, Adam, fp16 autocast + GradScaler). From step 80 "
    "a new pickup preamp logs microvolts where volts were expected (x1e6): conv runs in fp16, "
    "its output passes 65504 and is non-finite (finite in float32), the loss is non-finite at "
    "step 80.",
)
def h564_lute_microvolts(ctx):
    gen = seeded(5644)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 8, 5, padding=2)
            self.act = nn.GELU()
            self.head = nn.Linear(8 * 32, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(x[:, None])).flatten(1)).squeeze(-1)

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.conv.register_forward_hook(
        lambda m, i, o: seen.__setitem__("conv", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 32, 32, 56440)
    losses, bad, bad_x = [], [], None
    for step in range(120):
        x, y = next(batches)
        if step >= 80:
            x = x * 1.0e6
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        bad.append(seen["conv"][1])
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
    ctx.check("conv ran in fp16", seen["conv"][0] == torch.float16)
    ctx.check("loss first non-finite at step 80", _first_bad(losses) == 80)
    ctx.check("conv's fp16 output non-finite at step 80", len(bad) > 80 and bad[80])
    ctx.check("conv finite before step 80", not any(bad[:80]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.8 * _mean(losses[:10]))


# -- 5. exploding gradients: recurrent init gain typed 3.0 ----------------------------------------


class _DrumRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=3.0, act=torch.tanh):
        super().__init__()
        self.act = act
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.normal_(self.rec.weight, std=gain / math.sqrt(hidden))
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _drum_batches(gen, batch=32, length=30):
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = x[:, :, 0].mean(1) * 3.0 + 0.5 * x[:, -5:, 1].mean(1)
        yield x, y


@scenario(
    family="dragon_boat_drum_cadence_tanh_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Dragon-boat drum-cadence model (a hand-written tanh Elman RNN over 30 strokes of "
    "paddle force, predicting the boat's split; MSE, SGD momentum 0.9). The recurrent init "
    "gain is typed 3.0 instead of 0.3: the recurrent map is expanding, the gradient reaching "
    "the first stroke's state is over 1000x the last's at the start.",
)
def h564_dragon_boat_rec_gain(ctx):
    gen = seeded(5645)
    model = _DrumRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _drum_batches(gen)
    losses, ratios = [], []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.states[0].grad.norm())
        g_last = float(model.states[-1].grad.norm())
        ratios.append(g0 / max(g_last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("first stroke's gradient over 100x the last's at step 0", ratios[0] > 100)
    ctx.check("over 1000x at step 0", ratios[0] > 1000)
    ctx.check("finite", _finite(losses))


# -- 6. sharpness above limit: lr scaled by the batch size ---------------------------------------


def _top_eig(model, loss_fn, x, y, iters=20):
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


@scenario(
    family="stilt_walker_sway_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Stilt-walker sway regressor (tanh MLP on stilt height, stride, wind and load, "
    "predicting lateral sway; MSE, plain SGD). The lr is written as base_lr * batch_size "
    "(0.02 * 128 = 2.56) instead of base_lr * batch_size / 256: lr times the top Hessian "
    "eigenvalue is past 2 from the start and the loss blows up.",
)
def h564_stilt_walker_lr_times_batch(ctx):
    gen = seeded(5646)
    model = _Reg(10, hidden=32, act=nn.Tanh)
    lr = 0.02 * 128
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 128, 10, 56460)
    x0, y0 = next(batches)
    eig = _top_eig(model, F.mse_loss, x0, y0)
    losses, _ = _loop(ctx, model, opt, batches, 80, F.mse_loss)
    ctx.check("lr x top eigenvalue past 2 at step 0", lr * eig > 2.0)
    ctx.check("loss blew up over 100x", max(losses) > 100 * losses[0] or not _finite(losses))


# -- 7. update ratio out of range: trunk lr multiplier typed 0.0 ---------------------------------


@scenario(
    family="cooper_barrel_stave_bend_frozen_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("inp",),
    diverges=None,
    heldout=True,
    note="Cooper barrel-stave regressor (ReLU MLP on stave thickness, moisture, fire heat and "
    "bend time, predicting spring-back; MSE, RMSprop with param groups). The config's lr_mult "
    "for the first layer is written 0.0 (meant 1.0): inp never moves while the other layers "
    "train.",
)
def h564_cooper_stave_lr_mult_zero(ctx):
    gen = seeded(5647)
    model = _Reg(12, hidden=48)
    base, mult = 2e-3, {"inp": 0.0, "mid": 1.0, "out": 1.0}
    groups = [
        {"params": list(getattr(model, n).parameters()), "lr": base * m} for n, m in mult.items()
    ]
    opt = torch.optim.RMSprop(groups, lr=base)
    w0 = model.inp.weight.detach().clone()
    m0 = model.mid.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 56470), 150, F.mse_loss)
    ctx.check("inp never moved", bool(torch.equal(model.inp.weight.detach(), w0)))
    ctx.check("mid moved", float((model.mid.weight.detach() - m0).norm()) > 0.01 * float(m0.norm()))
    ctx.check("loss fell", _mean(losses[-10:]) < 0.8 * _mean(losses[:10]))


# -- 8. data outlier: one shard logged in micrometres ---------------------------------------------


@scenario(
    family="luthier_fret_crown_wear_outlier_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Luthier fret-crown wear regressor (SiLU MLP on string gauge, playing hours, bend "
    "habit and fret alloy, predicting crown wear; MSE, Adamax). The batch at step 90 comes from "
    "a shard whose wear targets were logged in micrometres instead of millimetres (x1000): the "
    "loss jumps over 1000x for that step, then the run recovers.",
)
def h564_luthier_fret_micrometres(ctx):
    gen = seeded(5648)
    model = _Reg(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 90 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 56480), 200, F.mse_loss, alter=alter
    )
    ctx.check("finite", _finite(losses))
    ctx.check("loss over 1000x at step 90", losses[90] > 1000 * _mean(losses[80:90]))
    ctx.check("gradient over 100x at step 90", norms[90] > 100 * _mean(norms[80:90]))
    ctx.check("recovered", _mean(losses[-10:]) < 2 * _mean(losses[80:90]))


# -- 9. gradient spike: auxiliary loss weight jumps for one step ----------------------------------


@scenario(
    family="velodrome_banking_lap_split_aux_loss_net",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Velodrome lap-split net (GELU MLP on cadence, gear, banking line and power, predicting "
    "the lap split plus an auxiliary cadence-smoothness term; MSE, SGD Nesterov). The auxiliary "
    "weight schedule indexes its list with the epoch number instead of the epoch fraction and "
    "returns 5.0 (meant 1e-4) for step 100 only: the gradient is over 50x for that step, the logged main "
    "loss is ordinary, and the run recovers.",
)
def h564_velodrome_aux_weight_jump(ctx):
    gen = seeded(5649)
    model = _Reg(8, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        w = 5.0 if step == 100 else 1e-4
        aux = sum(p.pow(2).sum() for p in model.mid.parameters())
        return loss + w * aux

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 56490), 200, F.mse_loss, backprop=backprop
    )
    ctx.check("finite", _finite(losses))
    ctx.check("gradient over 50x at step 100", norms[100] > 50 * _mean(norms[90:100]))
    ctx.check("main loss ordinary at step 100", losses[100] < 2 * _mean(losses[90:100]))
    ctx.check("recovered", _mean(losses[-10:]) < 2 * _mean(losses[90:100]))


# -- 10. loss divergence: hand-written weight decay with its sign flipped -------------------------


@scenario(
    family="tanbark_tanning_hide_weight_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tanbark tanning regressor (tanh MLP on bark strength, soak days, liquor temperature "
    "and hide thickness, predicting the tanned hide's weight gain; MSE, plain SGD with a "
    "hand-written decoupled weight decay). The decay is written p.mul_(1 + lr * wd) instead of "
    "p.mul_(1 - lr * wd): the weights grow every step and the loss climbs slowly to over 2x "
    "its best with no jump.",
)
def h564_tanbark_decay_sign(ctx):
    gen = seeded(56410)
    model = _Reg(8, hidden=48, act=nn.Tanh)
    lr, wd = 0.01, 0.4
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n0 = float(_params(model).norm())

    def after(step, v):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 56500), 300, F.mse_loss, after=after)
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = [b / a for a, b in zip(means[:-1], means[1:], strict=True)]
    ctx.check("finite", _finite(losses))
    ctx.check("weights grew over 2x", float(_params(model).norm()) > 2 * n0)
    ctx.check("loss climbed to over 2x its best", _mean(losses[-10:]) > 2 * min(losses))
    ctx.check("no 10-step mean jumps over 3x", max(jumps) < 3.0)


# -- 11. control: Hugging Face OPT text LM, warm-up + cosine, clipping ----------------------------


@scenario(
    family="hf_opt_hurdy_gurdy_wheel_text_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hurdy-gurdy wheel text LM: a Hugging Face OPT decoder built from a tiny config (2 "
    "layers, width 32) trained on byte text as a stand-in for tune-book notation; "
    "cross-entropy, AdamW, linear warm-up then cosine decay, gradient clipping at 1.0. Healthy.",
)
def h564_hurdy_gurdy_opt_lm(ctx):
    from transformers import OPTConfig, OPTForCausalLM

    gen = seeded(56411)
    config = OPTConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = OPTForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 120, 12
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )

    def loss_fn(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        loss = loss_fn(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _mean(losses[-10:]) < 0.7 * _mean(losses[:10]))


# -- 12. control (alarming): label noise switched on halfway --------------------------------------


@scenario(
    family="millstone_dress_furrow_label_noise_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Millstone-dress furrow classifier (ReLU MLP on 8x8 scans of a dressed stone face, 10 "
    "furrow patterns; cross-entropy, NAdam). Halfway through, the second annotator's labels "
    "join the stream and 40% of each batch's labels are resampled at random: the loss floor "
    "steps up and stays higher, which looks alarming, but the model still trains and its "
    "accuracy on clean labels stays high. Healthy.",
)
def h564_millstone_label_noise_halfway(ctx):
    gen = seeded(56412)
    model = _Reg(64, hidden=64, out=10)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    steps = 200
    clean = []

    def alter(step, x, y):
        clean.append((x, y))
        if step >= steps // 2:
            flip = torch.rand(len(y), generator=gen) < 0.4
            y = torch.where(flip, torch.randint(0, 10, y.shape, generator=gen), y)
        return x, y

    losses, _ = _loop(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    with torch.no_grad():
        x, y = clean[-1]
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite", _finite(losses))
    ctx.check("trained in the first half", _mean(losses[90:100]) < 0.5 * _mean(losses[:10]))
    ctx.check("loss floor stepped up", _mean(losses[-20:]) > 1.5 * _mean(losses[80:100]))
    ctx.check("clean accuracy stays over 85%", acc > 0.85)


# -- 13. control: Huber regressor, RAdam, ReduceLROnPlateau, accumulation 2, clipping -------------


@scenario(
    family="bobsled_runner_ice_glide_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bobsled runner glide regressor (SiLU MLP on runner polish, ice temperature, sled mass "
    "and track humidity, predicting the glide coefficient; Huber, RAdam, ReduceLROnPlateau, "
    "gradient accumulation over 2 micro-batches, clipping at 1.0, noisy targets). Healthy.",
)
def h564_bobsled_glide_radam(ctx):
    gen = seeded(56413)
    model = _Reg(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=30)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 10, 56530, noise=0.2)
    losses = []
    for _ in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(total))
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _mean(losses[-10:]) < 0.7 * _mean(losses[:10]))
