"""Held-out set 601 (``h601_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: bodhran tipper-stroke classifier whose temperature is read in seconds from a milliseconds
key (softmax_collapse, Adamax); geyser eruption-interval Gaussian-NLL net whose in-model
log(chamber pressure) has no clamp and meets a dead-sensor batch (nonfinite, RAdam); stilt-walker
gait 12-deep ReLU MLP whose init gain is typed 2.2 (exploding_gradients, SGD momentum); kite-line
tension tanh regressor with SGD lr typed 3.0 for 0.03 (sharpness_above_limit, plain SGD);
bell-ringing rope-pull regressor whose fc2 group lr is typed 1e-9 (update_ratio_out_of_range,
Adam, param groups); sourdough proof-rise Huber regressor fed one shard in grams instead of kg
(data_outlier, NAdam, ReduceLROnPlateau, clipping); kiln-crack BCE classifier whose loss weight is
read as a percentage for one step (gradient_spike, RMSprop, clipping); glacier-calving front
regressor with its hand-written weight decay sign flipped (loss_divergence, Adam); archery
arrow-drift regressor resumed without its Adagrad state (loss_spike, Adagrad); hang-glider
thermal-climb fp16 regressor fed vario readings in mm/s (amp_overflow, AdamW, GradScaler).
Controls: taiko drum-pattern residual classifier with layer-wise lr decay (0.8x per layer, the
embedding 10x below the head, alarming-looking); bagpipe pibroch-notation Qwen2 decoder from a tiny
config (AdamW, warm-up + cosine, clipping); ice-climbing axe-placement conv1d classifier (SGD
Nesterov, OneCycleLR, label smoothing, 2-step accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded, text_batches


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
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.sin(x @ w / math.sqrt(d_in)) + 0.4 * torch.tanh(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.2, noise=1.0):
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
    alter=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    after=None,
    before=None,
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
        total = backprop(step, loss, out, y) if backprop is not None else loss
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
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


# -- faults ---------------------------------------------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, k, temp):
        super().__init__(d_in, 48, k, act=nn.GELU)
        self.temp = temp

    def forward(self, x):
        return self.head(self.features(x)) / self.temp


@scenario(
    "bodhran_tipper_stroke_ms_temperature_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="config key softmax_temp_ms=2.0 read as seconds: logits divided by 0.002; the softmax "
    "saturates and most rows' target probability rounds to exactly 1.0",
)
def h601_bodhran_stroke_temperature_ms(ctx):
    gen = seeded(6011)
    model = _TempNet(12, 6, temp=2.0 / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def after(step, out, y):
        collapsed.append(collapsed_fraction(out, y))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 6, 61),
        120,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows' target probability is exactly 1.0", max(collapsed) > 0.4)
    ctx.check("the logits' scale is over 100 at the end", model.temp < 0.01 and _finite(losses))


class _LogPressure(nn.Module):
    def forward(self, p):
        return torch.log(p)  # the clamp(min=1e-3) was dropped in a refactor


class _GeyserNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.logp = _LogPressure()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        feats = torch.cat([x[:, :-1], self.logp(x[:, -1:])], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(feats)))))


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return (0.5 * (log_var + (y - mu) ** 2 / log_var.exp())).mean()


@scenario(
    "geyser_eruption_interval_logpressure_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("logp",),
    diverges=90,
    heldout=True,
    onset=90,
    note="in-model log(chamber pressure) lost its clamp; at step 90 a batch from a dead "
    "pressure sensor reads 0.0: log 0 = -inf, the loss is NaN",
)
def h601_geyser_log_pressure_unclamped(ctx):
    gen = seeded(6012)
    model = _GeyserNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 8, 62)

    def batches():
        while True:
            x, y = next(base)
            p = 0.5 + torch.rand(len(y), 1, generator=gen)
            yield torch.cat([x, p], 1), y + 0.3 * torch.log(p[:, 0])

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:5, -1] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 150, _gauss_nll, alter=alter)
    ctx.check("the loss is finite before step 90", _finite(losses[:90]))
    ctx.check("the loss is NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))


@scenario(
    "stilt_walker_gait_phase_12deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="init gain typed 2.2 where kaiming's sqrt(2) was meant, on a 12-deep ReLU MLP: the "
    "backward signal grows layer by layer toward the input, the run blows up",
)
def h601_stilt_gait_init_gain(ctx):
    gen = seeded(6013)
    sizes = [16] + [64] * 11 + [1]
    layers = []
    for i in range(12):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.normal_(lin.weight, std=2.2 / math.sqrt(sizes[i]))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < 11:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1.5e-5, momentum=0.9)
    ratio = []

    def backprop(step, loss, out, y):
        if step == 0:
            loss.backward(retain_graph=True)
            g0 = model[0].bias.grad.norm()
            g_last = model[20].bias.grad.norm()
            ratio.append(float(g0 / g_last))
            opt.zero_grad()
        return loss

    def mse(out, y):
        return F.mse_loss(out.squeeze(-1), y)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 16, 63), 150, mse, backprop=backprop)
    ctx.check(
        "the backward signal at layer 0 is over 10x the eleventh layer's at step 0", ratio[0] > 10
    )
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        (not _finite(losses)) or max(losses) > 100 * losses[0],
    )


@scenario(
    "kite_line_tension_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="SGD lr typed 3.0 for 0.03: lr x sharpness is past 2 from the start, the loss blows up",
)
def h601_kite_line_lr_typo(ctx):
    gen = seeded(6014)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 64), 100, F.mse_loss)
    ctx.check(
        "the loss blows up (non-finite or over 50x its start)",
        (not _finite(losses)) or max(losses) > 50 * losses[0],
    )


@scenario(
    "bell_ringing_rope_pull_group_typo_silu_regressor",
    "Adam",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="param group lr for fc2 typed 1e-9 for 1e-3: fc2 never moves, the run trains on slowly",
)
def h601_bell_rope_group_lr_typo(ctx):
    gen = seeded(6015)
    model = _Net(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters()},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters()},
        ],
        lr=1e-3,
    )
    w0 = _flat(model.fc2)
    h0 = _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 65), 200, F.mse_loss)
    moved = float((_flat(model.fc2) - w0).norm() / w0.norm())
    head_moved = float((_flat(model.head) - h0).norm() / h0.norm())
    ctx.check("fc2 moved less than 1e-5 relative", moved < 1e-5)
    ctx.check("the head moved over 5% relative", head_moved > 0.05)
    ctx.check("the loss is finite", _finite(losses))


@scenario(
    "sourdough_proof_rise_grams_shard_huber_regressor",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one shard logged flour mass in grams instead of kilograms: the batch at step 110 has "
    "inputs 1000x too large; clipped, the run recovers",
)
def h601_sourdough_grams_shard(ctx):
    gen = seeded(6016)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 66),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
        plateau=plateau,
    )
    ctx.check(
        "the loss at step 110 is over 20x the median before",
        losses[110] > 20 * _median(losses[60:110]),
    )
    ctx.check(
        "the gradient at step 110 is over 10x the median before",
        norms[110] > 10 * _median(norms[60:110]),
    )
    ctx.check(
        "the run recovers: the last 20 losses under 3x the pre-onset median",
        _finite(losses) and _mean(losses[-20:]) < 3 * _median(losses[60:110]),
    )


@scenario(
    "kiln_firing_crack_percent_weight_relu_bce_classifier",
    "RMSprop",
    "gradient_spike",
    heldout=True,
    onset=100,
    note="the loss weight for step 100 is read from a percent key (100 for 1.00): one step's "
    "gradient bursts 100x; the logged loss is ordinary; clipped",
)
def h601_kiln_crack_loss_weight_percent(ctx):
    gen = seeded(6017)
    model = _Net(12, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    base = _classes(gen, 64, 12, 2, 67)

    def batches():
        while True:
            x, y = next(base)
            yield x, y.float()

    def backprop(step, loss, out, y):
        return loss * (100.0 if step == 100 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    ctx.check(
        "the gradient at step 100 is over 30x the median before",
        norms[100] > 30 * _median(norms[50:100]),
    )
    ctx.check(
        "the logged loss at step 100 is ordinary (under 2x the median before)",
        losses[100] < 2 * _median(losses[50:100]),
    )
    ctx.check("the loss is finite", _finite(losses))


@scenario(
    "glacier_calving_front_decay_sign_tanh_regressor",
    "Adam",
    "loss_divergence",
    heldout=True,
    onset=0,
    note="hand-written decoupled weight decay with its sign flipped (p += lr*wd*p): the weights "
    "grow steadily and the loss climbs slowly with no jump",
)
def h601_glacier_decay_sign_flip(ctx):
    gen = seeded(6018)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w0 = float(_flat(model).norm())

    def before(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=+1e-3 * 10.0)  # should be -lr*wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 68), 200, F.mse_loss, before=before)
    ctx.check("the weights grow over 2x", float(_flat(model).norm()) > 2 * w0)
    best = min(losses[:100])
    ctx.check(
        "the loss climbs to over 2x its best", _finite(losses) and _mean(losses[-10:]) > 2 * best
    )
    jumps = [losses[i + 1] / max(losses[i], 1e-8) for i in range(len(losses) - 1)]
    ctx.check("no single step jumps the loss over 3x", max(jumps) < 3)


@scenario(
    "archery_arrow_drift_resume_gelu_regressor",
    "Adagrad",
    "loss_spike",
    heldout=True,
    onset=120,
    note="resumed from a checkpoint at step 120 with the Adagrad accumulators not restored: the "
    "first steps move every weight by the full lr, the loss spikes and recovers",
)
def h601_archery_resume_no_state(ctx):
    gen = seeded(6019)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    norms_before = []

    def before(step):
        if step == 120:
            for group in opt.param_groups:
                for p in group["params"]:
                    st = opt.state[p]
                    st["sum"].zero_()
                    st["step"].zero_()

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 69), 240, F.mse_loss, before=before
    )
    norms_before.extend(norms[90:120])
    pre = _median(losses[100:120])
    ctx.check(
        "the loss spikes over 4x within 3 steps of the resume", max(losses[120:124]) > 4 * pre
    )
    ctx.check(
        "the gradient at the resume is ordinary (under 3x)", norms[120] < 3 * _median(norms_before)
    )
    ctx.check("the run recovers", _finite(losses) and _mean(losses[-20:]) < 2 * pre)


class _VarioNet(_Net):
    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = self.fc1(x)
            self.last_h1 = h1.detach()
            out = self.head(self.act2(self.fc2(self.act1(h1))))
        return out.float().squeeze(-1)


@scenario(
    "hang_glider_thermal_climb_vario_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="fp16 autocast + GradScaler; from step 70 the vario feed arrives in mm/s instead of m/s: "
    "fc1's fp16 output overflows to inf (finite in float32)",
)
def h601_hang_glider_vario_units(ctx):
    gen = seeded(60110)
    model = _VarioNet(10, 48, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 70)
    losses, overflow, f32_finite = [], [], []
    for step in range(150):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, :4] = x[:, :4] * 40000.0
        out = model(x)
        loss = F.mse_loss(out, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        overflow.append(not bool(torch.isfinite(model.last_h1).all()))
        with torch.no_grad():
            f32_finite.append(
                bool(torch.isfinite(F.linear(x, model.fc1.weight, model.fc1.bias)).all())
            )
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss is finite before step 70", _finite(losses[:70]))
    ctx.check("fc1's fp16 output is non-finite at step 70", len(overflow) > 70 and overflow[70])
    ctx.check(
        "the same fc1 in float32 is finite at step 70", len(f32_finite) > 70 and f32_finite[70]
    )
    ctx.check(
        "the loss is non-finite at step 70", len(losses) > 70 and not math.isfinite(losses[70])
    )


# -- healthy controls -----------------------------------------------------------------------------


class _TaikoBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.out(F.gelu(self.fc(self.norm(x))))


class _TaikoNet(nn.Module):
    def __init__(self, vocab=16, dim=32, depth=9, k=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_TaikoBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, k)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x).mean(1))


def _taiko_batches(gen, batch=64, length=12, vocab=16, k=4):
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = ((x < vocab // 2).sum(1) > length // 2).long() + 2 * (
            (x % 2 == 0).sum(1) > length // 2
        ).long()
        yield x, y


@scenario(
    "taiko_drum_pattern_llrd_residual_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="layer-wise lr decay: each block's group at 0.8x the one above, the embedding 10x below "
    "the head (0.8^10 = 0.107); linear warm-up then cosine; looks alarming, is healthy",
)
def h601_taiko_layerwise_lr_decay(ctx):
    gen = seeded(60111)
    model = _TaikoNet()
    base, depth = 3e-3, len(model.blocks)
    groups = [{"params": list(model.head.parameters()) + list(model.norm.parameters()), "lr": base}]
    for i, b in enumerate(reversed(model.blocks)):
        groups.append({"params": b.parameters(), "lr": base * 0.8 ** (i + 1)})
    groups.append({"params": model.embed.parameters(), "lr": base * 0.8 ** (depth + 1)})
    opt = torch.optim.AdamW(groups, lr=base, weight_decay=0.01)
    steps, warm = 250, 25
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _taiko_batches(gen),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ratio = groups[-1]["initial_lr"] / groups[0]["initial_lr"]
    ctx.check("the embedding's rate is 10x below the head's (0.08-0.12)", 0.08 < ratio < 0.12)
    ctx.check("the loss fell to under 70% of its start", _fell(losses))


def _qwen2(vocab=128, dim=32, layers=2, heads=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    return Qwen2ForCausalLM(config)


@scenario(
    "bagpipe_pibroch_canntaireachd_qwen2_decoder",
    "AdamW",
    "healthy",
    heldout=True,
    note="Hugging Face Qwen2 from a tiny config (GQA, tied embedding/head); AdamW, warm-up + "
    "cosine, clipping at 1.0",
)
def h601_bagpipe_qwen2_decoder(ctx):
    gen = seeded(60112)
    model = _qwen2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps, warm = 120, 12
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell to under 70% of its start", _fell(losses))


class _AxeConv(nn.Module):
    def __init__(self, ch=6, k=3):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, k)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _axe_batches(gen, batch=32, ch=6, length=24, k=3):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        freq = (2 + 2 * y).float()[:, None, None]
        x = torch.sin(2 * math.pi * freq * t) + 0.8 * torch.randn(batch, ch, length, generator=gen)
        yield x, y


@scenario(
    "ice_climbing_axe_placement_accel_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="SGD Nesterov with OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, clipping",
)
def h601_ice_axe_onecycle(ctx):
    gen = seeded(60113)
    model = _AxeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _axe_batches(gen)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        sched.step()
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell to under 70% of its start", _fell(losses))
