"""Held-out set 605 (``h605_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: sheepdog whistle-command attention pointer whose QK-norm was dropped in a refactor
(attention_logit_growth, Adam); curling-stone sweep-outcome classifier on separable
data whose weight decay key is misspelled, so it trains with none (output_logit_divergence,
AdamW); geyser eruption-interval regressor whose in-model sqrt(pressure - boiling pressure) has
no clamp and meets a cold-reservoir batch (nonfinite, Adadelta); pottery kiln cone-slump Huber
regressor fed one shard with a thermocouple stuck at its 16-bit ceiling (data_outlier, NAdam,
clipping); tennis-racket string-tension BCE classifier whose logit penalty weight is read from
the wrong key for one step (gradient_spike, SGD momentum); glassblower gather-weight regressor
whose warm-up target lr is typed 1.5 for 0.015 (sharpness_above_limit, plain SGD); hurricane
rainband-spacing ReLU Elman RNN whose identity recurrent init has a stray gain (exploding_gradients,
RMSprop); bell-founder bell-pitch regressor whose trunk group lr is typed 3e-10 for 3e-3
(update_ratio_out_of_range, Adamax, param groups); river-delta silt-accretion regressor whose
target loader adds a tide-gauge offset that accumulates every batch (loss_divergence, ASGD);
theremin pitch-antenna regressor under fp16 autocast fed capacitance in pF instead of nF
(amp_overflow, RAdam, GradScaler).
Controls: semaphore flag-sequence Hugging Face BART transcriber from a tiny config (AdamW, linear
warm-up, clipping); lawn-bowls jack-distance classifier whose batch size is doubled at step 100
with its learning rate doubled too (linear scaling rule: the gradient norm drops and the update
size jumps; alarming-looking, SGD Nesterov, label smoothing); bell-ringing rope-sally conv1d
classifier (Adagrad, ReduceLROnPlateau, 2-step accumulation, noisy batches, clipping).
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.5 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.0, noise=1.0):
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


def _update(ctx, model, opt, loss, total=None, clip=None):
    (loss if total is None else total).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


# -- faults ---------------------------------------------------------------------------------------


class _PointerAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)
        self.last_logits = None

    def forward(self, query, keys):
        # the refactor dropped the QK-norm: q = self.q_norm(self.q(query)), k = self.k_norm(...)
        logits = (self.q(query)[:, None, :] * self.k(keys)).sum(-1) * self.scale
        self.last_logits = logits.detach()
        return logits


class _SheepdogPointer(nn.Module):
    def __init__(self, d_in=10, dim=24):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _PointerAttention(dim)

    def forward(self, command, cues):
        return self.attn(self.embed(command), self.embed(cues))


@scenario(
    "sheepdog_whistle_command_attention_pointer",
    "Adam",
    "attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="a refactor dropped the pointer attention's QK-norm (LayerNorm on q and k): on a pointer "
    "task that rewards sharp attention, at Adam lr 1e-2, the q.k/sqrt(d) logits grow over 20x",
)
def h605_sheepdog_attention_temperature(ctx):
    gen = seeded(6051)
    model = _SheepdogPointer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    first = None
    for _ in range(200):
        cues = torch.randn(32, 8, 10, generator=gen)
        y = torch.randint(0, 8, (32,), generator=gen)
        command = cues[torch.arange(32), y] + 0.3 * torch.randn(32, 10, generator=gen)
        ctx.targets(y)
        logits = model(command, cues)
        loss = F.cross_entropy(logits, y)
        if first is None:
            first = float(model.attn.last_logits.abs().max())
        _update(ctx, model, opt, loss)
    last = float(model.attn.last_logits.abs().max())
    ctx.check("attention logits grew over 20x", last > 20 * first)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "curling_stone_sweep_outcome_classifier",
    "AdamW",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="the config spells weight decay 'wd' but the code reads 'weight_decay' (default 0.0): "
    "on separable sweep readings the head's logits grow without bound",
)
def h605_curling_no_decay_logits(ctx):
    gen = seeded(6052)
    model = _Net(12, 48, 5, act=nn.GELU)
    config = {"lr": 1e-2, "wd": 0.05}
    opt = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config.get("weight_decay", 0.0)
    )
    ctx.attach(model, opt)
    data = _classes(gen, 64, 12, 5, 6052, spread=3.0, noise=0.5)
    first = last = None
    for _ in range(250):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if first is None:
            first = float(logits.detach().abs().max())
        last = float(logits.detach().abs().max())
        _update(ctx, model, opt, loss)
    ctx.check("head logits grew over 20x", last > 20 * first)
    ctx.check("losses finite", _finite(ctx.losses))


class _SqrtHead(nn.Module):
    def forward(self, excess):
        return torch.sqrt(excess)  # missing clamp(min=0)


class _GeyserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.excess_sqrt = _SqrtHead()
        self.fc1 = nn.Linear(8, 48)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(48, 1)

    def forward(self, x, pressure, boiling):
        h = torch.cat([x, self.excess_sqrt(pressure - boiling)[:, None]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


@scenario(
    "geyser_eruption_interval_sqrt_regressor",
    "Adadelta",
    "nonfinite",
    where=("excess_sqrt",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model sqrt(reservoir pressure - boiling pressure) lost its clamp; a cold-reservoir "
    "batch at step 80 has pressure below boiling, sqrt of a negative is NaN",
)
def h605_geyser_sqrt_negative(ctx):
    gen = seeded(6053)
    model = _GeyserNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    data = _readings(gen, 64, 7, 6053)
    nan_at = None
    for step in range(140):
        x, y = next(data)
        boiling = 1.0 + 0.1 * torch.rand(64, generator=gen)
        pressure = boiling + 0.05 + 0.5 * torch.rand(64, generator=gen)
        if step == 80:
            pressure[:6] = boiling[:6] - 0.2  # cold reservoir
        loss = F.mse_loss(model(x, pressure, boiling), y)
        _update(ctx, model, opt, loss)
        if not math.isfinite(float(loss.detach())):
            nan_at = step
            break
    ctx.check("loss is NaN first at step 80", nan_at == 80)
    ctx.check("losses finite before step 80", _finite(ctx.losses[:80]))
    ctx.check("loss fell before step 80", _fell(ctx.losses[:80]))


@scenario(
    "pottery_kiln_cone_slump_huber_regressor",
    "NAdam",
    "data_outlier",
    onset=110,
    heldout=True,
    note="one shard at step 110 has a thermocouple stuck at its 16-bit ceiling (65535 raw "
    "counts in a feature that is otherwise standardised); Huber loss and clipping, the run recovers",
)
def h605_kiln_stuck_thermocouple(ctx):
    gen = seeded(6054)
    model = _Net(9, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _readings(gen, 64, 9, 6054)
    for step in range(220):
        x, y = next(data)
        if step == 110:
            x = x.clone()
            x[:, 2] = 65535.0
        loss = F.huber_loss(model(x).squeeze(-1), y, delta=1.0)
        _update(ctx, model, opt, loss, clip=1.0)
    L, G = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 110 over 20x the median before", L[110] > 20 * _median(L[60:110]))
    ctx.check(
        "raw gradient at step 110 over 10x the median before", G[110] > 10 * _median(G[60:110])
    )
    ctx.check(
        "run recovers: last losses below 2x pre-onset median",
        _mean(L[-10:]) < 2 * _median(L[60:110]),
    )
    ctx.check("losses finite", _finite(L))


@scenario(
    "tennis_racket_string_tension_bce_classifier",
    "SGD",
    "gradient_spike",
    onset=90,
    heldout=True,
    note="the logit-norm penalty weight is read from 'reg_scale' (50) instead of 'reg_weight' "
    "(5e-4) for step 90 only: one gradient burst, the logged BCE loss is ordinary",
)
def h605_tennis_penalty_key(ctx):
    gen = seeded(6055)
    model = _Net(10, 48, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _classes(gen, 64, 10, 2, 6055, spread=1.0)
    cfg = {"reg_weight": 5e-4, "reg_scale": 50.0}
    for step in range(180):
        x, y = next(data)
        logits = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        w = cfg["reg_scale"] if step == 90 else cfg["reg_weight"]
        total = loss + w * logits.pow(2).mean()
        _update(ctx, model, opt, loss, total=total)
    L, G = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 90 over 30x the median before", G[90] > 30 * _median(G[40:90]))
    ctx.check("logged loss at step 90 ordinary (under 2x median)", L[90] < 2 * _median(L[40:90]))
    ctx.check("losses finite", _finite(L))
    ctx.check("loss fell", _fell(L[:90]))


@scenario(
    "glassblower_gather_weight_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up over 60 steps whose target lr is typed 1.5 for 0.015: once the lr "
    "passes 2/sharpness the loss oscillates and blows up",
)
def h605_glassblower_warmup_typo(ctx):
    gen = seeded(6056)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 60))
    ctx.attach(model, opt)
    data = _readings(gen, 64, 8, 6056)
    for _ in range(150):
        x, y = next(data)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        _update(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(float(loss.detach())):
            break
    L = ctx.losses
    ctx.check("loss fell during early warm-up", min(L[:30]) < 0.8 * L[0])
    ctx.check(
        "loss blew up: over 100x its best or non-finite", not _finite(L) or max(L) > 100 * min(L)
    )


class _RainbandRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.cell = nn.RNNCell(d_in, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


@scenario(
    "hurricane_rainband_spacing_relu_rnn",
    "RMSprop",
    "exploding_gradients",
    where=("cell",),
    heldout=True,
    note="IRNN identity recurrent init written with gain 1.15 (meant 1.0): the backward signal "
    "grows through 24 time steps, the early states' gradients dwarf the last's; the first "
    "steps' gradients are huge, RMSprop shrinks the recurrence and the run survives",
)
def h605_rainband_irnn_gain(ctx):
    gen = seeded(6057)
    model = _RainbandRNN()
    with torch.no_grad():
        model.cell.weight_hh.copy_(1.15 * torch.eye(32))
        model.cell.bias_hh.zero_()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    ratio = 0.0
    for step in range(150):
        x = torch.randn(32, 24, 4, generator=gen).abs()
        y = x[:, :, 0].mean(1) - x[:, :, 1].mean(1)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            g0 = model.states[0].grad.norm()
            gT = model.states[-1].grad.norm()
            ratio = float(g0 / gT.clamp(min=1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    L = ctx.losses
    ctx.check("first state's gradient over 10x the last's at step 0", ratio > 10)
    G = ctx.grad_norms
    ctx.check("step-0 gradient over 100x the median of the last 50", G[0] > 100 * _median(G[-50:]))
    ctx.check("losses finite", _finite(L))


@scenario(
    "bellfounder_bell_pitch_two_group_regressor",
    "Adamax",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="param groups: the trunk (fc1) group's lr typed 3e-10 for 3e-3; fc1's updates are "
    "about 1e-9 of its weights, it never moves while the rest trains",
)
def h605_bellfounder_group_typo(ctx):
    gen = seeded(6058)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 3e-10},  # typo for 3e-3
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 3e-3},
        ]
    )
    ctx.attach(model, opt)
    data = _readings(gen, 64, 10, 6058)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    for _ in range(200):
        x, y = next(data)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        _update(ctx, model, opt, loss)
    moved = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", moved < 1e-6)
    ctx.check("head moved over 10% of its norm", head_moved > 0.1)
    ctx.check("losses finite", _finite(ctx.losses))


@scenario(
    "river_delta_silt_accretion_asgd_regressor",
    "ASGD",
    "loss_divergence",
    heldout=True,
    note="the target loader adds the tide-gauge datum correction to a running offset every batch "
    "instead of once: the targets drift away and the loss climbs slowly after an initial fall",
)
def h605_delta_drifting_datum(ctx):
    gen = seeded(6059)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _readings(gen, 64, 8, 6059)
    offset = 0.0
    for step in range(260):
        x, y = next(data)
        offset += 4e-4 * step  # datum correction re-added, growing, every batch
        loss = F.mse_loss(model(x).squeeze(-1), y + offset)
        _update(ctx, model, opt, loss)
    L = ctx.losses
    best = min(_mean(L[i : i + 5]) for i in range(0, 100, 5))
    jumps = max(b / max(a, 1e-12) for a, b in zip(L[:-1], L[1:], strict=False))
    ctx.check("loss climbs to over 3x its best", _mean(L[-10:]) > 3 * best)
    ctx.check("no single-step jump over 3x", jumps < 3.0)
    ctx.check("losses finite", _finite(L))


@scenario(
    "theremin_pitch_antenna_fp16_regressor",
    "RAdam",
    "amp_overflow",
    where=("fc1",),
    diverges=75,
    onset=75,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 75 the antenna loader sends capacitance in pF "
    "instead of nF: fc1's fp16 output overflows to inf, the scaler skips every step",
)
def h605_theremin_pf_overflow(ctx):
    gen = seeded(60510)
    model = _Net(6, 64, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 6, 60510)
    overflow = False
    for step in range(130):
        x, y = next(data)
        if step >= 75:
            x = x.clone()
            x[:, 1] = (x[:, 1] + 3.0) * 1000.0 * 50.0  # pF, not nF
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h))))
        if step == 75:
            overflow = (not bool(torch.isfinite(h).all())) and bool(
                torch.isfinite(F.linear(x, model.fc1.weight, model.fc1.bias)).all()
            )
        loss = F.mse_loss(out.float().squeeze(-1), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("fc1's fp16 output non-finite at step 75, finite in float32", overflow)
    ctx.check("loss finite before step 75", _finite(ctx.losses[:75]))
    ctx.check("loss non-finite from step 75", not _finite(ctx.losses[75:]))
    ctx.check("grad scale fell over 100x", ctx.scales[-1] < ctx.scales[74] / 100)


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "semaphore_flag_sequence_bart_transcriber",
    "AdamW",
    "healthy",
    heldout=True,
    note="Hugging Face BART from a tiny config (no download) transcribes generated flag-position "
    "drill sequences (consecutive positions) into letters (a fixed substitution); AdamW, linear warm-up, clipping",
)
def h605_semaphore_bart(ctx):
    from transformers import BartConfig, BartForConditionalGeneration

    gen = seeded(60511)
    vocab = 40
    config = BartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    table = torch.randperm(18, generator=gen) + 20
    for _ in range(120):
        start = torch.randint(0, 18, (32, 1), generator=gen)
        src = (start + torch.arange(6)) % 18 + 3  # a drill: consecutive flag positions
        tgt = table[src - 3]
        ctx.targets(tgt.reshape(-1))
        out = model(input_ids=src, labels=tgt)
        _update(ctx, model, opt, out.loss, clip=1.0)
        sched.step()
    ctx.check("loss fell over 30%", _fell(ctx.losses, ratio=0.7))


@scenario(
    "bowls_jack_distance_batch_doubling_classifier",
    "SGD",
    "healthy",
    onset=100,
    heldout=True,
    note="linear scaling rule: at step 100 the batch grows from 32 to 64 and the lr doubles "
    "from 0.05 to 0.1 with it; the gradient norm drops and the update size jumps (alarming-"
    "looking), the run trains on; SGD Nesterov, label smoothing",
)
def h605_bowls_batch_doubling(ctx):
    gen = seeded(60512)
    model = _Net(12, 64, 6, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _classes(gen, 32, 12, 6, 60512, spread=1.2, noise=1.0)
    steps = []
    for step in range(220):
        if step == 100:
            data = _classes(gen, 64, 12, 6, 60512, spread=1.2, noise=1.0)
            for group in opt.param_groups:
                group["lr"] = 0.1
        x, y = next(data)
        ctx.targets(y)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _update(ctx, model, opt, loss)
        steps.append(
            float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
        )
    G, L = ctx.grad_norms, ctx.losses
    ctx.check(
        "update size rose at the doubling (mean of 10 after over 1.2x the 10 before)",
        _mean(steps[100:110]) > 1.2 * _mean(steps[90:100]),
    )
    ctx.check("loss fell", _fell(L))
    ctx.check(
        "last losses not above those before the doubling", _mean(L[-20:]) <= _mean(L[80:100]) * 1.1
    )
    ctx.check(
        "gradient norm std fell after the doubling",
        torch.tensor(G[100:150]).std() < torch.tensor(G[50:100]).std(),
    )


class _SallyConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    "bell_ringing_rope_sally_conv1d_classifier",
    "Adagrad",
    "healthy",
    heldout=True,
    note="classifies rope-tension traces of four stroke kinds (generated, noisy); Adagrad, "
    "ReduceLROnPlateau, 2-micro-batch accumulation, clipping",
)
def h605_rope_sally_conv(ctx):
    gen = seeded(60513)
    model = _SallyConv()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    t = torch.linspace(0, 1, 32)
    for _ in range(150):
        total = 0.0
        for _micro in range(2):
            y = torch.randint(0, 4, (32,), generator=gen)
            freq = (2 + 2 * y).float()[:, None]
            x = torch.sin(2 * math.pi * freq * t) + 0.8 * torch.randn(32, 32, generator=gen)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y) / 2
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
        plateau.step(float(total))
    ctx.check("loss fell over 50%", _fell(ctx.losses, ratio=0.5))
